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
first one runs: each method step builds its settings object (the method's name, the names and
types of its settings, their ranges), so a typo fails at once instead of after an hour of
fine-tuning. A method step is the same settings object ``compress`` takes (``nc.KMeans(bits=5)``).
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
from netcompress.registry import FAMILIES, METHODS, Settings, accepted_types, build_settings, check_value
from netcompress.report import Report

__all__ = ["check_steps", "read_recipe", "run_pipeline", "step_settings"]

MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_DEPTH = 32
# A method step's keys beside its settings: compress's options, with the types they take.
_OPTIONS = {"layers": None, "exclude": None, "positions": (int,), "holdout": (int, float), "sequential": (bool,),
            "blocks": (str,)}
_NOT_RECIPE = {"student", "data", "teacher", "loss", "progress", "checkpoint"}  # finetune arguments a recipe cannot give
_DISTILL_KEYS = {"temperature", "alpha", "beta"}


def _check_value(where: str, key: str, value: object, kinds: tuple[type, ...] | None, per_layer: bool = True) -> None:
    try:
        check_value(key, value, kinds, per_layer)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _check_options(where: str, step: dict) -> None:
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
    for key, kinds in _OPTIONS.items():
        if kinds is not None and step.get(key) is not None:
            _check_value(where, key, step[key], kinds, per_layer=False)


def step_settings(step: Mapping, where: str = "") -> tuple[Settings, dict[str, object]]:
    """A method step as the settings object it builds and compress's options (layers, exclude, ...)."""
    if not isinstance(step["method"], str):
        raise ValueError(f"{where}: method must be a name such as dalr, got {step['method']!r}")
    values = {k: v for k, v in step.items() if k not in _OPTIONS and k != "method"}
    try:
        settings = build_settings(step["method"], values, where)
    except TypeError as error:
        raise ValueError(str(error)) from None
    _check_options(where, dict(step))
    return settings, {k: v for k, v in step.items() if k in _OPTIONS}


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
            step_settings(step, f"step {i}")
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
            settings, options = step_settings(step)
            reports.append(compress(model, data, settings, progress=progress, **options))
    return reports
