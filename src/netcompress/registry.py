"""The registry: compression methods, and the families that run them inside ``compress``.

A method is one frozen settings class and one function, registered where they are written::

    @dataclass(frozen=True, kw_only=True)
    class Magnitude(Settings):
        sparsity: float
        norm: int = 1

    @register("magnitude", Magnitude, family="layer", accepts=PRUNABLE, check=check_magnitude,
              example={"sparsity": 0.5})
    def magnitude(layer, moments=None, *, sparsity: float, norm: int = 1) -> nn.Module: ...

and from then on ``compress(model, data, nc.Magnitude(sparsity=0.9))`` (or the sugar
``method="magnitude", sparsity=0.9``), the command line's ``--method magnitude --sparsity 0.9``,
recipes, replayed Reports and the contract test (which runs every method with its ``example``
settings) know it. The class's fields are the settings and their annotations the schema: a
settings object is checked when it is built, and is rebuilt from JSON only through the
registry (:func:`settings_from_json`), so a file can name nothing but a registered method.

A family says what ``compress`` does around a method's function (see :class:`netcompress.compress.Family`):

* ``"layer"``: ``fn(layer, moments_or_None, **settings) -> module``, one layer at a time
  (pruning masks, quantization); statistics optional.
* ``"lowrank"``: ``fn(layer, moments, rank, **settings) -> Factorization``; sized by
  ``rank``/``keep``/``energy``/``budget`` (:mod:`netcompress.lowrank.family`).
* ``"structural"``: ``fn(model, graph, groups, stats, **settings) -> {name: module}``; removes
  whole units or channels, so it also resizes the layers that read them (:mod:`netcompress.prune.family`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from torch import nn

from netcompress._core.layers import DENSE

if TYPE_CHECKING:
    from netcompress.family import Family

__all__ = ["FAMILIES", "METHODS", "Method", "MethodTable", "Settings", "accepted_types", "build_settings", "check_value", "method",
           "each", "register", "register_family", "settings_from_json", "unregister"]


F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Method:
    """A registered method: its family, function, settings schema and the layer types it takes.

    Hooks, all optional, all run before any pass over data:

    * ``check(layer, **settings)``: the settings against one layer (a group size that must
      divide its width); a layer of the default selection that does not fit is left dense;
    * ``prepare(layers, per_layer)``: turn the settings into each layer's arguments, where a
      setting couples layers (magnitude pruning's global threshold).

    ``inputs``: what rounds a replacement's input too (static activation quantization), an object
    with ``keys`` (the settings it owns, which the function does not take; the settings class checks
    them), and, after the function built a layer, ``calibrate(name, new, stats, values)`` and
    ``errors(old, new, stats, name, grid, in_sample, held)`` (see :mod:`netcompress.quantize.activations`).

    A low-rank method whose factors are not two matrices (a separable convolution) gives
    ``rank_cost(layer) -> (parameters per rank, largest rank)`` for the family's sizing.
    """

    name: str
    family: str
    fn: Callable
    settings: tuple[str, ...] = ()  # the fields of settings_class the function takes (sizing fields are the family's)
    accepts: tuple[type[nn.Module], ...] = DENSE
    needs_stats: bool = False
    check: Callable | None = None
    prepare: Callable | None = None
    example: Mapping[str, Any] = field(default_factory=dict)
    rank_cost: Callable | None = None
    settings_class: type[Settings] | None = None
    inputs: Any = None

    def schema(self) -> dict[str, tuple[type, ...] | None]:
        """Setting → the Python types it takes (``None``: not checked), from the settings class's annotations."""
        return {f.name: accepted_types(f.type) for f in dataclasses.fields(self.settings_class)}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The settings of one registered method: frozen, typed, checked when built, and JSON both ways.

    Every method's class derives from this one (``nc.GPTQ(bits=4)``, ``nc.DALR(budget=0.5)``). A
    field's annotation is its schema; a field may also map layer names to values (one value per
    layer). Building an object checks every field's type and then the class's :meth:`check`, so a bad
    value is refused before any work, in one sentence naming the field.
    """

    method: ClassVar[str] = ""  # the registered name, set by @register
    sizing: ClassVar[tuple[str, ...]] = ()  # fields that size the method (the family's), not passed to its function

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check_value(f.name, value, accepted_types(f.type))
            if isinstance(value, Mapping):  # a per-layer value; read-only, like the rest of the object
                object.__setattr__(self, f.name, MappingProxyType(dict(value)))
        self.check()

    def check(self) -> None:
        """The checks that need no layer (ranges, choices, combinations); a subclass overrides it.

        What depends on a layer (a group size that must divide its width) is the method's ``check`` hook."""

    def values(self, names: tuple[str, ...] | None = None) -> dict[str, object]:
        """The fields as a dict (those in ``names``, if given), per-layer maps as plain dicts."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if names is None or f.name in names}

    def given(self) -> dict[str, object]:
        """The fields that differ from their defaults (what a row or a command line shows)."""
        shown = {}
        for f in dataclasses.fields(self):
            value = _plain(getattr(self, f.name))
            if f.default is dataclasses.MISSING or value != f.default:
                shown[f.name] = value
        return shown

    def to_json(self) -> dict[str, object]:
        """``{"method": name, **fields}``: JSON that :func:`settings_from_json` rebuilds."""
        return {"method": self.method, **self.values()}

    def __str__(self) -> str:
        return f"{self.method}(" + ", ".join(f"{k}={v!r}" for k, v in self.given().items()) + ")"


def each(value: object, check: Callable[[object], object]) -> None:
    """``check`` a setting's value, or each of its values where it is given per layer (errors name the layer)."""
    if not isinstance(value, Mapping):
        check(value)
        return
    for layer, item in value.items():
        try:
            check(item)
        except (ValueError, TypeError) as error:
            raise type(error)(f"layer {layer!r}: {error}") from None


def _plain(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else value


def build_settings(name: str, values: Mapping[str, object], where: str = "") -> Settings:
    """The settings object of registered method ``name`` from ``values`` (keywords, a recipe step, flags).

    Refuses, in one sentence prefixed by ``where``, an unknown method, a setting the method does not
    take, and a missing or badly typed value.
    """
    prefix = f"{where}: " if where else ""
    chosen = method(name, where)
    cls = chosen.settings_class
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        accepted = ", ".join(known) or "none"
        raise TypeError(f"{prefix}method {name!r} does not take {', '.join(unknown)} (its settings: {accepted})")
    missing = [k for k, f in known.items() if k not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TypeError(f"{prefix}method {name!r} needs {', '.join(missing)} (e.g. {_example(chosen)})")
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{prefix}{error}") from None


def _example(chosen: Method) -> str:
    return f"nc.{chosen.settings_class.__name__}(" + ", ".join(f"{k}={v!r}" for k, v in chosen.example.items()) + ")"


def settings_from_json(record: object, where: str = "settings") -> Settings:
    """Rebuild a settings object from :meth:`Settings.to_json`'s output, through the registry only."""
    if not isinstance(record, Mapping) or not isinstance(record.get("method"), str):
        raise ValueError(f"{where} must be an object with a 'method' name and its settings, got {record!r}")
    values = {k: v for k, v in record.items() if k != "method"}
    return build_settings(record["method"], values, where)


METHODS: dict[str, Method] = {}
FAMILIES: dict[str, Family] = {}


class MethodTable(Mapping):
    """Every registered method by name (read-only: :func:`register` adds one, :func:`unregister` removes it).

    ``netcompress.METHODS["gptq"].settings_class`` is :class:`~netcompress.GPTQ`; ``netcompress methods``
    prints this table with each method's settings, types and defaults.
    """

    def __getitem__(self, name: str) -> Method:
        return METHODS[name]

    def __iter__(self):
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)

    def __repr__(self) -> str:
        return f"MethodTable({', '.join(METHODS)})"


def register(
    name: str,
    settings_class: type[Settings],
    *,
    family: str,
    accepts: tuple[type[nn.Module], ...] = DENSE,
    needs_stats: bool = False,
    check: Callable | None = None,
    prepare: Callable | None = None,
    example: Mapping[str, Any] | None = None,
    rank_cost: Callable | None = None,
    inputs: Any = None,
) -> Callable[[F], F]:
    """Register the decorated function as method ``name`` of ``family``, with its ``settings_class``.

    The class (a frozen dataclass deriving from :class:`Settings`) holds the settings; the ones
    the function takes are its fields minus the family's sizing fields (``rank``, ``keep``, ...).
    ``example`` are settings (with a size for low-rank methods) the contract test runs it with.
    A name already registered is refused: :func:`unregister` it first.
    """

    def decorate(fn: F) -> F:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a method needs a non-empty name, got {name!r}")
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered; unregister it first or pick another name")
        if not (isinstance(settings_class, type) and issubclass(settings_class, Settings)
                and dataclasses.is_dataclass(settings_class)):
            raise TypeError(f"method {name!r} needs a settings class: a frozen dataclass deriving from "
                            f"netcompress.Settings, got {settings_class!r}")
        if settings_class.__dict__.get("method") not in ("", None, name):  # its own, not one inherited from a parent
            raise ValueError(f"settings class {settings_class.__name__} already belongs to method "
                             f"{settings_class.method!r}; give {name!r} its own class")
        owned = tuple(inputs.keys) if inputs is not None else ()
        taken = tuple(f.name for f in dataclasses.fields(settings_class)
                      if f.name not in settings_class.sizing and f.name not in owned)
        settings_class.method = name
        METHODS[name] = Method(name, family, fn, taken, tuple(accepts), needs_stats, check, prepare,
                               dict(example or {}), rank_cost, settings_class, inputs)
        return fn

    return decorate


def unregister(name: str) -> Method:
    """Remove method ``name`` (a plug-in's or a test's) and return it."""
    if name not in METHODS:
        raise ValueError(f"no method named {name!r} is registered")
    removed = METHODS.pop(name)
    removed.settings_class.method = ""
    return removed


def register_family(family: Family) -> Family:
    """Make ``family`` (an object with ``name``, ``sizing`` and ``compress(request)``) available to methods."""
    if family.name in FAMILIES:
        raise ValueError(f"a family named {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


_PLANNER: list[Callable] = []  # compress(target=...)'s planner, registered by netcompress.planner.search


def register_planner(planner: Callable) -> Callable:
    """Make ``planner`` what ``compress(model, data, target=...)`` runs (kept here so compress need not import it)."""
    _PLANNER[:] = [planner]
    return planner


def planner() -> Callable:
    """The registered planner (``import netcompress`` registers it: every submodule import runs the package first)."""
    return _PLANNER[0]


def method(name: str, where: str = "") -> Method:
    """The registered method ``name`` (refused in one sentence if there is none, or its family is missing)."""
    if not isinstance(name, str) or name not in METHODS:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown method {name!r}; choose one of {', '.join(METHODS)}")
    chosen = METHODS[name]
    if chosen.family not in FAMILIES:
        raise ValueError(f"method {name!r} belongs to family {chosen.family!r}, which is not registered")
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

