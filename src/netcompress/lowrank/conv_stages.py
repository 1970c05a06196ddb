"""The first stages of each convolution scheme, from the kernel: Jaderberg's SVD, CP by ALS, whitening.

* Jaderberg et al. (BMVC 2014): vertical and horizontal filters from the SVD of the kernel
  reshaped to ``(C·kh) × (N·kw)``, optionally seen through the target inputs (whitened);
* CP (Lebedev et al., ICLR 2015): the rank-``R`` CP decomposition of the 4-way kernel by
  alternating least squares from an HOSVD start;
* each scheme's first-stage map ``P`` on the im2col patch (see :mod:`.conv`).
"""

from __future__ import annotations

import math

import torch

from netcompress.lowrank.ridge import DEFAULT_LAM, shrunk_second_moment
from netcompress.stats.moments import Moments

__all__: list[str] = []


def _jaderberg_stages(weight: torch.Tensor, rank: int, whitening: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical filters ``(rank, C, kh)`` and horizontal ones ``(N, rank, kw)`` from the SVD of the reshaped kernel.

    With ``whitening`` (a Cholesky factor ``L`` of the vertical filters' input second moment)
    the SVD is of ``Lᵀ M``: the leading directions are those that carry the most output on the
    target data, and the vertical filters are mapped back through ``L⁻ᵀ``.
    """
    n, c, kh, kw = weight.shape
    M = weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    U, S, Vh = torch.linalg.svd(M if whitening is None else whitening.T @ M, full_matrices=False)
    root = S[:rank].sqrt()
    left = U[:, :rank] * root
    if whitening is not None:
        left = torch.linalg.solve_triangular(whitening.T, left, upper=True)
    vertical = left.T.reshape(rank, c, kh)
    horizontal = (root[:, None] * Vh[:rank]).reshape(rank, n, kw).permute(1, 0, 2)
    return vertical, horizontal


def _jaderberg_first(vertical: torch.Tensor, kw: int) -> torch.Tensor:
    """``P`` with rows ``(k, j)``: output column ``j`` of vertical filter ``k`` on the patch ``(c, i, j')``."""
    rank, c, kh = vertical.shape
    eye = torch.eye(kw, dtype=vertical.dtype, device=vertical.device)
    return torch.einsum("kci,jl->kjcil", vertical, eye).reshape(rank * kw, c * kh * kw)


def _cp_start(T: torch.Tensor, rank: int, seed: int) -> list[torch.Tensor]:
    """Each mode's leading left singular vectors of its unfolding (HOSVD), seeded random columns past its size.

    On a ``1×1`` kernel (a matrix) this start is already the best rank-``R`` fit, and elsewhere it
    cuts the sweeps ALS needs from a random start several times.
    """
    generator = torch.Generator().manual_seed(seed)
    start = []
    for mode, size in enumerate(T.shape):
        unfolded = T.movedim(mode, 0).reshape(size, -1)
        U = torch.linalg.svd(unfolded, full_matrices=False)[0][:, :rank]
        extra = torch.randn(size, rank - U.shape[1], generator=generator, dtype=T.dtype).to(T.device)
        start.append(torch.cat([U, extra], dim=1))
    return start


def _cp_factors(weight: torch.Tensor, rank: int, seed: int, iterations: int = 200, tol: float = 1e-9
                ) -> tuple[torch.Tensor, ...]:
    """``(A (N×R), pointwise (R×C), vertical (R×kh), horizontal (R×kw))`` of the kernel's rank-``R`` CP, strongest first.

    Alternating least squares (Kolda and Bader, "Tensor decompositions and applications", SIAM
    Review 2009): each factor in turn solves its normal equations ``F_m V = M_m``, ``V`` the
    Hadamard product of the other factors' Gram matrices and ``M_m`` the tensor times their
    Khatri–Rao product, from an HOSVD start (:func:`_cp_start`), until the relative fit changes
    by less than ``tol``. Written in torch rather than taken from tensorly: on these small kernels
    tensorly's ``parafac`` spends its time in per-iteration overhead (about 0.2 s an iteration on
    a 50×20×5×5 kernel here), and the tests hold this against it.
    """
    T = weight.to(torch.float64)
    factors = _cp_start(T, rank, seed)
    products = ("abcd,br,cr,dr->ar", "abcd,ar,cr,dr->br", "abcd,ar,br,dr->cr", "abcd,ar,br,cr->dr")
    norm2, previous = float(T.pow(2).sum()), math.inf
    for _ in range(iterations):
        for mode, product in enumerate(products):
            others = [f for m, f in enumerate(factors) if m != mode]
            V = math.prod(f.T @ f for f in others)
            M = torch.einsum(product, T, *others)
            V.diagonal().add_(1e-12 * float(V.diagonal().mean()) + torch.finfo(V.dtype).tiny)
            factors[mode] = torch.linalg.solve(V, M.T).T
        # ‖T − T̂‖² = ‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖², from the last mode's product: no reconstruction
        fit = norm2 - 2 * float((M * factors[-1]).sum()) + float(math.prod(f.T @ f for f in factors).sum())
        error = max(fit, 0.0) ** 0.5 / max(norm2, torch.finfo(torch.float64).tiny) ** 0.5
        if abs(previous - error) < tol:
            break
        previous = error
    norms = [f.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny) for f in factors]
    scale = math.prod(norms)
    order = scale.argsort(descending=True)  # truncating keeps the components that carry the most
    a_n = (factors[0] / norms[0] * scale)[:, order]
    return a_n, *((f / n)[:, order].T.contiguous() for f, n in zip(factors[1:], norms[1:], strict=True))


def _cp_first(pointwise: torch.Tensor, vertical: torch.Tensor, horizontal: torch.Tensor) -> torch.Tensor:
    """``P`` with one row per component: ``a_C ⊗ a_h ⊗ a_w`` on the patch ``(c, i, j)``."""
    return torch.einsum("rc,ri,rj->rcij", pointwise, vertical, horizontal).reshape(pointwise.shape[0], -1)


def _whitening(moments: Moments, shrinkage: float | str, rows: int) -> torch.Tensor:
    """Cholesky factor of the second moment of the patch's first ``rows`` indices, summed over the rest.

    ``rows = C·kh``: ``Σ_j G[(c,i,j), (c',i',j)]``, what Jaderberg's vertical filters read; ``rows = C``:
    ``Σ_{i,j} G[(c,i,j), (c',i,j)]``, what CP's first ``1×1`` convolution reads.
    """
    G = shrunk_second_moment(moments, shrinkage=shrinkage)
    rest = G.shape[0] // rows
    G = G.reshape(rows, rest, rows, rest).diagonal(dim1=1, dim2=3).sum(-1)
    G.diagonal().add_(DEFAULT_LAM * float(G.diagonal().mean()) + torch.finfo(G.dtype).tiny)
    return torch.linalg.cholesky(G)
