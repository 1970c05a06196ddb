"""Siamese ranking losses: the standard form (two passes per pair) and the fast form (one pass per image).

The ranking loss of a pair whose first image has the better quality is
``L(x₁, x₂) = max(0, −(f(x₁) − f(x₂)) + ε)`` (the seed's slide; RankIQA, ICCV 2017). A standard
Siamese network runs both branches for every pair, so an image in ``k`` pairs is passed ``k``
times. The fast form scores a mini-batch of whole ranked groups once and takes every ranked pair
inside each group from that vector of scores: the same loss, and the same gradient, from one pass.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["contrastive_loss", "fast_ranking_loss", "ranked_pairs", "ranking_loss", "siamese_ranking_loss"]


def ranking_loss(better: torch.Tensor, worse: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean ``max(0, −(f(x₁) − f(x₂)) + ε)`` over pairs, ``better`` = f(x₁) the scores of the better images."""
    return torch.clamp(margin - (better - worse), min=0).mean()


def ranked_pairs(groups: int, group_size: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(better, worse)`` of every ranked pair in a batch of ``groups`` groups, each ordered best first."""
    i, j = torch.triu_indices(group_size, group_size, offset=1, device=device)
    offsets = torch.arange(groups, device=device)[:, None] * group_size
    return (offsets + i).reshape(-1), (offsets + j).reshape(-1)


def fast_ranking_loss(scores: torch.Tensor, group_size: int, margin: float = 1.0) -> torch.Tensor:
    """The ranking loss of every pair inside each group, from one score per image (one forward pass).

    ``scores`` holds ``groups × group_size`` scores, each group's images ordered from the best
    quality to the worst (a :func:`~netcompress.rankings.distortion_series`).
    """
    scores = scores.reshape(-1)
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"a batch of {scores.numel()} scores is not whole groups of {group_size} ranked images "
                         "(at least 2 per group)")
    better, worse = ranked_pairs(scores.numel() // group_size, group_size, scores.device)
    return ranking_loss(scores[better], scores[worse], margin)


def siamese_ranking_loss(model: nn.Module, better: torch.Tensor, worse: torch.Tensor,
                         margin: float = 1.0) -> torch.Tensor:
    """The standard Siamese form: both branches (one network, shared weights) run on every pair."""
    return ranking_loss(model(better).reshape(-1), model(worse).reshape(-1), margin)


def contrastive_loss(distance: torch.Tensor, similar: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """``½·l·D² + ½·(1 − l)·max(0, ε − D)²`` averaged over pairs (``l`` = 1 for a similar pair), as in the seed."""
    similar = similar.to(distance.dtype)
    return (0.5 * similar * distance.square()
            + 0.5 * (1 - similar) * torch.clamp(margin - distance, min=0).square()).mean()
