"""GPTQ: uniform quantization with error feedback through the inverse input Hessian.

Frantar, Ashkboos, Hoefler and Alistarh, "GPTQ: Accurate post-training quantization for
generative pre-trained transformers", ICLR 2023 (after Optimal Brain Quantization, Frantar
and Alistarh, NeurIPS 2022). The columns (inputs) of ``W`` are quantized one after another;
the error each one makes, divided by its diagonal entry of ``H⁻¹`` (``H = XXᵀ`` on the target
data, damped), is spread over the columns still to come through the row of the upper
Cholesky factor of ``H⁻¹``, so that the *layer's output* on the target data, not each weight,
stays close. Updates are applied lazily a block of columns at a time.
See :mod:`netcompress.stats.hessian` for the factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from netcompress._core.layers import DENSE
from netcompress.quantize.activations import STATIC_INPUTS, check_activation_settings
from netcompress.quantize.modules import quantized_like
from netcompress.quantize.uniform import _affine_grid, _check_bits, _finish, grid_codes
from netcompress.registry import Settings, each, register
from netcompress.stats.hessian import DEFAULT_DAMP, check_damp, check_hessian_layer, sweep_columns
from netcompress.stats.moments import Moments

__all__ = ["check_gptq", "gptq"]

BLOCK = 128  # columns per lazy update


def _check_grid(bits: object, symmetric: object) -> None:
    if bits == 1 and symmetric is True:
        raise ValueError("a symmetric 1-bit grid holds only zero; use bits ≥ 2 or method 'binary'")


def check_gptq(layer: nn.Module, *, bits: int | None = None, group_size: int | None = None, symmetric: bool = True,
               damp: float = DEFAULT_DAMP) -> None:
    """Refuse settings or a layer GPTQ cannot take, before any pass over data."""
    if bits is None:
        raise TypeError("method 'gptq' needs bits, the code width (2 to 8)")
    _check_bits(bits)
    _check_grid(bits, symmetric)
    if not isinstance(symmetric, bool):
        raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
    check_hessian_layer(layer, "gptq", damp)
    per_row = layer.weight[0].numel()
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size <= 0 or per_row % group_size):
        raise ValueError(f"group_size {group_size!r} does not divide the {per_row} inputs of each row")




@dataclass(frozen=True, kw_only=True)
class GPTQ(Settings):
    """GPTQ (Frantar, Ashkboos, Hoefler and Alistarh, ICLR 2023): ``bits``-bit codes with error feedback.

    ``group_size``: one scale per that many inputs (default one per output channel); ``damp``: the
    Hessian's damping, relative to its mean diagonal; ``activations``: a static input grid of that
    many bits as well (``bits=4, activations=8``: w4a8; see :mod:`netcompress.quantize.activations`).
    """

    bits: int
    group_size: int | None = None
    symmetric: bool = True
    damp: float = DEFAULT_DAMP
    activations: int | None = None
    activation_clip: str = "auto"
    activation_symmetric: bool = False

    def check(self) -> None:  # what needs no layer; check_gptq fits the rest to each layer
        each(self.bits, _check_bits)
        _check_grid(self.bits, self.symmetric)
        each(self.damp, check_damp)
        check_activation_settings(self.activations, self.activation_clip, self.activation_symmetric)


@register("gptq", GPTQ, family="layer", accepts=DENSE, needs_stats=True, check=check_gptq,
          example={"bits": 4}, inputs=STATIC_INPUTS)
def gptq(layer: nn.Module, moments: Moments, *, bits: int, group_size: int | None = None, symmetric: bool = True,
         damp: float = DEFAULT_DAMP) -> nn.Module:
    """Quantize ``layer`` to ``bits``-bit codes, each column's error fed forward to the columns after it.

    Args:
        moments: the layer's target statistics (``XXᵀ`` is the Hessian of the output error).
        bits: code width, 2 to 8 (1 with ``symmetric=False``).
        group_size: one scale per ``group_size`` consecutive inputs of a row (``None``: one per
            row). A group's grid is chosen (MSE-optimal clip, as :func:`~netcompress.quantize.uniform`)
            on the weights as updated when the group is reached, as in GPTQ.
        symmetric: zero point ``2^(b−1)`` (default) or an integer zero point per group.
        damp: ``λ`` added to the diagonal of ``XXᵀ``, as a fraction of its mean.

    Returns:
        A :class:`~netcompress.quantize.QuantizedLinear` / ``QuantizedConv2d`` storing codes and scales,
        the same layout as ``uniform`` with ``granularity="group"`` (or ``"channel"``).
    """
    check_gptq(layer, bits=bits, group_size=group_size, symmetric=symmetric, damp=damp)
    out, columns = layer.weight.shape[0], layer.weight[0].numel()
    size = columns if group_size is None else group_size
    device = layer.weight.device
    codes = torch.zeros(out, columns, dtype=torch.uint8, device=device)
    scales = torch.zeros(out, columns // size, dtype=torch.float64, device=device)
    zeros = torch.zeros_like(scales)

    def round_column(rows: slice, i: int, W: torch.Tensor) -> torch.Tensor:
        g = i // size
        scale, zero = scales[rows, g], zeros[rows, g]
        if i % size == 0:  # a new group: its grid from the weights as they are now
            ones = torch.ones(W.shape[0], size, dtype=W.dtype, device=W.device)
            scale[:], zero[:], _ = _affine_grid(W[:, i:i + size], ones, bits, symmetric)
        code = grid_codes(W[:, i], scale, zero, bits)
        codes[rows, i] = code.to(torch.uint8)
        return (code - zero) * scale

    sweep_columns(layer, moments, damp, round_column, block=BLOCK)
    module = quantized_like(layer, scheme="symmetric" if symmetric else "asymmetric", bits=bits, group_size=size)
    tensors = {"scale": scales} if symmetric else {"scale": scales, "zero_point": zeros.to(torch.uint8)}
    return _finish(module, layer, codes, None, **tensors)
