"""The linear algebra behind DALR: leading output directions of ``W Q Wᵀ`` and ridge solves, never an inverse."""

from __future__ import annotations

import torch

# From this many dimensions on the cheaper side, the search for the leading output directions
# runs in float32 and is then refined in float64 (see leading_output_directions).
FLOAT32_SEARCH_FROM = 1024


def leading_output_directions(W: torch.Tensor, Q: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """The ``rank`` leading eigenvectors of ``ZZᵀ = W Q Wᵀ`` (float64) and its trace.

    Small layers are decomposed exactly in float64. For large ones the dominant cost
    is forming and decomposing ``ZZᵀ``: that search runs in float32 for a few more
    directions than needed, then one float64 power step and a Rayleigh–Ritz projection
    polish them. The output error is stationary in ``U``, so the directions' residual
    error enters it only squared; ``B`` is then exact for those directions.
    """
    if min(W.shape) < FLOAT32_SEARCH_FROM:
        return _exact_directions(W, Q, rank)
    width = min(min(W.shape), rank + max(8, rank // 2))
    start, trace = _exact_directions(W.float(), Q.float(), width)
    U, captured = _rayleigh_ritz(W, Q, start.double(), rank)
    return U, max(trace, captured)


def _exact_directions(W: torch.Tensor, Q: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """Leading eigenvectors of ``W Q Wᵀ`` and its trace, from the cheaper side, in the inputs' precision.

    With ``out ≤ in`` the ``out × out`` matrix is decomposed directly. Otherwise
    ``Q = RRᵀ`` and the left singular vectors of ``WR`` come from the ``in × in``
    matrix ``(WR)ᵀ(WR)``; directions with no output energy get zero columns,
    which leave the product unchanged.
    """
    out_features, in_features = W.shape
    if out_features <= in_features:
        ZZt = (W @ Q) @ W.T
        values, vectors = torch.linalg.eigh(ZZt)
        return vectors[:, -rank:].flip(1).contiguous(), float(values.double().sum())
    q_values, q_vectors = torch.linalg.eigh(Q)
    Y = W @ (q_vectors * q_values.clamp_min(0).sqrt())
    values, vectors = torch.linalg.eigh(Y.T @ Y)
    values, vectors = values[-rank:].flip(0), vectors[:, -rank:].flip(1)
    scale = values.clamp_min(0).sqrt()
    keep = scale > scale.max().clamp_min(1e-30) * 1e-10
    U = torch.zeros(out_features, rank, dtype=W.dtype, device=W.device)
    U[:, keep] = (Y @ vectors[:, keep]) / scale[keep]
    return U, float(Y.double().pow(2).sum())


def _rayleigh_ritz(W: torch.Tensor, Q: torch.Tensor, V: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """One power step on ``ZZᵀ = W Q Wᵀ`` from the directions ``V``, then the best ``rank`` of that subspace.

    ``ZZᵀ`` is applied as ``W(Q(WᵀV))``, never formed. Returns the directions and
    the output energy the whole subspace captures.
    """
    V, _ = torch.linalg.qr(W @ (Q @ (W.T @ V)))
    WtV = W.T @ V
    values, vectors = torch.linalg.eigh(WtV.T @ (Q @ WtV))
    return V @ vectors[:, -rank:].flip(1), float(values.clamp_min(0).sum())


def ridge_solve(Q: torch.Tensor, ridge: float, rhs: torch.Tensor) -> torch.Tensor:
    """``(Q + ridge·I)⁻¹ rhs`` by a Cholesky factor and two triangular solves."""
    system = Q.clone()
    system.diagonal().add_(ridge)
    factor, info = torch.linalg.cholesky_ex(system)
    if info.item() != 0:
        raise ValueError("the input second moment plus λI is not positive definite; raise lam")
    half = torch.linalg.solve_triangular(factor, rhs, upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True)


