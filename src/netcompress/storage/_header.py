"""The ``.ncz`` layout's constants, and reading its header as hostile input.

Every count, shape, rank, span and stream length a header claims is checked against the
caps below and against the bytes that hold it, and every layer the manifest would build is
sized on the ``meta`` device, all before anything is allocated (see :mod:`.container`).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib

import torch

from netcompress._core.description import build

__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "INDEX_BITS",
    "MAGIC",
    "MAX_ELEMENTS",
    "MAX_HEADER_BYTES",
    "MAX_NAME",
    "MAX_RANK",
    "MAX_RECORDS",
    "PREFIX",
    "VERSION",
    "check_manifest_sizes",
    "code_width",
    "read_header",
    "read_records",
]

MAGIC = b"\x89NCZ\r\n\x1a\n"
VERSION = 2
PREFIX = len(MAGIC) + 8  # magic, version, flags, header length
_KNOWN_DTYPES = ("float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2", "complex64",
                 "complex128", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool")
DTYPES = {name: getattr(torch, name) for name in _KNOWN_DTYPES if hasattr(torch, name)}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_BITS = range(1, 13)

# Caps on what a header may claim (far above any real model, far below what would exhaust memory).
MAX_HEADER_BYTES = 64 << 20  # decompressed JSON header
MAX_RECORDS = 1 << 20
MAX_RANK = 8
MAX_ELEMENTS = 1 << 34  # per tensor; the bytes that hold a tensor bound it much more tightly
MAX_NAME = 1024


def code_width(alphabet: int) -> int:
    """Bits of one fixed-width code for ``alphabet`` symbols."""
    return max(1, math.ceil(math.log2(max(alphabet, 2))))


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
        if spec.get("width") != code_width(alphabet):
            raise ValueError(f"{source} is corrupt: the packed stream of {what} has the wrong width")
        count = _count(spec.get("count"), f"the count of {what}", source, 8 * blob[1] // code_width(alphabet))
        if blob[1] != -(-count * code_width(alphabet) // 8):
            raise ValueError(f"{source} is corrupt: the packed stream of {what} is not {count:,} symbols long")
        return {"coder": "packed", "count": count, "blob": blob, "width": code_width(alphabet)}
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
    dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
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
        if bits not in INDEX_BITS:
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


def read_header(handle, source: str) -> tuple[dict, list[dict], int, int]:
    """Magic, version, checksum (streamed), bounded header; returns (header, checked records, payload start, size)."""
    size = os.fstat(handle.fileno()).st_size
    start = handle.read(PREFIX)
    if len(start) < PREFIX or start[: len(MAGIC)] != MAGIC or size < PREFIX + 4:
        raise ValueError(f"{source} is not a netcompress container (no .ncz magic number)")
    version, _, header_length = struct.unpack_from("<HHI", start, len(MAGIC))
    if version != VERSION:
        raise ValueError(f"{source} is container version {version}; this netcompress reads version {VERSION}, "
                         "so save the model again with it")
    crc = zlib.crc32(start)
    handle.seek(PREFIX)
    for remaining in range(size - 4 - PREFIX, 0, -(1 << 20)):
        crc = zlib.crc32(handle.read(min(remaining, 1 << 20)), crc)
    if handle.read(4) != struct.pack("<I", crc):
        raise ValueError(f"{source} is truncated or corrupt: its checksum does not match")
    if PREFIX + header_length > size - 4:
        raise ValueError(f"{source} is corrupt: its header is longer than the file")
    handle.seek(PREFIX)
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
    payload_start = PREFIX + header_length
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
            header, records, _, _ = read_header(handle, str(path))
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error})") from None
    return header, records


def check_manifest_sizes(manifest_record: object, records: list[dict], source: str) -> None:
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
