"""Quality scores: reading them, a full-reference stand-in, regression onto them, and LCC/SROCC on held-out images.

RankIQA fine-tunes the ranking network on a few images with human scores (LIVE, TID2013) and
compares it with the same architecture trained on the scores alone. No human-rated database
ships inside a package here, so :func:`full_reference_scores` gives a stand-in that says what it
is: the SSIM of each distorted image against its reference (Wang et al., IEEE TIP 2004). A user
with real scores reads them with :func:`read_scores` (a CSV ``image,score``) and runs the same code.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netcompress._layers import progress_disabled
from netcompress.rankings.data import _colour, as_tensor, random_crop
from netcompress.rankings.metrics import lcc, srocc
from netcompress.rankings.train import score_image

__all__ = ["evaluate_scores", "fit_scores", "full_reference_scores", "read_scores"]

MAX_SCORES_BYTES = 16 << 20  # a CSV of a million scored images is far smaller


def read_scores(path: str | Path) -> dict[str, float]:
    """``image → score`` from a CSV with a header naming the columns ``image`` and ``score``."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > MAX_SCORES_BYTES:
        raise ValueError(f"{path} is not a scores file (a CSV of at most {MAX_SCORES_BYTES >> 20} MiB)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "score"} <= set(reader.fieldnames):
            raise ValueError(f"{path} needs a header with the columns 'image' and 'score', got {reader.fieldnames}")
        scores: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            image, text = (row.get("image") or "").strip(), (row.get("score") or "").strip()
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{path}, line {line}: score {text!r} is not a number") from None
            if not image or not math.isfinite(value):
                raise ValueError(f"{path}, line {line}: needs an image name and a finite score")
            if image in scores:
                raise ValueError(f"{path}, line {line}: image {image!r} is scored twice")
            scores[image] = value
    if not scores:
        raise ValueError(f"{path} holds no scores")
    return scores


def full_reference_scores(reference: np.ndarray, distorted: Sequence[np.ndarray]) -> list[float]:
    """The SSIM of each distorted image against ``reference`` (1 = identical): a stand-in for human scores."""
    from skimage.metrics import structural_similarity

    reference = _colour(reference)
    return [float(structural_similarity(reference, _colour(image), channel_axis=2, data_range=255))
            for image in distorted]


def _crops(images: Sequence[np.ndarray], crop: int, count: int, generator: torch.Generator) -> tuple[torch.Tensor, list]:
    picks, batch = [], []
    for _ in range(count):
        i = int(torch.randint(len(images), (1,), generator=generator))
        batch.append(random_crop(images[i], crop, generator))
        picks.append(i)
    return as_tensor(batch), picks


def fit_scores(model: nn.Module, images: Sequence[np.ndarray], scores: Sequence[float], crop: int, *,
               steps: int = 200, batch: int = 16, lr: float = 1e-3, seed: int = 0,
               progress: bool | None = None) -> list[float]:
    """Regress ``model``'s score of random crops onto each image's score (mean squared error); the losses.

    From scratch this is the paper's baseline; from a network trained on rankings, its "ours".
    Scores are standardised (zero mean, unit variance over ``scores``) for the fit.
    """
    from tqdm.auto import tqdm

    if len(images) != len(scores) or len(images) < 2:
        raise ValueError(f"need at least 2 images and one score each, got {len(images)} images, {len(scores)} scores")
    images = [_colour(image) for image in images]
    small = [i for i, image in enumerate(images) if min(image.shape[:2]) < crop]
    if small:
        raise ValueError(f"image {small[0]} is smaller than the {crop}-pixel crop")
    target = torch.tensor(scores, dtype=torch.float32)
    target = (target - target.mean()) / target.std().clamp_min(1e-12)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="scores", unit="step", disable=progress_disabled(progress)):
        x, picks = _crops(images, crop, batch, generator)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x).reshape(-1), target[picks])
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def evaluate_scores(model: nn.Module, images: Sequence[np.ndarray], scores: Sequence[float], crop: int,
                    crops: int = 16) -> tuple[float, float]:
    """``(LCC, SROCC)`` of the model's scores (each the mean over ``crops`` random crops) against ``scores``."""
    predicted = [score_image(model, image, crop, crops=crops, seed=i) for i, image in enumerate(images)]
    return lcc(predicted, scores), srocc(predicted, scores)
