"""Chains of compression steps, in Python or as a YAML recipe.

A step is a dict: ``{"method": name, **settings}`` runs :func:`compress`, and
``{"finetune": {"epochs": …, "lr": …}}`` runs the supervised loop of :mod:`train`
on the labelled target data; with ``distill: {temperature: 2, alpha: 1, beta: 1}`` the network
as it was before the first step is the teacher. For example, Deep Compression::

    steps:
      - {method: magnitude, sparsity: 0.9}
      - {finetune: {epochs: 4, lr: 0.0005}}
      - {method: kmeans, bits: 5}
      - {finetune: {epochs: 2, lr: 0.0001}}

Recipes are read with a YAML safe loader that also refuses aliases (so a "billion laughs"
file cannot expand), deep nesting and files over 1 MiB. Every step is checked before the
first one runs: the method's name, the names of its settings (the registry's schema) and the
type of every value (from the method's signature), so a typo fails at once instead of after
an hour of fine-tuning.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from netcompress._core.files import read_bytes
from netcompress._core.transaction import all_or_nothing
from netcompress.compress import compress
from netcompress.distill.finetune import finetune
from netcompress.distill.losses import Logits
from netcompress.registry import FAMILIES, METHODS, Method, accepted_types, check_value
from netcompress.registry import method as _method
from netcompress.report import Report

__all__ = ["check_steps", "read_recipe", "run_pipeline"]

MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_DEPTH = 32
_SIZING = {"rank", "keep", "energy", "budget"}
# Keywords of compress beside the method's own settings (layers, exclude, lam, positions, holdout, …).
_SELECTION = {k for k, p in inspect.signature(compress).parameters.items()
              if p.kind is p.KEYWORD_ONLY and k not in _SIZING | {"stats", "method", "progress"}}
_PROBE_INPUTS = 20_643_840  # 2^16·3^2·5·7 inputs: a probe layer that any usual group size divides
_NOT_RECIPE = {"student", "data", "teacher", "loss", "progress", "checkpoint"}  # finetune arguments a recipe cannot give
_DISTILL_KEYS = {"temperature", "alpha", "beta"}


def _check_value(where: str, key: str, value: object, kinds: tuple[type, ...] | None, per_layer: bool = True) -> None:
    try:
        check_value(key, value, kinds, per_layer)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _check_selection(where: str, step: dict) -> None:
    for key in ("keep", "energy", "budget"):
        if key in step:
            value = step[key]
            _check_value(where, key, value, (int, float), per_layer=False)
            if not 0 < value <= 1:
                raise ValueError(f"{where}: {key} must be a fraction in (0, 1], got {value!r}")
    if "rank" in step:
        _check_value(where, "rank", step["rank"], (int,))
    for key in ("layers", "exclude"):
        value = step.get(key)
        names = [value] if isinstance(value, str) else value
        if value is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{where}: {key} must be a layer name, a 're:' pattern or a list of them, got {value!r}")
        for name in names or ():
            if name.startswith("re:"):
                try:
                    re.compile(name[3:])
                except re.error as error:
                    raise ValueError(f"{where}: {key} pattern {name!r} is not a valid regular expression ({error})") from None
    if step.get("positions") is not None:
        _check_value(where, "positions", step["positions"], (int,), per_layer=False)


def _check_method_step(where: str, step: dict) -> None:
    settings = {k: v for k, v in step.items() if k not in _SIZING | _SELECTION | {"method"}}
    if not isinstance(step["method"], str):
        raise ValueError(f"{where}: method must be a name such as dalr, got {step['method']!r}")
    try:
        chosen = _method(step["method"], settings, where)
    except TypeError as error:
        raise ValueError(str(error)) from None
    family = FAMILIES[chosen.family]
    sizing = sorted(_SIZING & set(step))
    if family.sizing and len(sizing) != 1:
        raise ValueError(f"{where}: method {chosen.name!r} needs exactly one of {_one_of(family.sizing)} "
                         f"(got {', '.join(sizing) or 'none'})")
    if not family.sizing and sizing:
        raise ValueError(f"{where}: {', '.join(sizing)} sizes low-rank methods; method {chosen.name!r} does not take it")
    _check_selection(where, step)
    keywords = inspect.signature(compress).parameters
    for key in _SELECTION - {"layers", "exclude", "positions"}:
        if step.get(key) is not None and keywords[key].annotation is not inspect.Parameter.empty:
            _check_value(where, key, step[key], accepted_types(keywords[key].annotation), per_layer=False)
    _run_checks(where, chosen, settings)


def _one_of(words: tuple[str, ...]) -> str:
    return f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else words[0]


def _probe(chosen: Method) -> nn.Module | None:
    """A shape-less (meta) layer of a kind ``chosen`` takes, for its per-layer check; None if it takes neither kind.

    A method for convolutions only (cp, jaderberg) is probed with a convolution, or its check
    would refuse the probe itself ("a Linear is not a convolution").
    """
    if any(issubclass(nn.Linear, kind) for kind in chosen.accepts):
        return nn.Linear(_PROBE_INPUTS, 1, device="meta")
    if any(issubclass(nn.Conv2d, kind) for kind in chosen.accepts):
        return nn.Conv2d(_PROBE_INPUTS, _PROBE_INPUTS, 3, device="meta")
    return None


def _run_checks(where: str, chosen: Method, settings: dict) -> None:
    """The method's own settings checks (ranges, choices), the per-layer one on a shape-less probe layer."""
    if any(isinstance(v, Mapping) for v in settings.values()):
        return  # per-layer values are checked by compress, layer by layer, before its statistics pass
    probe = _probe(chosen)
    hooks = [(hook, args) for hook, args in ((chosen.validate, ()), (chosen.check, (probe,) if probe else None))
             if hook is not None and args is not None]
    for hook, args in hooks:
        parameters = inspect.signature(hook).parameters
        given = {k: v for k, v in settings.items() if k in parameters}
        missing = [k for k, p in parameters.items() if p.kind is p.KEYWORD_ONLY and p.default is p.empty
                   and k not in given]
        if missing:
            raise ValueError(f"{where}: method {chosen.name!r} needs {', '.join(missing)}")
        try:
            hook(*args, **given)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where}: {error}") from None


def _check_finetune_step(where: str, step: dict) -> None:
    options = step["finetune"]
    if len(step) != 1 or not isinstance(options, Mapping) or not {"epochs", "lr"} <= set(options):
        raise ValueError(f"{where}: finetune takes a mapping with at least epochs and lr")
    parameters = {k: p for k, p in inspect.signature(finetune).parameters.items() if k not in _NOT_RECIPE}
    unknown = sorted(set(options) - set(parameters) - {"distill"}, key=str)
    if unknown:
        raise ValueError(f"{where}: finetune does not take {', '.join(map(str, unknown))} "
                         f"(it takes distill, {', '.join(parameters)})")
    for key, value in options.items():
        if key != "distill":
            annotation = parameters[key].annotation
            kinds = None if annotation is inspect.Parameter.empty else accepted_types(annotation)
            _check_value(where, f"finetune's {key}", value, kinds, per_layer=False)
    for key in ("epochs", "lr", "batch_size"):
        if key in options and isinstance(options[key], (int, float)) and not options[key] > 0:
            raise ValueError(f"{where}: finetune's {key} must be positive, got {options[key]!r}")
    teach = options.get("distill")
    if teach is not None:
        if not isinstance(teach, Mapping) or set(teach) - _DISTILL_KEYS:
            raise ValueError(f"{where}: finetune's distill takes a mapping of {', '.join(sorted(_DISTILL_KEYS))}")
        for key, value in teach.items():
            _check_value(where, f"distill's {key}", value, (int, float), per_layer=False)


def check_steps(steps: object) -> list[dict]:
    """Validate a list of steps (names, settings and value types); returns it as plain dicts. Errors name the step."""
    if not isinstance(steps, Sequence) or isinstance(steps, (str, bytes)) or not steps:
        raise ValueError("a recipe needs a non-empty list of steps")
    checked = []
    for i, step in enumerate(steps, 1):
        if not isinstance(step, Mapping):
            raise ValueError(f"step {i} must be a mapping such as {{method: magnitude, sparsity: 0.9}}")
        step = dict(step)
        if "finetune" in step:
            _check_finetune_step(f"step {i}", step)
        elif "method" in step:
            _check_method_step(f"step {i}", step)
        else:
            raise ValueError(f"step {i} has neither 'method' nor 'finetune'; known methods: {', '.join(METHODS)}")
        checked.append(step)
    return checked


def _loader():
    """A YAML safe loader that refuses aliases and deep nesting, and reads 1e-3 as a number (YAML 1.2)."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"it uses the alias *{event.anchor} on line {event.start_mark.line + 1}; "
                                     "recipes must write every value out")
            self.depth += 1
            try:
                if self.depth > MAX_RECIPE_DEPTH:
                    raise yaml.YAMLError(f"it nests deeper than {MAX_RECIPE_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return RecipeLoader


def read_recipe(path: str | os.PathLike) -> list[dict]:
    """The checked steps of a YAML recipe file (a list of steps, or a mapping with ``steps``)."""
    try:
        import yaml
    except ImportError:
        raise ImportError("recipes need PyYAML; pip install pyyaml") from None
    raw = read_bytes(path, "recipe", MAX_RECIPE_BYTES)  # a regular file only: a named pipe would block forever
    try:
        document = yaml.load(raw.decode("utf-8"), Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except UnicodeDecodeError:
        raise ValueError(f"recipe {path} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    except RecursionError:
        raise ValueError(f"recipe {path} is not valid YAML (it nests too deeply)") from None
    steps = document.get("steps") if isinstance(document, Mapping) else document
    try:
        return check_steps(steps)
    except ValueError as error:
        raise ValueError(f"recipe {path}: {error}") from None


def run_pipeline(
    model: nn.Module,
    steps: Sequence[Mapping],
    *,
    data: Iterable | torch.Tensor | None = None,
    train: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool | None = None,
) -> list[Report]:
    """Run ``steps`` on ``model`` in place; returns the report of every compression step.

    All or nothing: every step is checked before the first runs, and if a step fails the model
    is put back as it was before the first step (the error is re-raised).

    Args:
        data: target inputs for steps that need statistics (a fresh pass per step,
            so each step sees the network as the previous steps left it).
        train: ``(inputs, labels)`` for fine-tuning steps.
    """
    steps = check_steps(steps)
    if train is None and any("finetune" in s for s in steps):
        raise ValueError("the steps fine-tune, so pass train=(inputs, labels)")
    needs_data = [s["method"] for s in steps if "method" in s
                  and (METHODS[s["method"]].needs_stats or FAMILIES[METHODS[s["method"]].family].needs_data)]
    if data is None and needs_data:
        raise ValueError(f"method {needs_data[0]!r} needs target data; pass data=...")
    if data is not None and not isinstance(data, torch.Tensor):
        data = list(data)  # every step that needs statistics makes its own pass
    # Fine-tuning with ``distill`` learns from the network as it was before the first step.
    original = copy.deepcopy(model).eval() if any("distill" in s.get("finetune", {}) for s in steps) else None
    reports = []
    with all_or_nothing(model):
        for step in steps:
            if "finetune" in step:
                options = dict(step["finetune"])
                teach = options.pop("distill", None)
                extra = {} if teach is None else {"teacher": original, "loss": Logits(**teach)}
                finetune(model, tuple(train), progress=progress, **options, **extra)
                continue
            settings = {k: v for k, v in step.items() if k != "method"}
            reports.append(compress(model, data, method=step["method"], progress=progress, **settings))
    return reports
