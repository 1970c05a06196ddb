"""What a layer costs on disk: the bytes ``netcompress.save`` writes for its tensors."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["half_exact", "half_scale", "packed_bits", "saved_bytes", "stored_form"]

HALF_LEAVES = ("scale",)  # a quantized layer's tensors written in float16 where that is exact
PACKED_LEAVES = ("codes", "zero_point")  # a quantized layer's integers written at the codes' width


def packed_bits(module: nn.Module) -> int | None:
    """The width its codes are packed to on disk, for a quantized layer under 8 bits (else ``None``)."""
    codes, bits = getattr(module, "codes", None), getattr(module, "code_bits", None)
    return bits if isinstance(codes, torch.Tensor) and isinstance(bits, int) and bits < 8 else None


def half_scale(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to the nearest float16 where float16 holds it as a normal number.

    ``save`` writes a quantized layer's scales in float16 when that loses nothing (as GPTQ, AWQ
    and compressed-tensors files store them), which halves their share of the bytes: 0.25 of a
    bit per weight at groups of 128, not 0.5. The quantizers round here, before any code is chosen, keeping
    the codes consistent with the scales that are stored. Scales outside float16's normal range
    stay as they are (and are written in float32).
    """
    normal = (scale >= 2.0 ** -14) & (scale <= 65504.0)
    return torch.where(normal, scale.to(torch.float16).to(scale.dtype), scale)


def half_exact(tensor: torch.Tensor) -> bool:
    """Whether a float32/float64 tensor's every value is a float16 number (so float16 stores it exactly)."""
    if tensor.dtype not in (torch.float32, torch.float64):
        return False
    values = tensor.detach()
    return bool(torch.equal(values.to(torch.float16).to(values.dtype), values))


def stored_form(owner: nn.Module, leaf: str, tensor: torch.Tensor) -> int | str | None:
    """How ``save`` writes a tensor of ``owner``: a bit width (packed), ``"float16"``, or ``None`` (as it is).

    Of a quantized layer (one holding ``codes``): codes and zero points under 8 bits are packed to
    the codes' width, and scales that float16 holds exactly are written in float16.
    """
    if leaf in PACKED_LEAVES:
        return packed_bits(owner)
    if leaf in HALF_LEAVES and isinstance(getattr(owner, "codes", None), torch.Tensor) and half_exact(tensor):
        return "float16"
    return None


def saved_bytes(module: nn.Module) -> int:
    """The bytes ``save`` writes for ``module``'s tensors (:func:`stored_form`: packed codes, float16 scales)."""
    total = 0
    for name, tensor in module.state_dict().items():
        owner_name, _, leaf = name.rpartition(".")
        form = stored_form(module.get_submodule(owner_name), leaf, tensor)
        if form == "float16":
            total += 2 * tensor.numel()
        elif form:
            total += -(-tensor.numel() * form // 8)
        else:
            total += tensor.numel() * tensor.element_size()
    return total
