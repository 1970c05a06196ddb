"""How ``compress`` runs a structural method: trace the model, then remove whole units or channels."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from netcompress._core.layers import explicit_names, reparametrized, resolve_layers
from netcompress._core.tensors import model_device_dtype, model_input
from netcompress.apply import Plan, layer_row, stored_params
from netcompress.family import Family, Request, Selection
from netcompress.prune.modules import PRUNABLE
from netcompress.prune.structured import needed_layers, plan_graph
from netcompress.registry import register_family
from netcompress.stats.collect import LayerStats

__all__ = ["StructuralFamily", "removable_layers"]


class StructuralFamily(Family):
    """``fn(model, graph, groups, stats, **settings) -> {name: module}``: the layers that read a removed
    unit shrink with the layer that wrote it, so the model is traced (``torch.fx``) on the target data."""

    name = "structural"
    resizes = True
    sequential = False
    needs_data = True
    heldout = True  # the units are fitted on the fitted share; the whole model is measured on the held-out one

    def select(self, request: Request) -> Selection:
        chosen, model, data = request.method, request.model, request.data
        if data is None:
            raise ValueError(f"method {chosen.name!r} traces the model on target data; pass data")
        example = _example_input(data if isinstance(data, torch.Tensor) else next(iter(data), None), model)
        selected, skipped = removable_layers(model, example, request.layers, request.exclude, chosen.accepts)
        selection = Selection(selected, skipped, explicit_names(request.layers))
        if not selected:
            why = next((f" ({n!r}: {r})" for n, r in skipped.items() if r not in ("not selected", "excluded")), "")
            raise ValueError(f"no layer of the model can have its units removed by {chosen.name!r}{why}")
        graph, groups = plan_graph(model, list(selected), example)
        selection.context.update(graph=graph, groups=groups)
        return selection

    def validate(self, request: Request, selection: Selection) -> None:
        """The settings were checked when they were built; the graph when the layers were selected."""

    def observe(self, request: Request, selection: Selection) -> tuple[list[str], list[str]]:
        return needed_layers(selection.context["graph"], selection.context["groups"]), []

    def settle(self, request: Request, selection: Selection, stats: LayerStats | None) -> None:
        """Every layer the plan reads was traced on the data, so the pass reached it."""

    def plan(self, request: Request, selection: Selection, stats: LayerStats | None,
             arguments: dict[str, dict] | None = None) -> Plan:
        model, graph, groups = request.model, selection.context["graph"], selection.context["groups"]
        replacements = request.method.fn(model, graph, groups, stats, **request.arguments)
        plan = Plan()
        members = {m for g in groups for m in g}
        for name, new in sorted(replacements.items()):
            old = model.get_submodule(name)
            if name in members:  # a layer whose units were removed: its row replays the claim
                row = request.row(name, old, params_after=stored_params(new), setting=_row_setting(name, request),
                                  note=f"kept {new.weight.shape[0]} of {old.weight.shape[0]} units")
            else:  # a reader of removed units, resized with them
                row = layer_row(name, old, request.method.name, params_after=stored_params(new),
                                note="resized: it reads units the claim removed")
            plan.add(name, old, new, row)
        for name in selection.selected:
            if name not in plan.rows:
                selection.skipped[name] = "nothing to remove at this sparsity"
        return plan


register_family(StructuralFamily())


def removable_layers(model: nn.Module, example, layers=None, exclude=None,
                     accepts: tuple[type[nn.Module], ...] = PRUNABLE) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The selected layers whose units can be removed, and the other candidates with the reason.

    The model is traced on ``example``; a layer whose channels the tracer cannot follow is left
    out with the reason, except one named explicitly in ``layers``, which stays selected so that
    planning raises with that reason instead of skipping what the user asked for.

    A layer re-parametrised by ``torch.nn.utils`` (prune, weight_norm, parametrize), or coupled to
    or read by one, keeps its units: slicing it would silently drop the re-parametrisation, so the
    row says which call removes it first (an explicitly named one raises with that reason).
    """
    selected, skipped = resolve_layers(model, layers, accepts, exclude)
    explicit = explicit_names(layers)
    graph = plan_graph(model, [], example)[0]
    modules = dict(model.named_modules())
    for name in list(selected):
        reason = graph.blocked.get(name)
        if name not in graph.producers:
            reason = "the traced graph never calls it as a layer"
        else:
            reason = reason or _reparametrized_neighbour(name, graph, modules)
        if reason is not None and name in explicit and name in graph.producers and name not in graph.blocked:
            raise ValueError(f"layer {name!r}: its units cannot be removed: {reason}")
        if reason is not None and name not in explicit:
            skipped[name] = f"its units cannot be removed: {reason}"
            del selected[name]
    return selected, skipped


# How to undo each re-parametrisation before structured pruning.
_UNDO = {
    "torch.nn.utils.prune": "torch.nn.utils.prune.remove(module, 'weight')",
    "torch.nn.utils.weight_norm": "torch.nn.utils.remove_weight_norm(module)",
    "torch.nn.utils.spectral_norm": "torch.nn.utils.remove_spectral_norm(module)",
}
_UNDO_PARAMETRIZE = "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')"


def _reparametrized_neighbour(name: str, graph, modules: dict[str, nn.Module]) -> str | None:
    """Why ``name``'s units cannot be removed: it, a layer coupled to it or a reader of them is re-parametrised."""
    group = graph.group(name)
    touched = list(group) + [c for c, space in graph.consumers.items() if any(s.source in group for s in space)]
    for other in touched:
        kinds = reparametrized(modules[other]) if other in modules else {}
        if kinds:
            utility = sorted(set(kinds.values()))[0]
            undo = _UNDO.get(utility, _UNDO_PARAMETRIZE)
            whose = "it is" if other == name else f"layer {other!r}, which {'shares' if other in group else 'reads'} " \
                                                   "its units, is"
            return f"{whose} re-parametrised by {utility}; call {undo} first"
    return None


def _row_setting(name: str, request: Request) -> str:
    """The settings as one row shows them: a per-layer dict by the layer's own value (left out where it has none)."""
    shown = []
    for key, value in request.settings.given().items():
        if isinstance(value, Mapping):
            if name not in value:
                continue
            value = value[name]
        shown.append(f"{key}={value}")
    return ", ".join(shown)


def _example_input(batch, model: nn.Module):
    if batch is None:
        raise ValueError("data yielded no batches; structured pruning needs target data")
    return model_input(batch, *model_device_dtype(model))
