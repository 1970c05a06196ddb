"""Training a network on ranked groups, in the fast or the standard Siamese form, and scoring images."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from netcompress._core.checkpoint import checkpoint_header, read_checkpoint, verify_checkpoint, write_checkpoint
from netcompress._core.layers import progress_disabled
from netcompress.rankings.data import RankedSet, _colour, as_tensor
from netcompress.rankings.losses import fast_ranking_loss, ranked_pairs, siamese_ranking_loss

__all__ = ["RankingHistory", "score_image", "train_ranker"]


@dataclass
class RankingHistory:
    """The loss after each step and the wall seconds each step took (batch drawing excluded)."""

    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def train_ranker(model: nn.Module, ranked: RankedSet, *, steps: int = 200, groups: int = 4, lr: float = 1e-3,
                 margin: float = 1.0, fast: bool = True, seed: int = 0, checkpoint: str | os.PathLike | None = None,
                 checkpoint_every: int = 50, progress: bool | None = None) -> RankingHistory:
    """Train ``model`` (images → one score each) to rank each group's images best first; returns the history.

    Each step draws ``groups`` ranked groups (seeded). ``fast=True`` scores every image once and
    takes all ranked pairs of each group from those scores (:func:`fast_ranking_loss`);
    ``fast=False`` runs the standard Siamese network, two passes per pair. Both give the same loss
    and gradient on the same batch, so with the same seed they follow the same path; only the
    time differs. Adam, ``lr``. With ``checkpoint``, the model, the optimizer and the batch
    generator are written there (atomically) every ``checkpoint_every`` steps and at the end, and
    a call that finds the file resumes from it: an interrupted run ends where an uninterrupted one would.
    The file records the run's fingerprint (``groups``, ``lr``, ``margin``, ``fast``, ``seed`` and the
    ranked set's identity: crop, kinds, noise seed, a SHA-256 of the references; not ``steps``, which
    only says where to stop, so a run may be extended), the model's architecture and the optimizer's
    structure; a checkpoint that differs, holds more than ``steps`` steps or is malformed raises one
    ``ValueError`` naming the file and the first difference before anything is loaded.
    """
    from tqdm.auto import tqdm

    if steps < 1 or groups < 1 or checkpoint_every < 1:
        raise ValueError(f"steps, groups and checkpoint_every must be positive, got {steps}, {groups} and "
                         f"{checkpoint_every}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    better, worse = ranked_pairs(groups, ranked.levels)
    history = RankingHistory()
    first = 0
    header: dict = {}
    if checkpoint is not None:
        # The steps are left out: they only say where to stop, and every step's path is the same without them.
        run = {"groups": groups, "lr": float(lr), "margin": float(margin), "fast": bool(fast), "seed": seed,
               "data": ranked.identity() if hasattr(ranked, "identity") else type(ranked).__qualname__}
        header = checkpoint_header(run, {"model": model.state_dict()}, {"optimizer": optimizer})
        state = read_checkpoint(checkpoint)
        if state is not None:
            verify_checkpoint(checkpoint, state, run=run, models={"model": model.state_dict()},
                              optimizers={"optimizer": optimizer}, generators={"generator": generator.get_state()},
                              counters={"step": (1, steps)}, float_lists={"losses": "step", "seconds": "step"})
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            history, first = RankingHistory(list(state["losses"]), list(state["seconds"])), int(state["step"])
    model.train()
    for step in tqdm(range(first, steps), desc="ranking", unit="step", disable=progress_disabled(progress)):
        x = ranked.batch(groups, generator)
        start = time.perf_counter()
        optimizer.zero_grad()
        if fast:
            loss = fast_ranking_loss(model(x), ranked.levels, margin)
        else:
            loss = siamese_ranking_loss(model, x[better], x[worse], margin)
        loss.backward()
        optimizer.step()
        history.seconds.append(time.perf_counter() - start)
        history.losses.append(float(loss.detach()))
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            write_checkpoint(checkpoint, {**header, "step": step + 1, "model": model.state_dict(),
                                          "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                          "losses": history.losses, "seconds": history.seconds})
    model.eval()
    return history


@torch.no_grad()
def score_image(model: nn.Module, image: np.ndarray, crop: int, crops: int = 16, seed: int = 0) -> float:
    """The mean score over ``crops`` random ``crop``-pixel crops of ``image`` (the paper's average pooling at test time).

    A score that is not finite (a network with corrupt or diverged weights) raises ``ValueError``.
    """
    image = _colour(image)
    height, width = image.shape[:2]
    if min(height, width) < crop:
        raise ValueError(f"the image is {width}×{height} pixels, smaller than the {crop}-pixel crop")
    generator = torch.Generator().manual_seed(seed)
    tops = torch.randint(height - crop + 1, (crops,), generator=generator).tolist()
    lefts = torch.randint(width - crop + 1, (crops,), generator=generator).tolist()
    batch = as_tensor([image[t:t + crop, s:s + crop] for t, s in zip(tops, lefts, strict=True)])
    was_training = model.training
    model.eval()
    try:
        score = float(model(batch).mean())
    finally:
        model.train(was_training)
    if not np.isfinite(score):
        raise ValueError(f"the network scores the image {score}, not a finite number: its weights are corrupt or "
                         "diverged; train it again")
    return score
