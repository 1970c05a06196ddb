"""A quantized layer's tensors as :func:`netcompress.save` writes them: sub-byte integers packed, scales in float16.

A quantized layer holds one code per byte in memory (``uint8``), so that it can index and train;
on disk a ``b``-bit code takes ``b`` bits, and so does a zero point (an integer of the same
grid). ``save`` replaces each ``<layer>.codes`` and ``<layer>.zero_point`` tensor of the state
dict by its packed bytes (most significant bit first, the ``.ncz`` container's fixed width
layout, :func:`netcompress.storage.codec.pack_fixed`) and records ``{"bits", "shape"}`` for it
in the manifest's ``packed`` field. A ``<layer>.scale`` whose every value float16 holds exactly
(the quantizers round scales so, :func:`netcompress._core.sizes.half_scale`) is written in
float16 and recorded as ``{"dtype": "float16"}``. ``load`` checks every record against the
layer it rebuilt and the byte count before it unpacks anything. What is written is what
:func:`netcompress._core.sizes.saved_bytes` counts: both follow :func:`~netcompress._core.sizes.stored_form`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from netcompress._core.sizes import PACKED_LEAVES, stored_form
from netcompress.storage.codec import pack_fixed, unpack_fixed

__all__ = ["pack_codes", "unpack_codes"]


def pack_codes(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Pack, in ``state``, every quantized layer's integers under 8 bits and its float16-exact scales; the records."""
    records = {}
    for name, module in model.named_modules():
        for leaf, tensor in module.named_buffers(recurse=False):
            _pack_one(name, module, leaf, tensor, state, records)
        for leaf, tensor in module.named_parameters(recurse=False):
            _pack_one(name, module, leaf, tensor, state, records)
    return records


def _pack_one(name: str, module: nn.Module, leaf: str, tensor: torch.Tensor, state: dict[str, torch.Tensor],
              records: dict[str, dict]) -> None:
    key = f"{name}.{leaf}" if name else leaf
    form = stored_form(module, leaf, tensor) if tensor is not None else None
    if form is None or key not in state:
        return
    if form == "float16":
        state[key] = state[key].to(torch.float16)
        records[key] = {"dtype": "float16"}
        return
    values = state[key]
    if int(values.max()) >> form:
        raise ValueError(f"layer {name!r} holds {leaf} beyond its {form} bits; quantize it again")
    packed = pack_fixed(values.reshape(-1).cpu().numpy(), form)
    state[key] = torch.from_numpy(np.frombuffer(packed, dtype=np.uint8).copy())
    records[key] = {"bits": form, "shape": list(values.shape)}


def unpack_codes(model: nn.Module, state: dict[str, torch.Tensor], records: object, source: str) -> None:
    """Unpack, in ``state``, the tensors ``records`` name, each checked against ``model``'s rebuilt layer first."""
    if records is None:
        return
    if not isinstance(records, dict):
        raise ValueError(f"{source} is corrupt: 'packed' must be an object of tensor name → {{bits, shape}}")
    expected_tensors = dict(model.named_buffers()) | dict(model.named_parameters())
    for key, record in records.items():
        expected = expected_tensors.get(key)
        leaf = key.rsplit(".", 1)[-1]
        if isinstance(record, dict) and record.get("dtype") == "float16":
            _unhalf(key, leaf, expected, state, source)
            continue
        if expected is None or leaf not in PACKED_LEAVES:
            raise ValueError(f"{source} packs {key!r}, which is not the codes or zero points of a quantized layer "
                             "of this model")
        bits, shape = (record.get("bits"), record.get("shape")) if isinstance(record, dict) else (None, None)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits < 8 or shape != list(expected.shape):
            raise ValueError(f"{source} is corrupt: the packing of {key!r} must give 1 to 7 bits and the layer's "
                             f"shape {list(expected.shape)}")
        packed = state.get(key)
        count = math.prod(shape)
        if packed is None or packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != -(-count * bits // 8):
            raise ValueError(f"{source} is corrupt: {key!r} must be {-(-count * bits // 8):,} packed bytes")
        values = unpack_fixed(packed.numpy().tobytes(), bits, count)
        state[key] = torch.from_numpy(values).reshape(shape).to(expected.dtype)


def _unhalf(key: str, leaf: str, expected: torch.Tensor | None, state: dict[str, torch.Tensor], source: str) -> None:
    """A scale written in float16, back in the dtype of the layer that holds it."""
    stored = state.get(key)
    if expected is None or leaf != "scale" or not expected.is_floating_point():
        raise ValueError(f"{source} records {key!r} in float16, which is not the scale of a quantized layer of "
                         "this model")
    if stored is None or stored.dtype != torch.float16 or list(stored.shape) != list(expected.shape):
        raise ValueError(f"{source} is corrupt: {key!r} must be float16 of shape {list(expected.shape)}")
    state[key] = stored.to(expected.dtype)
