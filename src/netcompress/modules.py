"""Describing layers as JSON and building them back, for manifests and containers.

Only the classes listed here can be described or built (an allow-list), and every
field of a description is type-checked before anything is allocated, so a foreign
or corrupt manifest is refused with a sentence that names the layer and the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from .lowrank import LowRankConv2d, LowRankLinear
from .prune import MaskedConv2d, MaskedLinear
from .quantize import QuantizedConv2d, QuantizedLinear

__all__ = ["build", "describe"]

_MAX_DIM = 1 << 24
_MAX_ELEMENTS = 1 << 31


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def _conv_fields(m) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pair(m.kernel_size),
            "stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation)}


_FIELDS: dict[type, Callable[[nn.Module], dict]] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv2d: lambda m: {**_conv_fields(m), "groups": m.groups, "bias": m.bias is not None},
    LowRankLinear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "rank": m.rank,
                              "bias": m.up.bias is not None},
    LowRankConv2d: lambda m: {**_conv_fields(m.down), "in_channels": m.in_channels, "out_channels": m.out_channels,
                              "rank": m.rank, "bias": m.up.bias is not None},
    QuantizedLinear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "levels": m.levels,
                                "group_size": m.group_size, "bias": m.bias is not None, "masked": m.mask is not None},
    QuantizedConv2d: lambda m: {**_conv_fields(m), "groups": m.groups, "levels": m.levels, "group_size": m.group_size,
                                "bias": m.bias is not None, "masked": m.mask is not None},
    nn.BatchNorm1d: lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                               "affine": m.affine, "track_running_stats": m.track_running_stats},
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
    if cls in (nn.Linear, MaskedLinear, QuantizedLinear, LowRankLinear):
        size = (_int(entry, "in_features", where), _int(entry, "out_features", where))
        if size[0] * size[1] > _MAX_ELEMENTS:
            raise ValueError(f"{where}: a {size[1]}×{size[0]} layer is larger than netcompress will build")
        if cls is LowRankLinear:
            return LowRankLinear(*size, _int(entry, "rank", where), _bool(entry, "bias", where))
        if cls is QuantizedLinear:
            return QuantizedLinear(*size, _levels(entry, where), _int(entry, "group_size", where),
                                   _bool(entry, "bias", where), _bool(entry, "masked", where))
        return cls(*size, bias=_bool(entry, "bias", where))
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
        return QuantizedConv2d(args["in_channels"], args["out_channels"], args["kernel_size"],
                               _levels(entry, where), _int(entry, "group_size", where), args["stride"],
                               args["padding"], args["dilation"], groups, bias, _bool(entry, "masked", where))
    return cls(**args, groups=groups, bias=bias)
