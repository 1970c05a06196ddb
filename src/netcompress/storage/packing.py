"""Sub-byte integer codes packed for :func:`netcompress.save`: two 4-bit or four 2-bit codes per byte.

A quantized layer holds one code per byte in memory (``uint8``), so that it can index and train;
on disk a ``b``-bit code takes ``b`` bits. ``save`` replaces each ``<layer>.codes`` tensor of
the state dict by its packed bytes (most significant bit first, the ``.ncz`` container's fixed
width layout, :func:`netcompress.storage.codec.pack_fixed`) and records ``{"bits", "shape"}`` for
it in the manifest's ``packed`` field; ``load`` checks every record against the layer it rebuilt
and the byte count before it unpacks anything.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from netcompress._core.sizes import packed_bits
from netcompress.storage.codec import pack_fixed, unpack_fixed

__all__ = ["pack_codes", "unpack_codes"]


def pack_codes(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Pack, in ``state``, the codes of every quantized layer under 8 bits; returns the manifest's records."""
    records = {}
    for name, module in model.named_modules():
        key = f"{name}.codes" if name else "codes"
        bits = packed_bits(module)
        if bits is None or key not in state:
            continue
        codes = state[key]
        if int(codes.max()) >> bits:
            raise ValueError(f"layer {name!r} holds codes beyond its {bits} bits; quantize it again")
        packed = pack_fixed(codes.reshape(-1).cpu().numpy(), bits)
        state[key] = torch.from_numpy(np.frombuffer(packed, dtype=np.uint8).copy())
        records[key] = {"bits": bits, "shape": list(codes.shape)}
    return records


def unpack_codes(model: nn.Module, state: dict[str, torch.Tensor], records: object, source: str) -> None:
    """Unpack, in ``state``, the codes ``records`` name, each checked against ``model``'s rebuilt layer first."""
    if records is None:
        return
    if not isinstance(records, dict):
        raise ValueError(f"{source} is corrupt: 'packed' must be an object of tensor name → {{bits, shape}}")
    buffers = dict(model.named_buffers())
    for key, record in records.items():
        expected = buffers.get(key)
        if expected is None or not key.endswith("codes"):
            raise ValueError(f"{source} packs {key!r}, which is not the codes of a quantized layer of this model")
        bits, shape = (record.get("bits"), record.get("shape")) if isinstance(record, dict) else (None, None)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits < 8 or shape != list(expected.shape):
            raise ValueError(f"{source} is corrupt: the packing of {key!r} must give 1 to 7 bits and the layer's "
                             f"shape {list(expected.shape)}")
        packed = state.get(key)
        count = math.prod(shape)
        if packed is None or packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != -(-count * bits // 8):
            raise ValueError(f"{source} is corrupt: {key!r} must be {-(-count * bits // 8):,} packed bytes")
        codes = unpack_fixed(packed.numpy().tobytes(), bits, count)
        state[key] = torch.from_numpy(codes).reshape(shape)
