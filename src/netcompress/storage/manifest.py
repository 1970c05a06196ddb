"""Describing layers as JSON and building them back, for manifests and containers.

Only the classes listed here can be described or built (an allow-list), and every
field of a description is type-checked before anything is allocated, so a foreign
or corrupt manifest is refused with a sentence that names the layer and the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from netcompress._layers import Padded
from netcompress.lowrank.modules import LowRankConv2d, LowRankLinear
from netcompress.prune.modules import MaskedConv2d, MaskedLinear
from netcompress.quantize.modules import SCHEMES, QuantizedConv2d, QuantizedEmbedding, QuantizedLinear

__all__ = ["build", "describe"]

_MAX_DIM = 1 << 24
PADDING_MODES = ("constant", "reflect", "replicate", "circular")
_MAX_ELEMENTS = 1 << 31


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def _conv_fields(m) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pair(m.kernel_size),
            "stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation)}


def _grid_fields(m) -> dict:
    """How a quantized layer stores its weights (see :mod:`netcompress.quantize`)."""
    return {"scheme": m.scheme, "bits": m.code_bits, "levels": m.levels, "group_size": m.group_size,
            "codebook_rows": m.codebook_rows, "per_tensor": m.per_tensor}


_FIELDS: dict[type, Callable[[nn.Module], dict]] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv2d: lambda m: {**_conv_fields(m), "groups": m.groups, "bias": m.bias is not None},
    LowRankLinear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "rank": m.rank,
                              "bias": m.up.bias is not None},
    LowRankConv2d: lambda m: {**_conv_fields(m.down), "in_channels": m.in_channels, "out_channels": m.out_channels,
                              "rank": m.rank, "bias": m.up.bias is not None},
    QuantizedLinear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, **_grid_fields(m),
                                "bias": m.bias is not None, "masked": m.mask is not None},
    QuantizedConv2d: lambda m: {**_conv_fields(m), "groups": m.groups, **_grid_fields(m),
                                "bias": m.bias is not None, "masked": m.mask is not None},
    QuantizedEmbedding: lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                                   "padding_idx": m.padding_idx, **_grid_fields(m)},
    nn.BatchNorm1d: lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                               "affine": m.affine, "track_running_stats": m.track_running_stats},
    # Its inner layer is described under "<name>.layer" and rebuilt after it.
    Padded: lambda m: {"padding": list(m.padding), "mode": m.mode},
}
_FIELDS[MaskedLinear] = _FIELDS[nn.Linear]
_FIELDS[MaskedConv2d] = _FIELDS[nn.Conv2d]
_FIELDS[nn.BatchNorm2d] = _FIELDS[nn.BatchNorm1d]
_TYPES = {cls.__name__: cls for cls in _FIELDS}


def describe(module: nn.Module) -> dict | None:
    """``{"type": ..., fields...}`` for a known layer type, else ``None``."""
    fields = _FIELDS.get(type(module))
    return None if fields is None else {"type": type(module).__name__, **fields(module)}


def _int(entry: dict, key: str, where: str, low: int = 1) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_DIM:
        raise ValueError(f"{where}: field {key!r} must be an integer from {low} to {_MAX_DIM}, got {value!r}")
    return value


def _pair_of(entry: dict, key: str, where: str, low: int) -> tuple[int, int]:
    value = entry.get(key)
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError(f"{where}: field {key!r} must be a list of two integers, got {value!r}")
    return tuple(_int({key: v}, key, where, low) for v in value)


def _levels(entry: dict, where: str) -> int:
    levels = _int(entry, "levels", where)
    if levels > 256:
        raise ValueError(f"{where}: field 'levels' must be at most 256 (8-bit codes), got {levels}")
    return levels


def _grid(entry: dict, where: str, rows: int, per_row: int) -> dict:
    """The checked storage fields of a quantized layer with ``rows`` output rows of ``per_row`` weights."""
    levels, scheme = _levels(entry, where), entry.get("scheme")
    if scheme not in SCHEMES:
        raise ValueError(f"{where}: field 'scheme' must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    bits = _int(entry, "bits", where)
    if bits > 8 or levels > 1 << bits or (scheme != "codebook" and levels != 1 << bits):
        raise ValueError(f"{where}: fields 'bits' {bits} and 'levels' {levels} disagree (levels ≤ 2^bits ≤ 256)")
    group_size, codebook_rows = _int(entry, "group_size", where), _int(entry, "codebook_rows", where)
    if per_row % group_size or codebook_rows > rows:
        raise ValueError(f"{where}: field 'group_size' {group_size} must divide the {per_row} weights of a row and "
                         f"'codebook_rows' {codebook_rows} must be at most the {rows} rows")
    return {"scheme": scheme, "bits": bits, "levels": levels, "group_size": group_size,
            "codebook_rows": codebook_rows, "per_tensor": _bool(entry, "per_tensor", where)}


def _bool(entry: dict, key: str, where: str) -> bool:
    value = entry.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: field {key!r} must be true or false, got {value!r}")
    return value


def _float(entry: dict, key: str, where: str, optional: bool = False) -> float | None:
    value = entry.get(key)
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: field {key!r} must be a non-negative number, got {value!r}")
    return float(value)


def _conv_args(entry: dict, where: str) -> dict:
    return {
        "in_channels": _int(entry, "in_channels", where), "out_channels": _int(entry, "out_channels", where),
        "kernel_size": _pair_of(entry, "kernel_size", where, 1), "stride": _pair_of(entry, "stride", where, 1),
        "padding": _pair_of(entry, "padding", where, 0), "dilation": _pair_of(entry, "dilation", where, 1),
    }


def build(entry: object, where: str) -> nn.Module:
    """An uninitialised module from a description; ``where`` names it in errors."""
    if not isinstance(entry, dict) or entry.get("type") not in _TYPES:
        raise ValueError(f"{where}: unknown layer type; expected one of {', '.join(sorted(_TYPES))}")
    kind = entry["type"]
    cls = _TYPES[kind]
    if cls is Padded:
        padding = entry.get("padding")
        if not (isinstance(padding, list) and len(padding) == 4):
            raise ValueError(f"{where}: field 'padding' must be a list of four integers, got {padding!r}")
        sides = [_int({"padding": p}, "padding", where, low=0) for p in padding]
        if entry.get("mode") not in PADDING_MODES:
            raise ValueError(f"{where}: field 'mode' must be one of {', '.join(PADDING_MODES)}, got {entry.get('mode')!r}")
        return Padded(tuple(sides), entry["mode"], nn.Identity())
    if cls in (nn.Linear, MaskedLinear, QuantizedLinear, LowRankLinear):
        size = (_int(entry, "in_features", where), _int(entry, "out_features", where))
        if size[0] * size[1] > _MAX_ELEMENTS:
            raise ValueError(f"{where}: a {size[1]}×{size[0]} layer is larger than netcompress will build")
        if cls is LowRankLinear:
            return LowRankLinear(*size, _int(entry, "rank", where), _bool(entry, "bias", where))
        if cls is QuantizedLinear:
            return QuantizedLinear(*size, **_grid(entry, where, size[1], size[0]), bias=_bool(entry, "bias", where),
                                   masked=_bool(entry, "masked", where))
        return cls(*size, bias=_bool(entry, "bias", where))
    if cls is QuantizedEmbedding:
        size = (_int(entry, "num_embeddings", where), _int(entry, "embedding_dim", where))
        if size[0] * size[1] > _MAX_ELEMENTS:
            raise ValueError(f"{where}: a {size[0]}×{size[1]} embedding table is larger than netcompress will build")
        padding_idx = entry.get("padding_idx")
        if padding_idx is not None:
            padding_idx = _int(entry, "padding_idx", where, low=0)
            if padding_idx >= size[0]:
                raise ValueError(f"{where}: field 'padding_idx' {padding_idx} is not a row of the {size[0]}-row table")
        return QuantizedEmbedding(*size, **_grid(entry, where, *size), padding_idx=padding_idx)
    if cls in (nn.BatchNorm1d, nn.BatchNorm2d):
        return cls(_int(entry, "num_features", where), _float(entry, "eps", where),
                   _float(entry, "momentum", where, optional=True), _bool(entry, "affine", where),
                   _bool(entry, "track_running_stats", where))
    args = _conv_args(entry, where)
    if args["in_channels"] * args["out_channels"] * math.prod(args["kernel_size"]) > _MAX_ELEMENTS:
        raise ValueError(f"{where}: this convolution is larger than netcompress will build")
    bias = _bool(entry, "bias", where)
    if cls is LowRankConv2d:
        return LowRankConv2d(args["in_channels"], args["out_channels"], args["kernel_size"],
                             _int(entry, "rank", where), args["stride"], args["padding"], args["dilation"], bias)
    groups = _int(entry, "groups", where)
    if cls is QuantizedConv2d:
        if args["in_channels"] % groups or args["out_channels"] % groups:
            raise ValueError(f"{where}: field 'groups' {groups} must divide in_channels and out_channels")
        per_row = args["in_channels"] // groups * math.prod(args["kernel_size"])
        return QuantizedConv2d(args["in_channels"], args["out_channels"], args["kernel_size"],
                               **_grid(entry, where, args["out_channels"], per_row), stride=args["stride"],
                               padding=args["padding"], dilation=args["dilation"], groups=groups, bias=bias,
                               masked=_bool(entry, "masked", where))
    return cls(**args, groups=groups, bias=bias)
