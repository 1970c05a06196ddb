"""The inverse input Hessian of a layer's output error, as GPTQ and SparseGPT use it.

For ``||(W − Ŵ)X||²`` the Hessian in each row of ``W`` is ``H = XXᵀ`` (what ``collect`` sums).
Optimal Brain Surgeon/Quantization (Frantar and Alistarh, NeurIPS 2022) remove or round one
input column at a time and fix the rest through ``H⁻¹``; GPTQ and SparseGPT get every step's
row of the shrinking ``H⁻¹`` from one upper Cholesky factor ``U`` of ``H⁻¹`` (``UᵀU = H⁻¹``).

The factor is obtained by solving, not inverting ``H``: with ``P`` the order-reversing
permutation and ``P H P = L Lᵀ``, ``U = P L⁻¹ P`` is upper triangular and ``UᵀU = H⁻¹``;
``L⁻¹`` is one triangular solve.
"""

from __future__ import annotations

import torch
from torch import nn

from netcompress._layers import DENSE

__all__ = ["DEFAULT_DAMP", "check_hessian_layer", "inverse_hessian_factor"]

DEFAULT_DAMP = 0.01  # of the mean diagonal of H, as in the GPTQ paper


def inverse_hessian_factor(gram: torch.Tensor, damp: float = DEFAULT_DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: the upper Cholesky factor of ``(H + λI)⁻¹`` (``λ = damp·mean diag H``), and the inputs never seen.

    An input that is always zero on the target data gets ``H_ii = 1`` (its weights cannot
    matter and are set to zero by the caller), so ``H`` stays positive definite.
    """
    H = gram.to(torch.float64).clone()
    dead = H.diagonal() <= 0
    H.diagonal()[dead] = 1.0
    H.diagonal().add_(damp * float(H.diagonal().mean()))
    L = torch.linalg.cholesky(H.flip(0, 1))
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1), dead


def check_hessian_layer(layer: nn.Module, method: str, damp: float) -> None:
    """Refuse a damping or a layer (not a plain Linear/Conv2d, or a grouped conv) that ``method`` cannot take."""
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp < 1:
        raise ValueError(f"damp must be a fraction in (0, 1) of the mean diagonal of XXᵀ, got {damp!r}")
    if type(layer) not in DENSE:
        raise ValueError(f"{method} takes plain nn.Linear and nn.Conv2d layers, not {type(layer).__name__}")
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(f"a grouped convolution (groups={layer.groups}) has no single input Hessian; "
                         f"{method} leaves it dense")
