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

from collections.abc import Callable

import torch
from torch import nn

from netcompress._core.layers import DENSE
from netcompress._core.tensors import row_blocks

__all__ = ["check_damp", "DEFAULT_DAMP", "check_hessian_layer", "inverse_hessian_factor", "sweep_columns"]

DEFAULT_DAMP = 0.01  # of the mean diagonal of H, as in the GPTQ paper


def inverse_hessian_factor(gram: torch.Tensor, damp: float = DEFAULT_DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: the upper Cholesky factor of ``(H + λI)⁻¹`` (``λ = damp·mean diag H``), and the inputs never seen.

    An input that is always zero on the target data gets ``H_ii = 1`` (its weights cannot
    matter and are set to zero by the caller), so ``H`` stays positive definite.
    """
    H = gram.to(torch.float64).flip(0, 1)  # P H P, a copy: damped in place below
    dead = H.diagonal().flip(0) <= 0
    H.diagonal()[dead.flip(0)] = 1.0
    H.diagonal().add_(damp * float(H.diagonal().mean()))
    L = torch.linalg.cholesky(H)
    del H  # a d×d float64 matrix less at the peak (d = 5,632 in a 1 B model's MLP: 254 MB)
    inverse = torch.linalg.solve_triangular(L, torch.eye(L.shape[0], dtype=L.dtype, device=L.device), upper=False)
    del L
    return inverse.flip(0, 1), dead


def check_damp(damp: object) -> None:
    """Refuse a damping that is not a fraction in (0, 1) of the mean diagonal of ``XXᵀ``."""
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp < 1:
        raise ValueError(f"damp must be a fraction in (0, 1) of the mean diagonal of XXᵀ, got {damp!r}")


def check_hessian_layer(layer: nn.Module, method: str, damp: float) -> None:
    """Refuse a damping or a layer (not a plain Linear/Conv2d, or a grouped conv) that ``method`` cannot take."""
    check_damp(damp)
    if type(layer) not in DENSE:
        raise ValueError(f"{method} takes plain nn.Linear and nn.Conv2d layers, not {type(layer).__name__}")
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(f"a grouped convolution (groups={layer.groups}) has no single input Hessian; "
                         f"{method} leaves it dense")


# Rows swept together (float64 values): rows are independent given H, so a block of them at a
# time bounds the working copy (32 MB) while amortising the per-column Python loop.
SWEEP_ELEMENTS = 1 << 22


def sweep_columns(
    layer: nn.Module,
    moments,
    damp: float,
    round_column: Callable[[slice, int, torch.Tensor], torch.Tensor],
    start_block: Callable[[slice, int, int, torch.Tensor, torch.Tensor], None] | None = None,
    finish_rows: Callable[[slice, torch.Tensor], None] | None = None,
    block: int = 128,
) -> None:
    """Optimal Brain Surgeon/Quantization's sweep over the input columns of ``layer``, GPTQ-style.

    Each row's sweep depends only on that row and ``H``, so the output rows are swept a block
    (``rows``) at a time, ``W`` a float64 copy of those rows. Column ``i`` becomes
    ``round_column(rows, i, W)``; its error, divided by ``U_ii``, moves the columns after it
    along row ``i`` of ``U``, the upper Cholesky factor of the damped ``H⁻¹``. Updates beyond
    the current ``block`` of columns are applied once per block (lazy batch updates);
    ``start_block(rows, start, end, W, U)`` runs before each, ``finish_rows(rows, W)`` after
    the last column. Inputs the target data never uses have their weights set to zero.
    """
    weight = layer.weight.detach()
    weight = weight.reshape(weight.shape[0], -1)
    out, columns = weight.shape
    if moments.gram.dim() != 2 or moments.gram.shape[0] != columns:
        raise ValueError(f"the statistics have {moments.gram.shape[-1]} input features but the layer has {columns}")
    U, dead = inverse_hessian_factor(moments.gram.to(weight.device), damp)
    for rows in row_blocks(out, columns, SWEEP_ELEMENTS):
        W = weight[rows].to(torch.float64, copy=True)
        W[:, dead] = 0.0
        for start in range(0, columns, block):
            end = min(start + block, columns)
            if start_block is not None:
                start_block(rows, start, end, W, U)
            errors = torch.zeros(W.shape[0], end - start, dtype=W.dtype, device=W.device)
            for i in range(start, end):
                error = (W[:, i] - round_column(rows, i, W)) / U[i, i]
                W[:, i:end] -= error[:, None] * U[i, i:end][None, :]
                errors[:, i - start] = error
            W[:, end:] -= errors @ U[start:end, end:]
        if finish_rows is not None:
            finish_rows(rows, W)
