"""The paper's evaluation measures: the linear (LCC) and the Spearman rank-order (SROCC) correlation."""

from __future__ import annotations

import numpy as np

__all__ = ["lcc", "srocc"]


def _vectors(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two sequences of the same length, at least 2, got {x.size} and {y.size}")
    return x, y


def lcc(x, y) -> float:
    """``Σ(xᵢ − x̄)(yᵢ − ȳ) / (√Σ(xᵢ − x̄)² √Σ(yᵢ − ȳ)²)``; 0 where either sequence is constant."""
    x, y = _vectors(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / denominator) if denominator > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):
        ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]
    return ranks


def srocc(x, y) -> float:
    """``1 − 6Σ(vᵢ − pᵢ)² / (N(N² − 1))`` on the ranks ``v``, ``p`` (with ties: the LCC of the mean ranks)."""
    x, y = _vectors(x, y)
    v, p = _ranks(x), _ranks(y)
    if len(np.unique(x)) == x.size and len(np.unique(y)) == y.size:
        n = x.size
        return float(1 - 6 * np.sum((v - p) ** 2) / (n * (n * n - 1)))
    return lcc(v, p)
