"""A quantized Linear layer's product straight from its codes, on the fastest path its layout allows.

A quantized layer keeps its codes as the source of truth. Rebuilding the float weight on every
call (the reference path: differentiable, any layout) costs three passes over the weight; where
the layout allows, the product is taken from the codes instead:

* **bfloat16 / float16 activations, 8 bits, one scale per row**: ``torch._weight_int8pack_mm``
  (CPU), int8 weights times the activations. The symmetric code ``c`` (zero point 128) is the
  signed integer ``c − 128``, which is ``c XOR 0x80`` read as int8: nothing to compute. An
  asymmetric grid adds the rank-one term ``Σx · (128 − z)·s``.
* **bfloat16 / float16 activations, 2 to 4 bits, groups of 32–256 inputs (or rows)**:
  ``torch._weight_int4pack_mm_for_cpu``, which computes ``(q − 8)·s + m`` per group. A code
  ``c`` with zero point ``z`` is ``(c − z)·s = (c − 8)·s + (8 − z)·s``, so ``m = (8 − z)·s``;
  a per-row grid is its scale repeated over the row's groups; rows are padded to a multiple of 16.
* **w8a8, float32 activations** (8-bit codes, one scale per row, the input on a static 8-bit grid):
  ``torch._int_mm``, int8 times int8 summed in int32 (VNNI on x86), the scales applied to the
  output; the input is rounded onto its grid in the same step (:meth:`Prepared._integer`).
* **float32 activations, one scale per row** (any width): ``y = (x·cᵀ − z·Σx)·s``, the codes
  converted to float once per call and the scale applied to the output, not to the weight. On
  this project's CPU PyTorch's int8/int4 kernels run only bf16 fast (float32 falls back to a
  loop ~40× slower than a float matmul), so float32 models take this path.

The kernels' operands (1 byte or half a byte per weight) are prepared on the first call and
kept, keyed by the version counters of the codes, scales and zero points, so an in-place change
(fine-tuning the scales, ``load_state_dict``) is picked up on the next call. Everything else
(masked layers, codebooks, groups in float32, float64, gradients wanted) takes the reference
path, or after :meth:`QuantizedLayer.freeze` a dense weight decoded once and kept (4 bytes per
weight: the dense layer's speed at the dense layer's memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["INT4_GROUPS", "Prepared", "integer_layout", "kernel_name", "prepare"]

INT4_GROUPS = (256, 128, 64, 32)  # group sizes the int4 kernel takes, largest (fewest scales) first
INT4_ROWS = 16  # the int4 kernel's output rows come in multiples of this


class Prepared:
    """The operands of one path for one state of a layer (its ``key``), and how to call it."""

    def __init__(self, key: tuple, kind: str, weight: torch.Tensor, scales: torch.Tensor,
                 group: int = 0, correction: torch.Tensor | None = None, rows: int = 0):
        self.key, self.kind, self.weight, self.scales = key, kind, weight, scales
        self.group, self.correction, self.rows = group, correction, rows

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if self.kind == "w8a8":
            return self._integer(flat, bias).reshape(*x.shape[:-1], self.weight.shape[1])
        if self.kind == "int8":
            y = torch._weight_int8pack_mm(flat, self.weight, self.scales)
        elif self.kind == "int4":
            y = torch._weight_int4pack_mm_for_cpu(flat, self.weight, self.group, self.scales)[:, :self.rows]
        else:  # "rows": integer codes as floats, the per-row scale applied to the output
            y = F.linear(flat, self.weight.to(flat.dtype)).mul_(self.scales)
        if self.correction is not None:  # the zero point's share, Σx times a per-output constant
            y = y + flat.sum(1, keepdim=True) * self.correction
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


    def _integer(self, flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x̂ ŵᵀ`` with both operands in int8 and int32 sums (``torch._int_mm``: VNNI on x86).

        The input's codes ``q`` (zero point ``z``) are taken as the signed bytes ``a = q − o``
        (``o = 128`` for a uint8 grid, else 0), so ``x̂ = s_x·(a − z′)`` with ``z′ = z − o``; the
        weight's ``ŵ = s_w·(Wc + d)`` with ``Wc = c − 128`` and ``d = 128 − z_w`` (0 when symmetric):
        ``x̂ ŵᵀ = s_x·s_w·(a Wcᵀ − z′·ΣWc + d·(Σa − z′·K))``, all but the scales exact integers.
        """
        s_x, z_x, q_min, q_max, offset, rowsum, shift = self.inputs
        a = torch.round(flat / s_x).add_(z_x).clamp_(q_min, q_max).sub_(offset).to(torch.int8)
        acc = torch._int_mm(a, self.weight)
        zero = z_x - offset
        if zero:
            acc -= zero * rowsum
        if shift is not None:
            acc += (a.sum(1, keepdim=True, dtype=torch.int32) - zero * a.shape[1]) * shift
        y = acc.to(flat.dtype).mul_(self.scales)
        return y if bias is None else y.add_(bias)


def state_key(layer, x: torch.Tensor) -> tuple:
    """What the prepared operands depend on: the stored tensors' identities and versions, and ``x``'s dtype."""
    key: list = [x.dtype, x.device]
    for t in (layer.codes, layer.scale, layer.zero_point, getattr(layer, "input_scale", None),
              getattr(layer, "input_zero_point", None)):
        key += [None] if t is None else [t.data_ptr(), t._version, t.dtype]
    return tuple(key)


def integer_layout(layer) -> bool:
    """Whether both operands of ``layer`` are 8-bit integers: 8-bit codes, one scale per row, an 8-bit input grid."""
    return (getattr(layer, "input_scale", None) is not None and layer.input_bits == 8 and layer.code_bits == 8
            and layer.mask is None and layer.scale is not None and layer.scale.shape[1] == 1)


def kernel_name(layer, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """``"int8"``, ``"int4"`` or ``"rows"``: the path for this layer's layout and inputs of ``dtype`` (``None``: decode)."""
    if layer.mask is not None or layer.scale is None:
        return None
    per_row = layer.scale.shape[1] == 1
    if getattr(layer, "input_scale", None) is not None:  # the input is rounded too: integers on both sides
        integer = integer_layout(layer) and dtype == torch.float32 and layer.codes.device.type == "cpu" \
            and hasattr(torch, "_int_mm")
        return "w8a8" if integer else None
    if dtype == torch.float32:
        return "rows" if per_row else None
    if dtype not in (torch.bfloat16, torch.float16) or layer.codes.device.type != "cpu":
        return None
    inputs = layer.codes.shape[1]
    if layer.code_bits == 8 and per_row and hasattr(torch, "_weight_int8pack_mm"):
        return "int8"
    if 2 <= layer.code_bits <= 4 and hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        if any(layer.group_size % g == 0 and inputs % g == 0 for g in INT4_GROUPS):
            return "int4"
    return None


def prepare(layer, x: torch.Tensor) -> Prepared | None:
    """The operands of a quantized Linear ``layer``'s fast path for inputs like ``x`` (``None``: decode instead)."""
    kind = kernel_name(layer, x.dtype)
    if kind is None:
        return None
    out = layer.codes.shape[0]
    scale = layer.scale.detach().expand(out, -1).to(x.dtype)  # a per-tensor scale serves every row
    zero = torch.full_like(scale, layer.zero_code) if layer.zero_point is None else \
        layer.zero_point.expand(out, -1).to(x.dtype)
    key = state_key(layer, x)
    if kind == "w8a8":
        return _integer_operands(layer, key, scale, zero, out)
    if kind == "rows":
        return Prepared(key, kind, layer.codes, scale.reshape(out).contiguous(),
                        correction=(-zero * scale).reshape(1, out))
    if kind == "int8":
        weight = (layer.codes ^ 0x80).view(torch.int8)  # c − 128 as a signed byte
        correction = None if layer.zero_point is None else ((128 - zero) * scale).reshape(1, out)
        return Prepared(key, kind, weight, scale.reshape(out).contiguous(), correction=correction)
    group = next(g for g in INT4_GROUPS if layer.group_size % g == 0 and layer.codes.shape[1] % g == 0)
    repeat = layer.group_size // group
    scale, zero = scale.repeat_interleave(repeat, dim=1), zero.repeat_interleave(repeat, dim=1)
    codes = layer.codes.to(torch.int32)
    pad = -out % INT4_ROWS  # zero rows (scale 0, offset 0) up to the kernel's multiple, cut off after the call
    if pad:
        codes = F.pad(codes, (0, 0, 0, pad), value=8)
        scale, zero = F.pad(scale, (0, 0, 0, pad)), F.pad(zero, (0, 0, 0, pad), value=8.0)
    weight = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales_and_zeros = torch.stack([scale, (8 - zero) * scale], -1).transpose(0, 1).contiguous()
    return Prepared(key, kind, weight, scales_and_zeros, group=group, rows=out)


def _integer_operands(layer, key: tuple, scale: torch.Tensor, zero: torch.Tensor, out: int) -> Prepared:
    """The int8 weight (transposed, ``Wc = c − 128``), its row sums and the grids of a w8a8 layer."""
    signed = (layer.codes ^ 0x80).view(torch.int8).reshape(out, -1)  # a 1×1 convolution's (out, in, 1, 1) too
    rowsum = signed.sum(1, dtype=torch.int32).reshape(1, out)
    shift = None if layer.zero_point is None else (128 - layer.zero_point.expand(out, -1).to(torch.int32)).reshape(1, out)
    s_x, z_x = float(layer.input_scale), int(layer.input_zero_point)
    offset = 128 if layer.input_quant_min == 0 else 0
    prepared = Prepared(key, "w8a8", signed.t(), (scale.reshape(out) * s_x).reshape(1, out).contiguous())
    prepared.inputs = (s_x, z_x, layer.input_quant_min, layer.input_quant_max, offset, rowsum, shift)
    return prepared
