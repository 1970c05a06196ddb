"""What a layer costs on disk: the bytes ``netcompress.save`` writes for its tensors."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["packed_bits", "saved_bytes"]


def packed_bits(module: nn.Module) -> int | None:
    """The width its codes are packed to on disk, for a quantized layer under 8 bits (else ``None``)."""
    codes, bits = getattr(module, "codes", None), getattr(module, "code_bits", None)
    return bits if isinstance(codes, torch.Tensor) and isinstance(bits, int) and bits < 8 else None


def saved_bytes(module: nn.Module) -> int:
    """The bytes ``save`` writes for ``module``'s tensors: codes packed to their width, everything else as it is."""
    total = 0
    for name, tensor in module.state_dict().items():
        owner_name, _, leaf = name.rpartition(".")
        bits = packed_bits(module.get_submodule(owner_name)) if leaf == "codes" else None
        total += -(-tensor.numel() * bits // 8) if bits else tensor.numel() * tensor.element_size()
    return total
