"""How ``compress`` runs a structural method: trace the model, then remove whole units or channels."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from netcompress._layers import explicit_names, resolve_layers
from netcompress._replacement import Plan, apply_plan, layer_row, stored_params
from netcompress._tensors import model_device_dtype, model_input
from netcompress.compress import Family, Request
from netcompress.prune.modules import PRUNABLE
from netcompress.prune.structured import needed_layers, plan_graph
from netcompress.registry import register_family
from netcompress.report import Report
from netcompress.stats import collect

__all__ = ["StructuralFamily", "removable_layers"]


class StructuralFamily(Family):
    """``fn(model, graph, groups, stats, **settings) -> {name: module}``: the layers that read a removed
    unit shrink with the layer that wrote it, so the model is traced (``torch.fx``) on the target data."""

    name = "structural"
    sequential = False
    needs_data = True

    def compress(self, request: Request) -> Report:
        chosen, model, data = request.method, request.model, request.data
        if data is None:
            raise ValueError(f"method {chosen.name!r} traces the model on target data; pass data")
        if chosen.validate is not None:
            chosen.validate(**request.settings)
        batches = [data] if isinstance(data, torch.Tensor) else list(data)
        example = _example_input(batches, model)
        selected, skipped = removable_layers(model, example, request.layers, request.exclude, chosen.accepts)
        if not selected:
            raise ValueError(f"no layer of the model can have its units removed by {chosen.name!r}")
        graph, groups = plan_graph(model, list(selected), example)
        needed = needed_layers(graph, groups)
        stats = request.stats
        if stats is None or any(n not in stats for n in needed):
            stats = collect(model, batches, needed, positions=request.positions, progress=request.progress)
        replacements = chosen.fn(model, graph, groups, stats, **request.settings)
        plan = Plan()
        members = {m for g in groups for m in g}
        for name, new in sorted(replacements.items()):
            old = model.get_submodule(name)
            note = f"kept {new.weight.shape[0]} of {old.weight.shape[0]} units" if name in members else ""
            plan.add(name, old, new, layer_row(name, old, chosen.name, params_after=stored_params(new), note=note,
                                               setting=_row_setting(name, request.settings)))
        for name in selected:
            if name not in plan.rows:
                skipped[name] = "nothing to remove at this sparsity"
        return apply_plan(model, plan, skipped, chosen.name, batches[0])


register_family(StructuralFamily())


def removable_layers(model: nn.Module, example, layers=None, exclude=None,
                     accepts: tuple[type[nn.Module], ...] = PRUNABLE) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The selected layers whose units can be removed, and the other candidates with the reason.

    The model is traced on ``example``; a layer whose channels the tracer cannot follow is left
    out with the reason, except one named explicitly in ``layers``, which stays selected so that
    planning raises with that reason instead of skipping what the user asked for.
    """
    selected, skipped = resolve_layers(model, layers, accepts, exclude)
    explicit = explicit_names(layers)
    graph = plan_graph(model, [], example)[0]
    for name in list(selected):
        reason = graph.blocked.get(name)
        if name not in graph.producers:
            reason = "the traced graph never calls it as a layer"
        if reason is not None and name not in explicit:
            skipped[name] = f"its units cannot be removed: {reason}"
            del selected[name]
    return selected, skipped


def _row_setting(name: str, settings: dict[str, object]) -> str:
    """The settings as one row shows them: a per-layer dict by the layer's own value (left out where it has none)."""
    shown = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            if name not in value:
                continue
            value = value[name]
        shown.append(f"{key}={value}")
    return ", ".join(shown)


def _example_input(batches: list, model: nn.Module):
    if not batches:
        raise ValueError("data yielded no batches; structured pruning needs target data")
    return model_input(batches[0], *model_device_dtype(model))
