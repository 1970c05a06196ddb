"""Low-bit quantization with limited data: group-wise grids and two-stage distillation (Yuan, Chen, Hu and Peng, "Towards Low-Bit Quantization of Deep Neural Networks with
Limited Data", ICPR 2020).

1. Group-wise uniform quantization of every layer (:func:`shared_grid`: one grid per group
   of output channels, kept as a codebook), calibrated on the target statistics of the few
   samples available.
2. **Independent stage**: each quantized layer alone is fitted to reproduce the full-precision
   layer's output on the full-precision network's inputs to it (layer-wise supervision). With
   the codes fixed the weights are linear in the codebook, so this stage is solved in closed
   form from the statistics: for group ``g`` with one-hot code matrices ``E_r``,
   ``(Σ_r E_rᵀ C E_r + ρI) c = Σ_r E_rᵀ C w_r + ρ c₀`` with ``C`` the centred input second
   moment, and the bias re-fitted as ``b̂ = b + (W − Ŵ)x̄``. The small ridge ``ρ`` keeps the
   codebook near its calibrated start when a handful of samples leave ``C`` rank-deficient.
3. **Joint stage**: the whole quantized network is trained (codebooks and biases) to match
   the full-precision network's softened outputs (:class:`distill.Logits`, no labels needed).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn

from netcompress._core.layers import replace_module
from netcompress._core.tensors import input_columns, weight_matrix
from netcompress.distill.finetune import finetune
from netcompress.distill.losses import Logits
from netcompress.quantize.modules import QuantizedConv2d, QuantizedLinear
from netcompress.quantize.uniform import _affine_grid, _check_bits, _codebook_module, _weight_and_mask, clip_weights
from netcompress.stats.collect import LayerStats, collect
from netcompress.stats.moments import Moments

__all__ = ["fit_codebooks", "quantize_low_bit", "shared_grid"]

RIDGE = 1e-3  # relative to the mean diagonal of each group's normal matrix


def _fit_layer(layer: nn.Module, reference: nn.Module, moments) -> None:
    """Closed-form independent stage for one quantized layer against its full-precision original."""
    out = layer.codes.shape[0]
    W, b = weight_matrix(reference)
    W, b = W.cpu(), (b.detach().to(torch.float64).cpu() if b is not None else None)
    codes = layer.codes.reshape(out, -1).long().cpu()
    mask = layer.mask.reshape(out, -1).cpu() if layer.mask is not None else None
    C = moments.centered_gram.cpu() / max(moments.count, 1)
    columns = input_columns(out, codes.shape[1], getattr(layer, "groups", 1))  # a grouped conv reads its group only
    mean_input = moments.mean_input.cpu()
    levels = layer.levels
    books = layer.codebook.detach().to(torch.float64).cpu().clone()
    for g in range(books.shape[0]):
        rows = range(g * layer.codebook_rows, min((g + 1) * layer.codebook_rows, out))
        normal = torch.zeros(levels, levels, dtype=torch.float64)
        rhs = torch.zeros(levels, dtype=torch.float64)
        for r in rows:
            live = mask[r] if mask is not None else torch.ones(codes.shape[1], dtype=torch.bool)
            E = torch.zeros(codes.shape[1], levels, dtype=torch.float64)
            E[live.nonzero().squeeze(1), codes[r][live]] = 1.0
            # A grouped conv's statistics hold one (f, f) block per group; row r reads its group's block.
            C_r = C if C.dim() == 2 else C[r // (out // C.shape[0])]
            CE = C_r @ E
            normal += E.T @ CE
            rhs += CE.T @ W[r]
        ridge = RIDGE * float(normal.diagonal().mean().clamp_min(1e-12))
        normal.diagonal().add_(ridge)
        books[g] = torch.linalg.solve(normal, rhs + ridge * books[g])
    with torch.no_grad():
        layer.codebook.copy_(books.to(layer.codebook.dtype))
        if b is not None and layer.bias is not None:
            new_weight = weight_matrix(layer)[0].cpu()
            shift = ((W - new_weight) * mean_input[columns]).sum(1)
            layer.bias.copy_((b + shift).to(layer.bias.dtype))


def shared_grid(layer: nn.Module, moments: Moments | None, *, bits: int, rows: int) -> nn.Module:
    """Stage 1: one calibrated ``bits``-bit affine grid per ``rows`` consecutive output channels, kept as a codebook.

    The grid is ``quantize.uniform``'s asymmetric one (clip searched on the target statistics);
    it is stored as ``2^bits`` free code words per group so that the independent stage can move
    each of them (the seed groups output channels, not inputs).
    """
    matrix, mask = _weight_and_mask(layer)
    out, per_row = matrix.shape
    groups = math.ceil(out / rows)
    live = mask if mask is not None else torch.ones_like(matrix, dtype=torch.bool)
    values = torch.full((groups * rows, per_row), float("nan"), dtype=matrix.dtype)
    values[:out] = torch.where(live, matrix, torch.nan)
    cost = torch.zeros_like(values)
    cost[:out] = clip_weights(moments, matrix, getattr(layer, "groups", 1))
    scale, zero, codes = _affine_grid(values.reshape(groups, -1), cost.reshape(groups, -1), bits, symmetric=False)
    codebook = (torch.arange(1 << bits, dtype=scale.dtype) - zero[:, None]) * scale[:, None]
    codes = codes.reshape(groups * rows, per_row)[:out].to(torch.uint8)
    return _codebook_module(layer, codebook, codes, rows, mask)


def fit_codebooks(quantized: nn.Module, reference: nn.Module, stats: LayerStats) -> None:
    """The independent stage for every codebook-quantized layer whose statistics are in ``stats``."""
    originals = dict(reference.named_modules())
    for name, module in quantized.named_modules():
        if isinstance(module, (QuantizedLinear, QuantizedConv2d)) and module.codebook is not None and name in stats:
            _fit_layer(module, originals[name], stats[name])


def quantize_low_bit(
    model: nn.Module,
    samples: torch.Tensor,
    *,
    bits: int,
    group_size: int = 8,
    independent: bool = True,
    joint_epochs: int = 0,
    lr: float = 1e-3,
    temperature: float = 4.0,
    batch_size: int = 32,
    seed: int = 0,
    layers: Iterable[str] | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """A quantized copy of ``model`` from a few target ``samples`` (no labels needed).

    With ``independent=False`` and ``joint_epochs=0`` this is plain calibrated group-wise
    quantization, the baseline of the seed's comparison.
    """
    _check_bits(bits)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive number of output channels per grid, got {group_size!r}")
    teacher = copy.deepcopy(model).eval()
    student = copy.deepcopy(model).eval()
    stats = collect(teacher, samples.split(batch_size), layers, progress=progress)
    for name in stats:
        layer = student.get_submodule(name)
        rows = min(group_size, layer.weight.shape[0])
        replace_module(student, name, shared_grid(layer, stats[name], bits=bits, rows=rows))
    if independent:
        fit_codebooks(student, teacher, stats)
    if joint_epochs:
        finetune(student, [(chunk, None) for chunk in samples.split(batch_size)], teacher=teacher,
                 loss=Logits(temperature=temperature, alpha=0.0, beta=1.0), epochs=joint_epochs, lr=lr,
                 seed=seed, progress=progress)
    return student
