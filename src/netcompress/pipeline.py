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

Recipes are read with ``yaml.safe_load`` and every step is checked before the first
one runs, so a typo fails at once instead of after an hour of fine-tuning.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .compress import compress
from .distill import Logits
from .registry import METHODS
from .registry import method as _method
from .report import Report
from .train import finetune

__all__ = ["check_steps", "read_recipe", "run_pipeline"]

_FINETUNE_KEYS = {"epochs", "lr", "batch_size", "weight_decay", "schedule", "seed", "distill"}
_DISTILL_KEYS = {"temperature", "alpha", "beta"}
_SIZING = {"rank", "keep", "energy", "budget", "layers", "lam"}


def check_steps(steps: object) -> list[dict]:
    """Validate a list of steps; returns it as plain dicts. Errors name the step."""
    if not isinstance(steps, Sequence) or isinstance(steps, (str, bytes)) or not steps:
        raise ValueError("a recipe needs a non-empty list of steps")
    checked = []
    for i, step in enumerate(steps, 1):
        if not isinstance(step, Mapping):
            raise ValueError(f"step {i} must be a mapping such as {{method: magnitude, sparsity: 0.9}}")
        step = dict(step)
        if "finetune" in step:
            options = step["finetune"]
            if len(step) != 1 or not isinstance(options, Mapping) or not {"epochs", "lr"} <= set(options):
                raise ValueError(f"step {i}: finetune takes a mapping with at least epochs and lr")
            unknown = set(options) - _FINETUNE_KEYS
            if unknown:
                raise ValueError(f"step {i}: finetune does not take {', '.join(sorted(unknown))}")
            teach = options.get("distill")
            if teach is not None and (not isinstance(teach, Mapping) or set(teach) - _DISTILL_KEYS):
                raise ValueError(f"step {i}: finetune's distill takes a mapping of {', '.join(sorted(_DISTILL_KEYS))}")
        elif "method" in step:
            settings = {k: v for k, v in step.items() if k not in _SIZING | {"method"}}
            try:
                _method(step["method"], settings)
            except (ValueError, TypeError) as error:
                raise ValueError(f"step {i}: {error}") from None
        else:
            raise ValueError(f"step {i} has neither 'method' nor 'finetune'; known methods: {', '.join(METHODS)}")
        checked.append(step)
    return checked


def read_recipe(path: str | os.PathLike) -> list[dict]:
    """The checked steps of a YAML recipe file (a list of steps, or a mapping with ``steps``)."""
    try:
        import yaml
    except ImportError:
        raise ImportError("recipes need PyYAML; pip install pyyaml") from None
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"recipe {path} cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {path} is not valid YAML ({str(error).splitlines()[0]})") from None
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

    Args:
        data: target inputs for steps that need statistics (a fresh pass per step,
            so each step sees the network as the previous steps left it).
        train: ``(inputs, labels)`` for fine-tuning steps.
    """
    steps = check_steps(steps)
    if data is not None and not isinstance(data, torch.Tensor):
        data = list(data)  # every step that needs statistics makes its own pass
    if train is None and any("finetune" in s for s in steps):
        raise ValueError("the steps fine-tune, so pass train=(inputs, labels)")
    # Fine-tuning with ``distill`` learns from the network as it was before the first step.
    original = copy.deepcopy(model).eval() if any("distill" in s.get("finetune", {}) for s in steps) else None
    reports = []
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
