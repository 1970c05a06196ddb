"""The ``.ncz`` container: a pruned, quantized, entropy-coded model in one file.

Layout (little-endian)::

    magic      8 bytes   b"\\x89NCZ\\r\\n\\x1a\\n"
    version    u16       2
    flags      u16       0
    header     u32       length H of the zlib-compressed JSON header
    header     H bytes   {"manifest": architecture, "tensors": [records]}
    payload    …         the blobs the records point to ([offset, length] into the payload)
    crc32      u32       of every byte before it

Each record names one ``state_dict`` entry, its dtype and shape, and an encoding:

* ``raw``: the tensor's bytes in its own dtype (biases, scales, zero points, codebooks,
  BatchNorm statistics, unquantized weights; 0-d and every fixed-size dtype);
* ``codes``: quantization codes, one symbol per weight (``levels`` symbols);
* ``sparse-codes`` / ``sparse-float``: only the unpruned weights, as a relative index
  stream (:func:`codec.relative_indices`, ``index_bits`` chosen per tensor to minimise the
  coded size, with a tail that covers the tensor) plus their codes or values in the
  tensor's dtype; the layer's mask is rebuilt from the index stream (``mask-of``).

Every symbol stream is stored Huffman coded or bit-packed, whichever is smaller.

A file is hostile until checked (the approach of the safetensors format): the checksum is
computed while streaming the file; the header is decompressed with a bound; every count,
shape, rank, span and stream length is checked against caps and against the bytes that
hold it, and every layer the manifest would build is sized on the ``meta`` device and
compared with the records, all before anything is allocated. Tensors are then decoded one
at a time from the file into the model, so loading needs about the model plus one copy
(the undo snapshot), and a failure leaves the model exactly as it was.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netcompress._core.atomic import atomic_write_bytes
from netcompress._core.files import open_regular
from netcompress._core.transaction import all_or_nothing
from netcompress.prune.modules import MaskedConv2d, MaskedLinear
from netcompress.quantize.modules import QuantizedLayer
from netcompress.storage._header import (
    DTYPE_NAMES,
    INDEX_BITS,
    MAGIC,
    VERSION,
    check_manifest_sizes,
    code_width,
    read_header,
)
from netcompress.storage.codec import (
    code_lengths,
    huffman_decode,
    huffman_encode,
    index_mask,
    pack_fixed,
    relative_indices,
    unpack_fixed,
)
from netcompress.storage.io import apply_manifest, manifest

__all__ = ["MAGIC", "load_compressed", "save_compressed"]



# ---- writing -------------------------------------------------------------------------------------------------------

class _Payload:
    """Blobs appended one after another; records hold (offset, length)."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, blob: bytes) -> list[int]:
        self.parts.append(blob)
        self.size += len(blob)
        return [self.size - len(blob), len(blob)]




def _stream(symbols: np.ndarray, alphabet: int, payload: _Payload) -> dict:
    """Store ``symbols`` (< alphabet) Huffman coded or bit-packed, whichever is smaller."""
    packed = pack_fixed(symbols, code_width(alphabet))
    if len(symbols):
        lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
        coded, bit_count = huffman_encode(symbols, lengths)
        if len(coded) + alphabet < len(packed):
            return {"coder": "huffman", "count": len(symbols), "bits": bit_count, "alphabet": alphabet,
                    "lengths": payload.add(lengths.tobytes()), "blob": payload.add(coded)}
    return {"coder": "packed", "count": len(symbols), "width": code_width(alphabet), "alphabet": alphabet,
            "blob": payload.add(packed)}


def _coded_bits(symbols: np.ndarray, alphabet: int) -> int:
    if not len(symbols):
        return 0
    counts = np.bincount(symbols, minlength=alphabet)
    return int((counts * code_lengths(counts)).sum()) + 8 * alphabet


def _index_stream(mask: np.ndarray, payload: _Payload) -> tuple[dict, int]:
    positions = np.flatnonzero(mask)
    best = min(INDEX_BITS, key=lambda b: _coded_bits(relative_indices(positions, b, len(mask)), (1 << b) + 1))
    return _stream(relative_indices(positions, best, len(mask)), (1 << best) + 1, payload), best


def _bytes(tensor: torch.Tensor, name: str) -> tuple[str, bytes]:
    array = tensor.detach().cpu().contiguous().reshape(-1)  # reshape: a 0-d tensor cannot be viewed as bytes
    if array.dtype not in DTYPE_NAMES or array.is_sparse or array.is_quantized:
        raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which the container does not store; "
                         "convert it to a plain dtype first")
    return DTYPE_NAMES[array.dtype], array.view(torch.uint8).numpy().tobytes() if array.numel() else b""


def _raw(name: str, tensor: torch.Tensor, payload: _Payload) -> dict:
    dtype, data = _bytes(tensor, name)
    return {"name": name, "dtype": dtype, "shape": list(tensor.shape), "encoding": "raw", "blob": payload.add(data)}


def _quantized_records(name: str, module: nn.Module, payload: _Payload) -> list[dict]:
    codes = module.codes.cpu().numpy().reshape(-1)
    record = {"name": f"{name}.codes", "dtype": "uint8", "shape": list(module.codes.shape), "levels": module.levels}
    records = [record]
    if module.mask is not None:
        mask = module.mask.cpu().numpy().reshape(-1)
        record["encoding"] = "sparse-codes"
        record["index"], record["index_bits"] = _index_stream(mask, payload)
        record["codes"] = _stream(codes[mask], module.levels, payload)
        records.append({"name": f"{name}.mask", "dtype": "bool", "shape": list(module.mask.shape),
                        "encoding": "mask-of", "of": f"{name}.codes"})
    else:
        record["encoding"] = "codes"
        record["codes"] = _stream(codes, module.levels, payload)
    return records


def _masked_records(name: str, module: nn.Module, payload: _Payload) -> list[dict]:
    mask = module.mask.cpu().numpy().reshape(-1)
    weight = module.weight.detach().reshape(-1)[torch.from_numpy(mask).to(module.weight.device)]
    dtype, values = _bytes(weight, f"{name}.weight")
    index, bits = _index_stream(mask, payload)
    return [
        {"name": f"{name}.weight", "dtype": dtype, "shape": list(module.weight.shape), "encoding": "sparse-float",
         "index": index, "index_bits": bits, "values": payload.add(values)},
        {"name": f"{name}.mask", "dtype": "bool", "shape": list(module.mask.shape), "encoding": "mask-of",
         "of": f"{name}.weight"},
    ]


def _check_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace a file netcompress did not write (anything that is not an ``.ncz``)."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give save_compressed a file path such as model.ncz")
    if path.exists() and not overwrite:
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:
                raise ValueError(f"{path} exists and is not a netcompress container; choose another path, "
                                 "or pass overwrite=True to replace it")


def save_compressed(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False) -> int:
    """Write ``model`` as an ``.ncz`` container and return the bytes written.

    An existing ``.ncz`` at ``path`` is replaced; any other existing file is refused unless
    ``overwrite=True``.

    Quantized layers store codes (sparse when pruned) beside their scales, zero points or
    codebooks; pruned float layers store their kept weights and relative indices; every other
    ``state_dict`` entry (BatchNorm statistics and counters included) is stored raw in its own
    dtype. ``load_compressed`` rebuilds exactly the same tensors, dtypes included. The file is
    written to a temporary name and renamed into place, so nothing is left when a check fails.
    """
    _check_target(Path(path), overwrite)
    payload, records, handled = _Payload(), [], set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, QuantizedLayer):
            records += _quantized_records(name, module, payload)
            handled |= {f"{prefix}codes", f"{prefix}mask"}
        elif isinstance(module, (MaskedLinear, MaskedConv2d)):
            records += _masked_records(name, module, payload)
            handled |= {f"{prefix}weight", f"{prefix}mask"}
    for key, tensor in model.state_dict().items():
        if key not in handled:
            records.append(_raw(key, tensor, payload))
    header = zlib.compress(json.dumps({"manifest": manifest(model), "tensors": records},
                                      separators=(",", ":")).encode(), 9)
    body = MAGIC + struct.pack("<HHI", VERSION, 0, len(header)) + header + b"".join(payload.parts)
    blob = body + struct.pack("<I", zlib.crc32(body))
    atomic_write_bytes(path, blob)
    return len(blob)


# ---- reading: every check before any allocation -------------------------------------------------------------------















class _Reader:
    """Reads one record's blobs from the open file, on demand."""

    def __init__(self, handle, start: int):
        self.handle, self.start = handle, start

    def blob(self, span: tuple[int, int]) -> bytearray:
        data = bytearray(span[1])
        self.handle.seek(self.start + span[0])
        if self.handle.readinto(data) != span[1]:
            raise ValueError("the file changed while it was read")
        return data

    def stream(self, spec: dict, alphabet: int) -> np.ndarray:
        if spec["coder"] == "huffman":
            lengths = np.frombuffer(self.blob(spec["lengths"]), dtype=np.uint8)
            symbols = huffman_decode(self.blob(spec["blob"]), spec["bits"], spec["count"], lengths)
        else:
            symbols = unpack_fixed(self.blob(spec["blob"]), spec["width"], spec["count"])
        if len(symbols) and int(symbols.max()) >= alphabet:
            raise ValueError(f"a stream holds symbols outside its {alphabet}-symbol alphabet")
        return symbols


def _decode(record: dict, reader: _Reader, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """One record as a CPU tensor of its dtype and shape (the checks in ``_check_record`` bound its size)."""
    dtype, shape, numel, kind = record["dtype"], record["shape"], record["numel"], record["encoding"]
    if kind == "raw":
        if not numel:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(reader.blob(record["blob"]), dtype=dtype).reshape(shape)
    if kind == "mask-of":
        return masks.pop(record["of"]).reshape(shape)
    if kind == "codes":
        return torch.from_numpy(reader.stream(record["codes"], record["levels"]).astype(np.uint8, copy=False)).reshape(shape)
    index = reader.stream(record["index"], (1 << record["index_bits"]) + 1)
    mask = index_mask(index, record["index_bits"], numel)
    del index
    if kind == "sparse-codes":
        values = torch.from_numpy(reader.stream(record["codes"], record["levels"]).astype(np.uint8, copy=False))
    else:
        values = torch.frombuffer(reader.blob(record["values"]), dtype=dtype) if record["values"][1] else \
            torch.empty(0, dtype=dtype)
    if len(values) != int(mask.sum()):
        raise ValueError(f"{len(values):,} values for {int(mask.sum()):,} kept entries")
    full = torch.zeros(numel, dtype=dtype)
    mask = torch.from_numpy(mask)
    full[mask] = values
    if record.get("mask_of"):
        masks[record["name"]] = mask
    return full.reshape(shape)


def _load_into(model: nn.Module, header: dict, records: list[dict], reader: _Reader, source: str) -> None:
    apply_manifest(model, header.get("manifest"), f"{source} (manifest)")
    state = model.state_dict(keep_vars=True)
    names = [r["name"] for r in records]
    missing, unexpected = sorted(set(state) - set(names)), sorted(set(names) - set(state))
    if missing or unexpected:
        raise ValueError(f"{source} does not match the model (missing: {missing[:5]}, unexpected: {unexpected[:5]}); "
                         "build the same original architecture")
    for record in records:
        target = state[record["name"]]
        if list(target.shape) != record["shape"]:
            raise ValueError(f"{source}: tensor {record['name']!r} has shape {record['shape']} in the file but "
                             f"{list(target.shape)} in the model; build the same original architecture")
        if not (target.is_floating_point() and record["dtype"].is_floating_point) and target.dtype != record["dtype"]:
            raise ValueError(f"{source}: tensor {record['name']!r} is {record['dtype']} in the file but "
                             f"{target.dtype} in the model")
        layer = model.get_submodule(record["name"].rpartition(".")[0])
        if "levels" in record and isinstance(layer, QuantizedLayer) and record["levels"] > layer.levels:
            raise ValueError(f"{source}: codes {record['name']!r} use {record['levels']} levels; the layer has {layer.levels}")
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for record in records:
            try:
                tensor = _decode(record, reader, masks)
            except ValueError as error:
                raise ValueError(f"{source} is corrupt: tensor {record['name']!r}: {error}") from None
            target = state[record["name"]]
            # .data keeps the Parameter/buffer object; a floating tensor takes the file's dtype (fp16/bf16 stay so).
            target.data = tensor.to(target.device)


def load_compressed(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an ``.ncz`` file into ``model``, a freshly built original architecture; returns ``model``.

    Every header field is checked before anything is allocated, the manifest's layers are
    rebuilt (checked against the architecture fingerprint by :func:`io.apply_manifest`), and
    tensors are decoded one at a time straight into the model, in the dtypes they were saved
    in. All or nothing: on any error (``ValueError`` naming the file and the field) ``model``
    is left exactly as it was.
    """
    source = str(path)
    try:
        with open_regular(path, ".ncz file") as handle:
            header, records, start, _ = read_header(handle, source)
            check_manifest_sizes(header.get("manifest"), records, source)
            with all_or_nothing(model):
                _load_into(model, header, records, _Reader(handle, start), source)
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error})") from None
    return model


# ---- storage tables ------------------------------------------------------------------------------------------------





