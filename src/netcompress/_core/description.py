"""Layers as JSON descriptions and back: the allow-list of what a manifest may build.

A layer class netcompress writes describes itself (``describe()`` → fields) and builds itself
back (``from_description(entry)``), and is registered with :func:`describable`; torch's own
layers that manifests name are registered here. Only registered classes can be described or
built, and every field is type-checked through :class:`Entry` before anything is allocated,
so a foreign or corrupt manifest is refused with a sentence that names the layer and the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ["Entry", "build", "check_type", "conv_fields", "describable", "describe", "linear_fields", "replacement_types"]

_MAX_DIM = 1 << 24
_MAX_ELEMENTS = 1 << 31

T = TypeVar("T", bound=type)


class Entry:
    """One layer's description, read field by field; every error names the layer (``where``) and the field."""

    def __init__(self, entry: dict, where: str):
        self.entry, self.where = entry, where

    def get(self, key: str) -> object:
        return self.entry.get(key)

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{self.where}: {message}")

    def integer(self, key: str, low: int = 1, value: object = None) -> int:
        value = self.entry.get(key) if value is None else value
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_DIM:
            raise self.fail(f"field {key!r} must be an integer from {low} to {_MAX_DIM}, got {value!r}")
        return value

    def integers(self, key: str, count: int, low: int) -> tuple[int, ...]:
        value = self.entry.get(key)
        if not (isinstance(value, list) and len(value) == count):
            raise self.fail(f"field {key!r} must be a list of {count} integers, got {value!r}")
        return tuple(self.integer(key, low, v) for v in value)

    def flag(self, key: str) -> bool:
        value = self.entry.get(key)
        if not isinstance(value, bool):
            raise self.fail(f"field {key!r} must be true or false, got {value!r}")
        return value

    def number(self, key: str, optional: bool = False) -> float | None:
        value = self.entry.get(key)
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise self.fail(f"field {key!r} must be a non-negative number, got {value!r}")
        return float(value)

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.entry.get(key)
        if value not in options:
            raise self.fail(f"field {key!r} must be one of {', '.join(options)}, got {value!r}")
        return value

    def refuse_larger(self, elements: int, what: str) -> None:
        if elements > _MAX_ELEMENTS:
            raise self.fail(f"{what} is larger than netcompress will build")

    def linear_size(self) -> tuple[int, int]:
        """``(in_features, out_features)``, refused past the size cap."""
        size = (self.integer("in_features"), self.integer("out_features"))
        self.refuse_larger(size[0] * size[1], f"a {size[1]}×{size[0]} layer")
        return size

    def conv_args(self) -> dict:
        """Channels, kernel, stride, padding and dilation of a convolution, refused past the size cap."""
        args = {"in_channels": self.integer("in_channels"), "out_channels": self.integer("out_channels"),
                "kernel_size": self.integers("kernel_size", 2, 1), "stride": self.integers("stride", 2, 1),
                "padding": self.integers("padding", 2, 0), "dilation": self.integers("dilation", 2, 1)}
        self.refuse_larger(args["in_channels"] * args["out_channels"] * math.prod(args["kernel_size"]),
                           "this convolution")
        return args


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def linear_fields(m: nn.Module) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features}


def conv_fields(m: nn.Module) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pair(m.kernel_size),
            "stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation)}


# type name → (class, describe, build); exact classes only: a subclass is a different layer.
_KNOWN: dict[str, tuple[type, Callable[[nn.Module], dict], Callable[[Entry], nn.Module]]] = {}


def _register(cls: type, describe_fn: Callable[[nn.Module], dict], build_fn: Callable[[Entry], nn.Module]) -> None:
    if cls.__name__ in _KNOWN and _KNOWN[cls.__name__][0] is not cls:
        raise ValueError(f"another layer class named {cls.__name__!r} is already describable")
    _KNOWN[cls.__name__] = (cls, describe_fn, build_fn)


def describable(cls: T) -> T:
    """Class decorator: ``cls`` (with ``describe()`` and classmethod ``from_description(entry)``) may be saved and built."""
    _register(cls, cls.describe, cls.from_description)
    return cls


def replacement_types() -> tuple[type, ...]:
    """The layer classes netcompress (or a plug-in) puts in a model: every :func:`describable` class."""
    return tuple(cls for cls, describe_fn, _ in _KNOWN.values() if describe_fn is getattr(cls, "describe", None))


def describe(module: nn.Module) -> dict | None:
    """``{"type": ..., fields...}`` for a describable layer, else ``None``."""
    known = _KNOWN.get(type(module).__name__)
    if known is None or known[0] is not type(module):
        return None
    return {"type": type(module).__name__, **known[1](module)}


def check_type(entry: object, where: str) -> None:
    """Raise ``ValueError`` unless ``entry`` is a description of a registered layer type."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) or entry["type"] not in _KNOWN:
        raise ValueError(f"{where}: unknown layer type; expected one of {', '.join(sorted(_KNOWN))}")


def build(entry: object, where: str) -> nn.Module:
    """An uninitialised layer from its description; ``where`` names it in errors."""
    check_type(entry, where)
    return _KNOWN[entry["type"]][2](Entry(entry, where))


def _batch_norm_fields(m: nn.Module) -> dict:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _batch_norm(cls: type) -> Callable[[Entry], nn.Module]:
    return lambda e: cls(e.integer("num_features"), e.number("eps"), e.number("momentum", optional=True),
                         e.flag("affine"), e.flag("track_running_stats"))


_register(nn.Linear, lambda m: {**linear_fields(m), "bias": m.bias is not None},
          lambda e: nn.Linear(*e.linear_size(), bias=e.flag("bias")))
_register(nn.Conv2d, lambda m: {**conv_fields(m), "groups": m.groups, "bias": m.bias is not None},
          lambda e: nn.Conv2d(**e.conv_args(), groups=e.integer("groups"), bias=e.flag("bias")))
_register(nn.BatchNorm1d, _batch_norm_fields, _batch_norm(nn.BatchNorm1d))
_register(nn.BatchNorm2d, _batch_norm_fields, _batch_norm(nn.BatchNorm2d))
