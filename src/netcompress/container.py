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
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._text import text_table
from ._transaction import all_or_nothing
from .codec import code_lengths, huffman_decode, huffman_encode, index_mask, pack_fixed, relative_indices, unpack_fixed
from .io import apply_manifest, atomic_write_bytes, manifest
from .modules import build
from .prune import MaskedConv2d, MaskedLinear
from .quantize import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear

__all__ = ["MAGIC", "format_storage_table", "load_compressed", "read_records", "save_compressed", "storage_table"]

MAGIC = b"\x89NCZ\r\n\x1a\n"
VERSION = 2
_PREFIX = len(MAGIC) + 8
_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2", "complex64",
                "complex128", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool")
_DTYPES = {name: getattr(torch, name) for name in _DTYPE_NAMES if hasattr(torch, name)}
_NAMES = {v: k for k, v in _DTYPES.items()}
_INDEX_BITS = range(1, 13)
# Caps on what a header may claim (far above any real model, far below what would exhaust memory).
MAX_HEADER_BYTES = 64 << 20  # decompressed JSON header
MAX_RECORDS = 1 << 20
MAX_RANK = 8
MAX_ELEMENTS = 1 << 34  # per tensor; the bytes that hold a tensor bound it much more tightly
MAX_NAME = 1024
_QUANTIZED = (QuantizedLinear, QuantizedConv2d, QuantizedEmbedding)


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


def _width(alphabet: int) -> int:
    return max(1, math.ceil(math.log2(max(alphabet, 2))))


def _stream(symbols: np.ndarray, alphabet: int, payload: _Payload) -> dict:
    """Store ``symbols`` (< alphabet) Huffman coded or bit-packed, whichever is smaller."""
    packed = pack_fixed(symbols, _width(alphabet))
    if len(symbols):
        lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
        coded, bit_count = huffman_encode(symbols, lengths)
        if len(coded) + alphabet < len(packed):
            return {"coder": "huffman", "count": len(symbols), "bits": bit_count, "alphabet": alphabet,
                    "lengths": payload.add(lengths.tobytes()), "blob": payload.add(coded)}
    return {"coder": "packed", "count": len(symbols), "width": _width(alphabet), "alphabet": alphabet,
            "blob": payload.add(packed)}


def _coded_bits(symbols: np.ndarray, alphabet: int) -> int:
    if not len(symbols):
        return 0
    counts = np.bincount(symbols, minlength=alphabet)
    return int((counts * code_lengths(counts)).sum()) + 8 * alphabet


def _index_stream(mask: np.ndarray, payload: _Payload) -> tuple[dict, int]:
    positions = np.flatnonzero(mask)
    best = min(_INDEX_BITS, key=lambda b: _coded_bits(relative_indices(positions, b, len(mask)), (1 << b) + 1))
    return _stream(relative_indices(positions, best, len(mask)), (1 << best) + 1, payload), best


def _bytes(tensor: torch.Tensor, name: str) -> tuple[str, bytes]:
    array = tensor.detach().cpu().contiguous().reshape(-1)  # reshape: a 0-d tensor cannot be viewed as bytes
    if array.dtype not in _NAMES or array.is_sparse or array.is_quantized:
        raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which the container does not store; "
                         "convert it to a plain dtype first")
    return _NAMES[array.dtype], array.view(torch.uint8).numpy().tobytes() if array.numel() else b""


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
        if isinstance(module, _QUANTIZED):
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

def _count(value: object, what: str, source: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise ValueError(f"{source} is corrupt: {what} must be an integer from 0 to {high:,}, got {str(value)[:40]}")
    return value


def _span(value: object, what: str, source: str, size: int) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError(f"{source} is corrupt: the data of {what} has no [offset, length] span")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value) or sum(value) > size:
        raise ValueError(f"{source}: the data of {what} lies outside the file")
    return value[0], value[1]


def _check_stream(spec: object, alphabet: int, what: str, source: str, size: int) -> dict:
    """A symbol stream whose count, alphabet and lengths agree with the bytes that hold it."""
    if not isinstance(spec, dict) or spec.get("alphabet") != alphabet:
        raise ValueError(f"{source} is corrupt: the stream of {what} does not have its {alphabet}-symbol alphabet")
    blob = _span(spec.get("blob"), what, source, size)
    if spec.get("coder") == "packed":
        if spec.get("width") != _width(alphabet):
            raise ValueError(f"{source} is corrupt: the packed stream of {what} has the wrong width")
        count = _count(spec.get("count"), f"the count of {what}", source, 8 * blob[1] // _width(alphabet))
        if blob[1] != -(-count * _width(alphabet) // 8):
            raise ValueError(f"{source} is corrupt: the packed stream of {what} is not {count:,} symbols long")
        return {"coder": "packed", "count": count, "blob": blob, "width": _width(alphabet)}
    if spec.get("coder") == "huffman":
        lengths = _span(spec.get("lengths"), what, source, size)
        bits = _count(spec.get("bits"), f"the bit count of {what}", source, 8 * blob[1])
        count = _count(spec.get("count"), f"the count of {what}", source, bits)  # every code word is ≥ 1 bit
        if lengths[1] != alphabet or blob[1] != -(-bits // 8):
            raise ValueError(f"{source} is corrupt: the Huffman stream of {what} does not fit its data")
        return {"coder": "huffman", "count": count, "blob": blob, "lengths": lengths, "bits": bits}
    raise ValueError(f"{source} is corrupt: the stream of {what} has an unknown coder")


def _check_record(record: object, earlier: dict[str, dict], source: str, size: int) -> dict:
    """A record whose name, dtype, shape and data agree; its size is bounded by the bytes holding it."""
    if not isinstance(record, dict) or not isinstance(record.get("name"), str) or not 0 < len(record["name"]) <= MAX_NAME:
        raise ValueError(f"{source} is corrupt: a tensor record has no valid name")
    name = record["name"]
    what = f"tensor {name!r}"
    if name in earlier:
        raise ValueError(f"{source} is corrupt: {what} is stored twice")
    dtype_name, shape, kind = record.get("dtype"), record.get("shape"), record.get("encoding")
    dtype = _DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise ValueError(f"{source}: {what} has dtype {str(record.get('dtype'))[:40]!r}, which this netcompress does not know")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise ValueError(f"{source} is corrupt: {what} must have a shape of at most {MAX_RANK} dimensions")
    numel = math.prod(_count(d, f"a dimension of {what}", source, MAX_ELEMENTS) for d in shape)
    if numel > MAX_ELEMENTS:
        raise ValueError(f"{source} is corrupt: {what} claims {numel:,} elements, more than {MAX_ELEMENTS:,}")
    item = torch.empty((), dtype=dtype).element_size()
    checked = {"name": name, "dtype": dtype, "shape": shape, "numel": numel, "encoding": kind}
    if kind == "raw":
        checked["blob"] = _span(record.get("blob"), what, source, size)
        if checked["blob"][1] != numel * item:
            raise ValueError(f"{source} is corrupt: {what} has {checked['blob'][1]:,} bytes, not the {numel * item:,} its shape needs")
    elif kind == "mask-of":
        of = earlier.get(record["of"]) if isinstance(record.get("of"), str) else None
        if dtype is not torch.bool or of is None or of["encoding"] not in ("sparse-codes", "sparse-float") \
                or of["numel"] != numel or of.get("mask_of"):
            raise ValueError(f"{source} is corrupt: mask {name!r} does not follow the sparse tensor it belongs to")
        of["mask_of"], checked["of"] = name, of["name"]
    elif kind in ("codes", "sparse-codes", "sparse-float"):
        if kind != "sparse-float":
            levels = record.get("levels")
            if dtype is not torch.uint8 or isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 256:
                raise ValueError(f"{source} is corrupt: the codes {name!r} must be uint8 with 1 to 256 levels")
            checked["levels"] = levels
        if kind == "codes":
            checked["codes"] = _check_stream(record.get("codes"), levels, what, source, size)
            if checked["codes"]["count"] != numel:
                raise ValueError(f"{source} is corrupt: {what} has {checked['codes']['count']:,} codes for {numel:,} entries")
            return checked
        bits = record.get("index_bits")
        if bits not in _INDEX_BITS:
            raise ValueError(f"{source} is corrupt: {what} has an invalid index width")
        index = checked["index"] = _check_stream(record.get("index"), (1 << bits) + 1, what, source, size)
        checked["index_bits"] = bits
        if numel >= (index["count"] + 1) << bits:  # the index stream covers all but < 2^bits trailing entries
            raise ValueError(f"{source} is corrupt: {what} claims {numel:,} entries, more than its index stream covers")
        if kind == "sparse-codes":
            checked["codes"] = _check_stream(record.get("codes"), levels, what, source, size)
            kept = checked["codes"]["count"]
        else:
            checked["values"] = _span(record.get("values"), what, source, size)
            kept, rest = divmod(checked["values"][1], item)
            if rest:
                raise ValueError(f"{source} is corrupt: the values of {what} are not whole {record['dtype']} numbers")
        if kept > min(index["count"], numel):
            raise ValueError(f"{source} is corrupt: {what} has {kept:,} values for at most {index['count']:,} indices")
    else:
        raise ValueError(f"{source} is corrupt: {what} has an unknown encoding {str(kind)[:40]!r}")
    return checked


def _read_header(handle, source: str) -> tuple[dict, list[dict], int, int]:
    """Magic, version, checksum (streamed), bounded header; returns (header, checked records, payload start, size)."""
    size = os.fstat(handle.fileno()).st_size
    start = handle.read(_PREFIX)
    if len(start) < _PREFIX or start[: len(MAGIC)] != MAGIC or size < _PREFIX + 4:
        raise ValueError(f"{source} is not a netcompress container (no .ncz magic number)")
    version, _, header_length = struct.unpack_from("<HHI", start, len(MAGIC))
    if version != VERSION:
        raise ValueError(f"{source} is container version {version}; this netcompress reads version {VERSION}, "
                         "so save the model again with it")
    crc = zlib.crc32(start)
    handle.seek(_PREFIX)
    for remaining in range(size - 4 - _PREFIX, 0, -(1 << 20)):
        crc = zlib.crc32(handle.read(min(remaining, 1 << 20)), crc)
    if handle.read(4) != struct.pack("<I", crc):
        raise ValueError(f"{source} is truncated or corrupt: its checksum does not match")
    if _PREFIX + header_length > size - 4:
        raise ValueError(f"{source} is corrupt: its header is longer than the file")
    handle.seek(_PREFIX)
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(handle.read(header_length), MAX_HEADER_BYTES + 1)
        if len(text) > MAX_HEADER_BYTES or not inflate.eof:
            raise ValueError(f"{source} is corrupt: its header does not end within {MAX_HEADER_BYTES:,} bytes")
        header = json.loads(text)
    except (zlib.error, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ValueError(f"{source} is corrupt: its header cannot be read") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise ValueError(f"{source} is corrupt: its header has no tensor records")
    if len(header["tensors"]) > MAX_RECORDS:
        raise ValueError(f"{source} is corrupt: it claims {len(header['tensors']):,} tensors, more than {MAX_RECORDS:,}")
    payload_start = _PREFIX + header_length
    payload_size = size - 4 - payload_start
    records: dict[str, dict] = {}
    for record in header["tensors"]:
        checked = _check_record(record, records, source, payload_size)
        records[checked["name"]] = checked
    return header, list(records.values()), payload_start, payload_size


def read_records(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """The checked header of an ``.ncz`` file and its tensor records (name, dtype, shape, encoding, spans).

    Reads the header only (the payload is checksummed while streaming, not kept).
    """
    try:
        with open(path, "rb") as handle:
            header, records, _, _ = _read_header(handle, str(path))
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error})") from None
    return header, records


def _check_manifest_sizes(manifest_record: object, records: list[dict], source: str) -> None:
    """Size every layer the manifest would build on the ``meta`` device and compare with the records.

    A forged manifest (a rank of 2^24, a 10^10-row table) is refused here, before
    ``apply_manifest`` allocates the layer.
    """
    layers = manifest_record.get("layers") if isinstance(manifest_record, dict) else None
    if not isinstance(layers, dict):
        return  # apply_manifest refuses it with its own message
    shapes = {r["name"]: r["shape"] for r in records}
    for name, entry in layers.items():
        if not isinstance(name, str):
            continue
        try:
            with torch.device("meta"):
                module = build(entry, f"{source} (manifest), layer {name!r}")
        except (TypeError, RuntimeError, OverflowError) as error:
            raise ValueError(f"{source} (manifest), layer {name!r} cannot be built ({str(error)[:80]})") from None
        for key, tensor in module.state_dict().items():
            stored = shapes.get(f"{name}.{key}")
            if stored != list(tensor.shape):
                raise ValueError(f"{source}: layer {name!r} of its manifest needs {key} of shape "
                                 f"{list(tensor.shape)}, but the file stores {stored}")


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
        if "levels" in record and isinstance(layer, _QUANTIZED) and record["levels"] > layer.levels:
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
        with open(path, "rb") as handle:
            header, records, start, _ = _read_header(handle, source)
            _check_manifest_sizes(header.get("manifest"), records, source)
            with all_or_nothing(model):
                _load_into(model, header, records, _Reader(handle, start), source)
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error})") from None
    return model


# ---- storage tables ------------------------------------------------------------------------------------------------

def _stream_bytes(spec: dict | None) -> int:
    return 0 if not spec else spec["blob"][1] + (spec["lengths"][1] if "lengths" in spec else 0)


def storage_table(path: str | os.PathLike) -> list[dict]:
    """Per-layer storage of an ``.ncz`` file in the format of Deep Compression's Tables 4 and 5.

    For each layer: its weights, the share kept by pruning, bits per kept weight and per
    index with fixed-width codes (P+Q) and as stored (P+Q+H), the bytes the file holds for
    the layer (codes, indices, scales, zero points, codebook and bias) and its size relative
    to float32 (Han, Mao and Dally, "Deep Compression", ICLR 2016).
    """
    _, records = read_records(path)
    layers: dict[str, dict] = {}
    for record in records:
        layer, _, field = record["name"].rpartition(".")
        entry = layers.setdefault(layer, {"bytes": 0, "params": 0, "raw_bits": 0})
        item = torch.empty((), dtype=record["dtype"]).element_size()
        values = record["values"][1] if "values" in record else 0
        stored = _stream_bytes(record.get("index")) + _stream_bytes(record.get("codes")) + values
        stored += record["blob"][1] if "blob" in record else 0
        entry["bytes"] += stored
        if record["encoding"] == "mask-of":
            continue
        if field in ("codes", "weight") and record["encoding"] != "raw":
            index = record.get("index")
            kept = record["codes"]["count"] if "codes" in record else values // item
            q = _width(record["levels"]) if "levels" in record else 8 * item
            entry.update(weights=record["numel"], kept=kept, weight_bits_pq=q,
                         weight_bits_pqh=8 * (_stream_bytes(record.get("codes")) or values) / max(kept, 1),
                         index_bits_pq=record["index_bits"] * index["count"] / max(kept, 1) if index else None,
                         index_bits_pqh=8 * _stream_bytes(index) / max(kept, 1) if index else None)
            entry["raw_bits"] += kept * q + (index["count"] * record["index_bits"] if index else 0)
            entry["params"] += record["numel"]
        elif field == "weight":
            entry.update(weights=record["numel"], kept=record["numel"], weight_bits_pq=8 * item,
                         weight_bits_pqh=8.0 * item, index_bits_pq=None, index_bits_pqh=None)
            entry["raw_bits"] += 8 * stored
            entry["params"] += record["numel"]
        else:  # bias, scales, zero points, codebook, BatchNorm statistics: stored as they are
            entry["raw_bits"] += 8 * stored
            entry["params"] += record["numel"] if field == "bias" else 0
    rows = []
    for layer, e in layers.items():
        if "weights" not in e:
            continue
        dense_bits = 32 * e["params"]
        rows.append({"layer": layer, "weights": e["weights"], "kept_percent": 100 * e["kept"] / max(e["weights"], 1),
                     "weight_bits_pq": e["weight_bits_pq"], "weight_bits_pqh": e["weight_bits_pqh"],
                     "index_bits_pq": e["index_bits_pq"], "index_bits_pqh": e["index_bits_pqh"],
                     "rate_pq_percent": 100 * e["raw_bits"] / max(dense_bits, 1),
                     "rate_pqh_percent": 100 * 8 * e["bytes"] / max(dense_bits, 1), "bytes": e["bytes"]})
    return rows


def format_storage_table(rows: list[dict], total_bytes: int | None = None) -> str:
    """The rows of :func:`storage_table` as the seed's Tables 4/5, with the bytes each layer takes."""
    def bits(v):
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    header = ["layer", "#weights", "weights% (P)", "weight bits (P+Q)", "weight bits (P+Q+H)", "index bits (P+Q)",
              "index bits (P+Q+H)", "bytes", "compress rate (P+Q)", "compress rate (P+Q+H)"]
    lines = [header]
    for r in rows:
        lines.append([r["layer"], f"{r['weights']:,}", f"{r['kept_percent']:.1f}%", bits(r["weight_bits_pq"]),
                      bits(r["weight_bits_pqh"]), bits(r["index_bits_pq"]), bits(r["index_bits_pqh"]),
                      f"{r['bytes']:,}", f"{r['rate_pq_percent']:.2f}%", f"{r['rate_pqh_percent']:.2f}%"])
    weights = sum(r["weights"] for r in rows)
    kept = sum(r["weights"] * r["kept_percent"] / 100 for r in rows)
    layer_bytes = sum(r["bytes"] for r in rows)
    lines.append(["total", f"{weights:,}", f"{100 * kept / max(weights, 1):.1f}%", "", "", "", "",
                  f"{layer_bytes:,}", "", f"{100 * 8 * layer_bytes / max(32 * weights, 1):.2f}%"])
    text = text_table(lines[0], lines[1:], rule=False, right=True)
    if total_bytes is not None:
        text += f"\nfile: {total_bytes:,} bytes (header, manifest and checksum included)"
    return text
