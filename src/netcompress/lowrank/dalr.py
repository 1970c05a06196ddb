"""``dalr`` and ``dalr-bc``: domain-adaptive low-rank regression (Masana et al., ICCV 2017, seeds 000/001).

``A = Û_k`` (leading eigenvectors of ``ZZᵀ = W(XXᵀ)Wᵀ``) and ``B = Û_kᵀ Z Xᵀ (XXᵀ + λI)⁻¹``, from the
target statistics alone; ``dalr-bc`` regresses on inputs centred at their mean, with bias compensation.
Both return a :class:`~netcompress.lowrank.factorization.Factorization`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from netcompress.lowrank._linalg import leading_output_directions, ridge_solve
from netcompress.lowrank.factorization import (
    _LOW_RANK,
    Factorization,
    _check_moments,
    _checked_rank,
    _layer_bias,
    _targets,
    layer_matrix,
)
from netcompress.lowrank.ridge import DEFAULT_LAM, RidgeSettings, check_lam, shrinkage_weight, shrunk_towards_identity
from netcompress.registry import register
from netcompress.stats.moments import Moments

__all__ = ["DALR", "DALRBC", "dalr", "dalr_bc"]


@dataclass(frozen=True, kw_only=True)
class DALR(RidgeSettings):
    """Domain-adaptive low-rank regression (Masana et al., ICCV 2017) on the target statistics (``lam``,
    ``shrinkage``: see :class:`~netcompress.lowrank.ridge.RidgeSettings`)."""


@dataclass(frozen=True, kw_only=True)
class DALRBC(DALR):
    """DALR on inputs centred at their mean, with bias compensation: the best rank-``k`` affine map."""


@register("dalr", DALR, **_LOW_RANK)
def dalr(
    layer: nn.Module,
    moments: Moments,
    rank: int,
    *,
    lam: float | None = None,
    bias_compensation: bool = False,
    shrinkage: float | str = "auto",
) -> Factorization:
    """Domain-adaptive low-rank regression (Masana, van de Weijer, Herranz, Bagdanov and Álvarez,
    "Domain-adaptive deep network compression", ICCV 2017).

    Solves ``min ||Z − CX||² + λ||C||²`` s.t. ``rank(C) ≤ k`` with ``Z = WX`` in closed form:
    ``A = Û_k``, ``B = Û_kᵀ Z Xᵀ (XXᵀ + λI)⁻¹``, where ``Û_k`` are the leading left singular
    vectors of ``Z``. Only the statistics are used: ``ZZᵀ = W(XXᵀ)Wᵀ`` and
    ``ZXᵀ = W(XXᵀ)``, so ``B = Û_kᵀW − λ Û_kᵀW (XXᵀ + λI)⁻¹`` needs one Cholesky factor
    and a solve with ``k`` right-hand sides; no inverse is formed.

    Args:
        lam: ``λ`` relative to ``trace(XXᵀ)/in`` (default :data:`DEFAULT_LAM`); 0 gives ``B = Û_kᵀW``.
        bias_compensation: regress on inputs centred at ``x̄`` and set ``b̂ = b + (W − Ŵ)x̄``,
            the best rank-``k`` affine map, never worse on the target data than SVD+BC.
        shrinkage: weight α of the scaled identity mixed into ``XXᵀ`` before solving
            (``"auto"``: Ledoit–Wolf's estimate, see :func:`shrinkage_intensity`). With few
            samples α → 1 and DALR moves continuously to SVD instead of fitting the sample
            exactly; with many samples α → 0 and it is the seed's DALR. The error curve used
            to size ranks is measured on the same shrunk ``XXᵀ``.
    """
    W = layer_matrix(layer)
    _check_moments(W, moments)
    rank = _checked_rank(layer, W, rank)
    lam = check_lam(DEFAULT_LAM if lam is None else lam)
    moments = moments.to(W.device)
    alpha = shrinkage_weight(moments, shrinkage)
    H = moments.centered_gram if bias_compensation else moments.gram
    Q = shrunk_towards_identity(H, H, alpha)
    ridge = lam * float(Q.diagonal().sum()) / Q.shape[0]
    if moments.reference is None:
        U, wqw_trace = leading_output_directions(W, Q, rank)
        T = U.T @ W
        B = T if ridge == 0 else T - ridge * ridge_solve(Q, ridge, T.T).T
        return Factorization(layer, W, _layer_bias(layer), U, B, moments, bias_compensation, wqw_trace, Q)
    # Sequential: the original outputs Z = WX regressed on the layer's own inputs X̃ (the
    # compressed layers before it feed it), C = ZX̃ᵀ(X̃X̃ᵀ + λI)⁻¹; the best rank-k map keeps
    # the leading directions of the fitted outputs, C(X̃X̃ᵀ)Cᵀ (reduced-rank regression).
    # XX̃ᵀ is shrunk with X̃X̃ᵀ, towards the same scaled identity: with few samples (α → 1)
    # C → W and sequential DALR, like DALR, moves to SVD rather than fitting the sample.
    M = moments.cross_product(centre=bias_compensation)
    C = ridge_solve(Q, ridge, (W @ shrunk_towards_identity(M, H, alpha)).T).T
    U, trace = leading_output_directions(C, Q, rank)
    bias, original = _targets(layer, W, C, moments, bias_compensation)
    return Factorization(layer, C, bias, U, U.T @ C, moments, bias_compensation, trace, Q, original)


@register("dalr-bc", DALRBC, **_LOW_RANK)
def dalr_bc(layer: nn.Module, moments: Moments, rank: int, *, lam: float | None = None,
            shrinkage: float | str = "auto") -> Factorization:
    """DALR on inputs centred at ``x̄`` with bias compensation: the best rank-``k`` affine map (see :func:`dalr`)."""
    return dalr(layer, moments, rank, lam=lam, bias_compensation=True, shrinkage=shrinkage)
