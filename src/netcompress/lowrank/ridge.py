"""The regularisation of data-aware fits: DALR's ridge λ and Ledoit–Wolf shrinkage of ``XXᵀ``.

Shared by :func:`~netcompress.lowrank.dalr` and the data-aware convolution decompositions
(``jaderberg-dalr``, ``cp-dalr``): the checks of their ``lam`` and ``shrinkage`` settings, and the
input second moment shrunk towards a scaled identity when samples are few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from netcompress.lowrank.budget import LowRankSettings
from netcompress.stats.moments import Moments

__all__ = ["RidgeSettings",
    "DEFAULT_LAM",
    "check_lam",
    "check_shrinkage",
    "shrinkage_intensity",
    "shrinkage_weight",
    "shrunk_second_moment",
    "shrunk_towards_identity",
]


# λ is relative to the mean eigenvalue of the input second moment, trace(XXᵀ)/in:
# small enough that DALR solves the unregularised regression almost exactly, large enough
# that a rank-deficient XXᵀ (inputs in a subspace) still has a stable Cholesky factor.
DEFAULT_LAM = 1e-6


def check_lam(lam: object) -> float:
    """``lam`` as a float, refused unless it is a finite number ≥ 0."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < math.inf:
        raise ValueError(f"lam must be a finite number >= 0 (relative to trace(XXᵀ)/in), got {lam!r}")
    return float(lam)


def check_shrinkage(shrinkage: object) -> float | str:
    """``"auto"`` or a fraction in [0, 1]."""
    if shrinkage == "auto":
        return "auto"
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must be 'auto' or a fraction in [0, 1], got {shrinkage!r}")
    return float(shrinkage)


def _check_dalr(*, lam: float | None = None, bias_compensation: bool = False, shrinkage: float | str = "auto") -> None:
    if lam is not None:
        check_lam(lam)
    check_shrinkage(shrinkage)


def shrinkage_intensity(moments: Moments) -> float:
    """Ledoit–Wolf's optimal weight of the scaled identity in the estimate of ``E[xxᵀ]``.

    Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices",
    J. Multivariate Analysis 2004: with ``S = XXᵀ/n``, ``μ = tr(S)/p``, the intensity is
    ``min(b̄², d²)/d²`` where ``d² = ||S − μI||²`` and ``b̄² = Σ||x xᵀ − S||²/n² =
    (Σ||x||⁴/n − ||S||²)/n``. It is near 0 when samples are plentiful and near 1 when
    they are few compared with the input width: then DALR's regression on ``S`` would fit
    the sampled subspace exactly and be arbitrary outside it.
    """
    n, p = moments.count, moments.gram.shape[-1]
    if n < 2 or moments.gram.dim() != 2:
        return 1.0
    S = moments.gram / n
    mu = float(S.diagonal().sum()) / p
    s_norm = float(S.pow(2).sum())
    d2 = s_norm - p * mu * mu
    if d2 <= 0:
        return 0.0
    b2 = max((float(moments.norm4) / n - s_norm) / n, 0.0)
    return min(b2, d2) / d2


def shrunk_second_moment(moments: Moments, centred: bool = False, shrinkage: float | str = "auto") -> torch.Tensor:
    """``(1 − α)·Q + α·(tr Q / p)·I``, α given or (``"auto"``) from :func:`shrinkage_intensity`; ``Q`` centred if asked."""
    Q = moments.centered_gram if centred else moments.gram
    return shrunk_towards_identity(Q, Q, shrinkage_weight(moments, shrinkage))


def shrinkage_weight(moments: Moments, shrinkage: float | str = "auto") -> float:
    """α: the given fraction, or (``"auto"``) Ledoit–Wolf's intensity for these statistics."""
    shrinkage = check_shrinkage(shrinkage)
    if shrinkage == "auto":
        return shrinkage_intensity(moments) if float(moments.norm4) > 0 else 0.0
    return shrinkage


def shrunk_towards_identity(matrix: torch.Tensor, scale_from: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 − α)·matrix + α·(tr S / p)·I`` with ``S = scale_from``: the same prior for every second moment."""
    if alpha == 0:
        return matrix
    shrunk = (1 - alpha) * matrix
    shrunk.diagonal().add_(alpha * float(scale_from.diagonal().sum()) / scale_from.shape[0])
    return shrunk


@dataclass(frozen=True, kw_only=True)
class RidgeSettings(LowRankSettings):
    """A low-rank method fitted to the target data: sized as every low-rank method, with DALR's ridge.

    ``lam``: the ridge λ relative to ``trace(XXᵀ)/in`` (default ``DEFAULT_LAM``); ``shrinkage``:
    Ledoit–Wolf shrinkage of the input second moment (``"auto"``, or a weight in [0, 1]).
    """

    lam: float | None = None
    shrinkage: float | str = "auto"

    def check(self) -> None:
        super().check()
        _check_dalr(lam=self.lam, shrinkage=self.shrinkage)
