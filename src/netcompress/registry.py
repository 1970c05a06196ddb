"""The registry: compression methods, and the families that run them inside ``compress``.

A method is one function, registered where it is written::

    @register("magnitude", family="layer", accepts=PRUNABLE, check=check_magnitude, example={"sparsity": 0.5})
    def magnitude(layer, moments=None, *, sparsity: float, norm: int = 1) -> nn.Module: ...

and from then on ``compress(model, method="magnitude", sparsity=0.9)``, the command line's
``--method``, recipes and the contract test (which runs every method with its ``example``
settings) know it. Its settings are its keyword-only parameters (or ``settings=``), and their
annotations are the schema every value is checked against, in one place (:meth:`Method.check_types`).

A family says what ``compress`` does around a method's function (see :class:`netcompress.compress.Family`):

* ``"layer"``: ``fn(layer, moments_or_None, **settings) -> module``, one layer at a time
  (pruning masks, quantization); statistics optional.
* ``"lowrank"``: ``fn(layer, moments, rank, **settings) -> Factorization``; sized by
  ``rank``/``keep``/``energy``/``budget`` (:mod:`netcompress.lowrank.family`).
* ``"structural"``: ``fn(model, graph, groups, stats, **settings) -> {name: module}``; removes
  whole units or channels, so it also resizes the layers that read them (:mod:`netcompress.prune.family`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

from netcompress._core.layers import DENSE

if TYPE_CHECKING:
    from netcompress.compress import Family

__all__ = ["FAMILIES", "METHODS", "Method", "accepted_types", "check_value", "method", "register", "register_family", "unregister"]


F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Method:
    """A registered method: its family, function, settings schema and the layer types it takes.

    Hooks, all optional, all run before any pass over data:

    * ``validate(**settings)``: the settings as a whole (ranges, choices, combinations);
    * ``check(layer, **settings)``: the settings against one layer (a group size that must
      divide its width); a layer of the default selection that does not fit is left dense;
    * ``prepare(layers, per_layer)``: turn the settings into each layer's arguments, where a
      setting couples layers (magnitude pruning's global threshold).

    A low-rank method whose factors are not two matrices (a separable convolution) gives
    ``rank_cost(layer) -> (parameters per rank, largest rank)`` for the family's sizing.
    """

    name: str
    family: str
    fn: Callable
    settings: tuple[str, ...] = ()
    accepts: tuple[type[nn.Module], ...] = DENSE
    needs_stats: bool = False
    check: Callable | None = None
    validate: Callable | None = None
    prepare: Callable | None = None
    example: Mapping[str, Any] = field(default_factory=dict)
    rank_cost: Callable | None = None

    def schema(self) -> dict[str, tuple[type, ...] | None]:
        """Setting → the Python types it takes (``None``: not checked), from the annotations."""
        annotations: dict[str, object] = {}
        for hook in (self.check, self.validate, self.fn):  # the function's own annotation wins
            if hook is not None:
                for key, p in inspect.signature(hook).parameters.items():
                    if p.annotation is not inspect.Parameter.empty:
                        annotations[key] = p.annotation
        return {key: accepted_types(annotations[key]) if key in annotations else None for key in self.settings}

    def check_types(self, settings: Mapping[str, object], where: str = "") -> None:
        """Refuse a setting this method does not take or a value of the wrong type; ``where`` prefixes errors."""
        unknown = sorted(set(settings) - set(self.settings))
        prefix = f"{where}: " if where else ""
        if unknown:
            accepted = ", ".join(self.settings) or "none"
            raise TypeError(f"{prefix}method {self.name!r} does not take {', '.join(unknown)} (its settings: {accepted})")
        schema = self.schema()
        for key, value in settings.items():
            try:
                check_value(key, value, schema[key])
            except ValueError as error:
                raise ValueError(f"{prefix}{error}") from None


METHODS: dict[str, Method] = {}
FAMILIES: dict[str, Family] = {}


def _keyword_settings(fn: Callable) -> tuple[str, ...]:
    return tuple(k for k, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY)


def register(
    name: str,
    *,
    family: str,
    accepts: tuple[type[nn.Module], ...] = DENSE,
    needs_stats: bool = False,
    settings: tuple[str, ...] | None = None,
    check: Callable | None = None,
    validate: Callable | None = None,
    prepare: Callable | None = None,
    example: Mapping[str, Any] | None = None,
    rank_cost: Callable | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as method ``name`` of ``family`` (see the module docstring).

    ``settings`` defaults to the function's keyword-only parameters; ``example`` are settings
    (with a size for low-rank methods) that the contract test runs it with. A name already
    registered is refused: :func:`unregister` it first.
    """

    def decorate(fn: F) -> F:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered; unregister it first or pick another name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a method needs a non-empty name, got {name!r}")
        METHODS[name] = Method(name, family, fn, _keyword_settings(fn) if settings is None else tuple(settings),
                               tuple(accepts), needs_stats, check, validate, prepare, dict(example or {}), rank_cost)
        return fn

    return decorate


def unregister(name: str) -> Method:
    """Remove method ``name`` (a plug-in's or a test's) and return it."""
    if name not in METHODS:
        raise ValueError(f"no method named {name!r} is registered")
    return METHODS.pop(name)


def register_family(family: Family) -> Family:
    """Make ``family`` (an object with ``name``, ``sizing`` and ``compress(request)``) available to methods."""
    if family.name in FAMILIES:
        raise ValueError(f"a family named {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def method(name: str, settings: Mapping[str, object], where: str = "") -> Method:
    """The registered method ``name``, after checking that it takes every given setting with the right type."""
    if name not in METHODS:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown method {name!r}; choose one of {', '.join(METHODS)}")
    chosen = METHODS[name]
    if chosen.family not in FAMILIES:
        raise ValueError(f"method {name!r} belongs to family {chosen.family!r}, which is not registered")
    chosen.check_types(settings, where)
    return chosen


# ---- the schema: annotations → accepted types ------------------------------------------------------------------------

_TYPE_NAMES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}


def accepted_types(annotation: object) -> tuple[type, ...] | None:
    """Python types a setting annotated ``annotation`` takes (``None``: unknown, not checked)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kinds: tuple[type, ...] = ()
    for part in text.split("|"):
        known = _TYPE_NAMES.get(part.strip())
        if known is None:
            return None
        kinds += known
    return kinds


def _describe(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return " or ".join(names[k] for k in dict.fromkeys(kinds) if not (k is int and float in kinds))


def check_value(key: str, value: object, kinds: tuple[type, ...] | None, per_layer: bool = True) -> None:
    """Refuse ``value`` unless it is one of ``kinds`` (or, with ``per_layer``, a dict of layer name → such a value)."""
    if per_layer and isinstance(value, Mapping):
        for layer, item in value.items():
            if not isinstance(layer, str):
                raise ValueError(f"{key} maps layer names to values, got the key {layer!r}")
            check_value(f"{key} of layer {layer!r}", item, kinds, per_layer=False)
        return
    if kinds is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"{key} must be {_describe(kinds)}, got {value!r}")

