"""The ``.ncz`` container: a pruned, quantized, entropy-coded model in one file.

Layout (little-endian)::

    magic      8 bytes   b"\\x89NCZ\\r\\n\\x1a\\n"
    version    u16       1
    flags      u16       0
    header     u32       length H of the zlib-compressed JSON header
    header     H bytes   {"manifest": architecture, "tensors": [records]}
    payload    …         the blobs the records point to
    crc32      u32       of every byte before it

Each record names one ``state_dict`` entry, its dtype and shape, and an encoding:

* ``raw``: the bytes of the tensor (biases, codebooks, unquantized weights);
* ``codes``: quantization codes, one symbol per weight;
* ``sparse-codes`` / ``sparse-float``: only the unpruned weights, as a relative index
  stream (:func:`codec.relative_indices`, ``index_bits`` chosen per tensor to minimise
  the coded size) plus their codes or float32 values; the layer's mask is rebuilt
  from the index stream (``mask-of``).

Every symbol stream is stored Huffman coded or bit-packed, whichever is smaller.
Reading checks the magic, version, lengths and checksum before it decodes anything,
and a file is written to a temporary name and renamed into place.
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

from ._text import text_table
from .codec import (
    absolute_positions,
    code_lengths,
    huffman_decode,
    huffman_encode,
    pack_fixed,
    relative_indices,
    unpack_fixed,
)
from .io import apply_manifest, atomic_write_bytes, manifest
from .prune import MaskedConv2d, MaskedLinear
from .quantize import QuantizedConv2d, QuantizedLinear

__all__ = ["MAGIC", "load_compressed", "read_records", "save_compressed"]

MAGIC = b"\x89NCZ\r\n\x1a\n"
VERSION = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8,
           "bool": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}
_INDEX_BITS = range(1, 13)


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
    width = max(1, int(np.ceil(np.log2(max(alphabet, 2)))))
    packed = pack_fixed(symbols, width)
    if len(symbols):
        lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
        coded, bit_count = huffman_encode(symbols, lengths)
        if len(coded) + alphabet < len(packed):
            return {"coder": "huffman", "count": len(symbols), "bits": bit_count, "alphabet": alphabet,
                    "lengths": payload.add(lengths.tobytes()), "blob": payload.add(coded)}
    return {"coder": "packed", "count": len(symbols), "width": width, "alphabet": alphabet,
            "blob": payload.add(packed)}


def _coded_bits(symbols: np.ndarray, alphabet: int) -> int:
    if not len(symbols):
        return 0
    counts = np.bincount(symbols, minlength=alphabet)
    return int((counts * code_lengths(counts)).sum()) + 8 * alphabet


def _index_stream(mask: np.ndarray, payload: _Payload) -> tuple[dict, int]:
    positions = np.flatnonzero(mask)
    best = min(_INDEX_BITS, key=lambda b: _coded_bits(relative_indices(positions, b), (1 << b) + 1))
    symbols = relative_indices(positions, best)
    return _stream(symbols, (1 << best) + 1, payload), best


def _raw(name: str, tensor: torch.Tensor, payload: _Payload) -> dict:
    array = tensor.detach().cpu().contiguous()
    if array.dtype not in _NAMES:
        raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which the container does not store")
    data = array.view(torch.uint8).numpy().tobytes() if array.numel() else b""
    return {"name": name, "dtype": _NAMES[array.dtype], "shape": list(array.shape), "encoding": "raw",
            "blob": payload.add(data)}


def _quantized_records(name: str, module: nn.Module, payload: _Payload) -> list[dict]:
    codes = module.codes.cpu().numpy().reshape(-1).astype(np.int64)
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
    records.append(_raw(f"{name}.codebook", module.codebook, payload))
    return records


def _masked_records(name: str, module: nn.Module, payload: _Payload) -> list[dict]:
    mask = module.mask.cpu().numpy().reshape(-1)
    values = module.weight.detach().cpu().float().numpy().reshape(-1)[mask]
    index, bits = _index_stream(mask, payload)
    return [
        {"name": f"{name}.weight", "dtype": _NAMES[module.weight.dtype], "shape": list(module.weight.shape),
         "encoding": "sparse-float", "index": index, "index_bits": bits,
         "values": payload.add(values.astype("<f4").tobytes())},
        {"name": f"{name}.mask", "dtype": "bool", "shape": list(module.mask.shape), "encoding": "mask-of",
         "of": f"{name}.weight"},
    ]


def save_compressed(model: nn.Module, path: str | os.PathLike) -> int:
    """Write ``model`` as an ``.ncz`` container and return the bytes written.

    Quantized layers store codes (sparse when pruned), pruned float layers their kept
    weights and relative indices, everything else raw. ``load_compressed`` rebuilds
    exactly the same tensors.
    """
    payload, records, handled = _Payload(), [], set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (QuantizedLinear, QuantizedConv2d)):
            records += _quantized_records(name, module, payload)
            handled |= {f"{prefix}codes", f"{prefix}codebook", f"{prefix}mask"}
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


def read_records(path: str | os.PathLike) -> tuple[dict, memoryview]:
    """The checked header (manifest and tensor records) and payload of an ``.ncz`` file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror})") from None
    if len(data) < len(MAGIC) + 12 or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a netcompress container (no .ncz magic number)")
    version, _, header_length = struct.unpack_from("<HHI", data, len(MAGIC))
    if version != VERSION:
        raise ValueError(f"{path} is container version {version}; this netcompress reads version {VERSION}")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError(f"{path} is truncated or corrupt: its checksum does not match")
    start = len(MAGIC) + 8
    if start + header_length > len(data) - 4:
        raise ValueError(f"{path} is corrupt: its header is longer than the file")
    try:
        header = json.loads(zlib.decompress(data[start:start + header_length]))
    except (zlib.error, json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is corrupt: its header cannot be read") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise ValueError(f"{path} is corrupt: its header has no tensor records")
    return header, memoryview(data)[start + header_length:-4]


class _Reader:
    def __init__(self, payload: memoryview, source: str):
        self.payload, self.source = payload, source

    def blob(self, span: object, what: str) -> bytes:
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and v >= 0 for v in span)
                and span[0] + span[1] <= len(self.payload)):
            raise ValueError(f"{self.source}: the data of {what} lies outside the file")
        return bytes(self.payload[span[0]:span[0] + span[1]])

    def stream(self, spec: dict, what: str) -> np.ndarray:
        count, alphabet = spec.get("count"), spec.get("alphabet")
        if not all(isinstance(v, int) and v >= 0 for v in (count, alphabet)):
            raise ValueError(f"{self.source}: the stream of {what} has no valid count")
        if spec.get("coder") == "huffman":
            lengths = np.frombuffer(self.blob(spec.get("lengths"), what), dtype=np.uint8)
            if len(lengths) != alphabet:
                raise ValueError(f"{self.source}: the Huffman table of {what} has the wrong size")
            symbols = huffman_decode(self.blob(spec.get("blob"), what), int(spec.get("bits", -1)), count, lengths)
        elif spec.get("coder") == "packed" and isinstance(spec.get("width"), int) and 1 <= spec["width"] <= 16:
            symbols = unpack_fixed(self.blob(spec.get("blob"), what), spec["width"], count)
        else:
            raise ValueError(f"{self.source}: the stream of {what} has an unknown coder")
        if len(symbols) and symbols.max() >= alphabet:
            raise ValueError(f"{self.source}: the stream of {what} holds symbols outside its alphabet")
        return symbols


def _decode(record: dict, reader: _Reader, decoded: dict[str, torch.Tensor]) -> torch.Tensor:
    name, kind = record.get("name"), record.get("encoding")
    dtype, shape = _DTYPES.get(record.get("dtype")), record.get("shape")
    if dtype is None or not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ValueError(f"{reader.source}: tensor {name!r} has an invalid dtype or shape")
    numel = int(np.prod(shape)) if shape else 1
    if kind == "raw":
        data = reader.blob(record.get("blob"), repr(name))
        if len(data) != numel * torch.empty((), dtype=dtype).element_size():
            raise ValueError(f"{reader.source}: tensor {name!r} has {len(data)} bytes, not what its shape needs")
        return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape) if numel else torch.empty(shape, dtype=dtype)
    if kind == "mask-of":
        source = decoded.get(record.get("of"))
        if source is None:
            raise ValueError(f"{reader.source}: mask {name!r} refers to a tensor that is not stored before it")
        return source.mask.reshape(shape)
    if kind == "codes":
        return torch.from_numpy(reader.stream(record.get("codes", {}), repr(name)).astype(np.uint8)).reshape(shape)
    if kind in ("sparse-codes", "sparse-float"):
        bits = record.get("index_bits")
        if bits not in _INDEX_BITS:
            raise ValueError(f"{reader.source}: tensor {name!r} has an invalid index width")
        positions = absolute_positions(reader.stream(record.get("index", {}), repr(name)), bits)
        if len(positions) and positions[-1] >= numel:
            raise ValueError(f"{reader.source}: the indices of {name!r} run past its {numel} entries")
        mask = np.zeros(numel, dtype=bool)
        mask[positions] = True
        if kind == "sparse-codes":
            values = reader.stream(record.get("codes", {}), repr(name)).astype(np.uint8)
        else:
            values = np.frombuffer(reader.blob(record.get("values"), repr(name)), dtype="<f4")
        if len(values) != len(positions):
            raise ValueError(f"{reader.source}: tensor {name!r} has {len(values)} values for {len(positions)} indices")
        full = np.zeros(numel, dtype=values.dtype)
        full[positions] = values
        tensor = torch.from_numpy(full).to(dtype).reshape(shape)
        tensor.mask = torch.from_numpy(mask)  # read by the "mask-of" record that follows
        return tensor
    raise ValueError(f"{reader.source}: tensor {name!r} has an unknown encoding {kind!r}")


def load_compressed(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an ``.ncz`` file into ``model``, a freshly built original architecture."""
    header, payload = read_records(path)
    apply_manifest(model, header.get("manifest"), f"{path} (manifest)")
    reader, decoded = _Reader(payload, str(path)), {}
    for record in header["tensors"]:
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise ValueError(f"{path}: a tensor record has no name")
        decoded[record["name"]] = _decode(record, reader, decoded)
    state = {k: v.clone() for k, v in decoded.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit the model ({str(error).strip().splitlines()[-1].strip()})") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path} does not match the model (missing: {result.missing_keys[:5]}, "
                         f"unexpected: {result.unexpected_keys[:5]}); build the same original architecture")
    return model


def _span_bytes(spec: dict | None) -> int:
    if not spec:
        return 0
    return sum(spec[key][1] for key in ("blob", "lengths") if key in spec)


def storage_table(path: str | os.PathLike) -> list[dict]:
    """Per-layer storage of an ``.ncz`` file in the format of Deep Compression's Tables 4 and 5.

    For each layer: its weights, the share kept by pruning, bits per kept weight and per
    index with fixed-width codes (P+Q) and as stored (P+Q+H), and the layer's size relative
    to float32, from the bytes the file really holds (the layer's codebook and bias included).
    """
    header, _ = read_records(path)
    layers: dict[str, dict] = {}
    for record in header["tensors"]:
        layer, _, field = record["name"].rpartition(".")
        entry = layers.setdefault(layer, {"bytes": 0, "params": 0, "raw_bits": 0})
        numel = int(np.prod(record["shape"])) if record["shape"] else 1
        stored = _span_bytes(record.get("index")) + _span_bytes(record.get("codes"))
        stored += record["values"][1] if "values" in record else 0
        stored += record["blob"][1] if "blob" in record else 0
        entry["bytes"] += stored
        if record["encoding"] == "mask-of":
            continue
        entry["params"] += numel
        if field in ("codes", "weight") and record["encoding"] != "raw":
            index = record.get("index")
            kept = record["codes"]["count"] if "codes" in record else record["values"][1] // 4
            value_bytes = _span_bytes(record.get("codes")) if "codes" in record else record["values"][1]
            q = int(np.ceil(np.log2(record["levels"]))) if "levels" in record else 32
            entry.update(weights=numel, kept=kept, weight_bits_pq=q, weight_bits_pqh=8 * value_bytes / max(kept, 1),
                         index_bits_pq=record["index_bits"] * index["count"] / max(kept, 1) if index else None,
                         index_bits_pqh=8 * _span_bytes(index) / max(kept, 1) if index else None)
            entry["raw_bits"] += kept * q + (index["count"] * record["index_bits"] if index else 0)
        elif field == "weight":
            entry.update(weights=numel, kept=numel, weight_bits_pq=32, weight_bits_pqh=32.0,
                         index_bits_pq=None, index_bits_pqh=None)
            entry["raw_bits"] += 32 * numel
        else:  # bias, codebook, other raw tensors
            entry["raw_bits"] += 8 * stored
            if field == "codebook":
                entry["params"] -= numel
    rows = []
    for layer, e in layers.items():
        if "weights" not in e:
            continue
        dense_bits = 32 * e["params"]
        rows.append({"layer": layer, "weights": e["weights"], "kept_percent": 100 * e["kept"] / e["weights"],
                     "weight_bits_pq": e["weight_bits_pq"], "weight_bits_pqh": e["weight_bits_pqh"],
                     "index_bits_pq": e["index_bits_pq"], "index_bits_pqh": e["index_bits_pqh"],
                     "rate_pq_percent": 100 * e["raw_bits"] / dense_bits,
                     "rate_pqh_percent": 100 * 8 * e["bytes"] / dense_bits, "bytes": e["bytes"]})
    return rows


def format_storage_table(rows: list[dict], total_bytes: int | None = None) -> str:
    """The rows of :func:`storage_table` as the seed's Tables 4/5."""
    def bits(v):
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    header = ["layer", "#weights", "weights% (P)", "weight bits (P+Q)", "weight bits (P+Q+H)", "index bits (P+Q)",
              "index bits (P+Q+H)", "compress rate (P+Q)", "compress rate (P+Q+H)"]
    lines = [header]
    for r in rows:
        lines.append([r["layer"], f"{r['weights']:,}", f"{r['kept_percent']:.1f}%", bits(r["weight_bits_pq"]),
                      bits(r["weight_bits_pqh"]), bits(r["index_bits_pq"]), bits(r["index_bits_pqh"]),
                      f"{r['rate_pq_percent']:.2f}%", f"{r['rate_pqh_percent']:.2f}%"])
    weights = sum(r["weights"] for r in rows)
    kept = sum(r["weights"] * r["kept_percent"] / 100 for r in rows)
    layer_bytes = sum(r["bytes"] for r in rows)
    lines.append(["total", f"{weights:,}", f"{100 * kept / weights:.1f}%", "", "", "", "", "",
                  f"{100 * 8 * layer_bytes / (32 * weights):.2f}%"])
    text = text_table(lines[0], lines[1:], rule=False, right=True)
    if total_bytes is not None:
        text += f"\nfile: {total_bytes:,} bytes (header, manifest and checksum included)"
    return text
