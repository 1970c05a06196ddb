"""``svd`` and ``svd-bc``: truncated SVD of a layer's weights, without and with bias compensation.

* ``svd``     ``A = Û_k``, ``B = Ŝ_k V̂_kᵀ`` from ``W = USVᵀ``; ``b̂ = b``.
* ``svd_bc``  the same with bias compensation ``b̂ = b + (W − Ŵ)x̄`` (Masana et al., ICCV 2017).

Both return a :class:`~netcompress.lowrank.factorization.Factorization`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from netcompress.lowrank.budget import LowRankSettings
from netcompress.lowrank.factorization import (
    _LOW_RANK,
    Factorization,
    _check_moments,
    _checked_rank,
    _targets,
    layer_matrix,
)
from netcompress.registry import register
from netcompress.stats.moments import Moments

__all__ = ["SVD", "SVDBC", "svd", "svd_bc"]


@dataclass(frozen=True, kw_only=True)
class SVD(LowRankSettings):
    """Truncated SVD of each layer's weights (data, if any, only measures the error)."""


@dataclass(frozen=True, kw_only=True)
class SVDBC(LowRankSettings):
    """Truncated SVD with bias compensation on the target inputs' mean (Masana et al., ICCV 2017)."""


@register("svd", SVD, **{**_LOW_RANK, "needs_stats": False})
def svd(layer: nn.Module, moments: Moments, rank: int, *, bias_compensation: bool = False) -> Factorization:
    """Truncated SVD of the layer's weights (target data used only to measure the error).

    Without data (``compress(model, None, method="svd", ...)``) the statistics are those of white
    inputs (:meth:`Moments.white`): errors, ``energy`` and ``budget`` then follow the weight spectrum.
    """
    W = layer_matrix(layer)
    _check_moments(W, moments)
    rank = _checked_rank(layer, W, rank)
    moments = moments.to(W.device)
    Q = moments.centered_gram if bias_compensation else moments.gram
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    SVh = S[:, None] * Vh
    weighted_trace = float(((SVh @ Q) * SVh).sum())  # tr(W Q Wᵀ) = tr(S Vᵀ Q V S)
    bias, original = _targets(layer, W, W, moments, bias_compensation)
    return Factorization(
        layer, W, bias, U[:, :rank], SVh[:rank], moments, bias_compensation, weighted_trace, Q, original
    )


@register("svd-bc", SVDBC, **_LOW_RANK)
def svd_bc(layer: nn.Module, moments: Moments, rank: int) -> Factorization:
    """SVD with bias compensation ``b̂ = b + (W − Ŵ)x̄`` (Masana et al., ICCV 2017, "bias compensation")."""
    return svd(layer, moments, rank, bias_compensation=True)
