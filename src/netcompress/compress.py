"""``compress``: choose layers, run a registered method, swap modules, report.

Methods live in :mod:`netcompress.registry`; ``compress`` does the walking, planning,
swapping and reporting once for all of them, family by family.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from ._layers import progress_disabled, replace_module, resolve_layers
from .lowrank import Factorization, layer_matrix
from .plan import LayerCurve, allocate_budget, rank_for_energy, rank_for_keep, useful_rank_limit
from .prune import global_threshold
from .prune_units import needed_layers, plan_graph
from .registry import METHODS, Method
from .registry import method as _method
from .report import LayerRow, Report
from .stats import LayerStats, collect, relative_output_error

__all__ = ["METHODS", "compress", "sweep"]


def _rank_request(name: str, rank: int | Mapping[str, int]) -> int:
    value = rank.get(name) if isinstance(rank, Mapping) else rank
    if value is None:
        raise ValueError(f"rank gives no value for layer {name!r}; add it to the rank dict or drop it from layers")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"rank {value!r} for layer {name!r} must be a positive integer")
    return value


def _initial_rank(name: str, layer: nn.Module, rank, keep: float | None) -> int:
    """The rank to factorize at: the requested one, the one ``keep`` allows, or the largest useful one."""
    try:
        out_features, in_features = layer_matrix(layer).shape
    except ValueError as error:
        raise ValueError(f"layer {name!r}: {error}") from None
    if rank is not None:
        request = _rank_request(name, rank)
        if request > min(out_features, in_features):
            raise ValueError(
                f"layer {name!r}: rank {request} exceeds min(out, in) = {min(out_features, in_features)}"
            )
        return request
    if keep is not None:
        bias = out_features if layer.bias is not None else 0
        request = rank_for_keep(keep, out_features * in_features + bias, in_features + out_features, bias)
        return min(request, out_features, in_features)
    return useful_rank_limit(out_features, in_features)


def _curve(f: Factorization) -> LayerCurve:
    out_features, in_features = f.weight.shape
    fixed = f.params_after(0)
    relative = f.output_error() / f.output_energy if f.output_energy > 0 else torch.zeros(f.max_rank + 1)
    return LayerCurve(relative.cpu(), in_features + out_features, fixed, f.params_before())


def _lowrank_row(name: str, layer: nn.Module, method: str, f: Factorization, rank: int) -> LayerRow:
    kind = type(layer).__name__
    shape = list(layer.weight.shape)
    before = f.params_before()
    after = f.params_after(rank)
    error = f.relative_error(rank) if rank <= f.max_rank else 0.0
    if after >= before:
        note = f"left dense: rank {rank} would need {after:,} parameters, not fewer than {before:,}"
        return LayerRow(name, kind, shape, method, None, before, before, 0.0, note, replaced=False)
    return LayerRow(name, kind, shape, method, rank, before, after, error, setting=f"rank {rank}")


def _stored_params(module: nn.Module) -> int:
    """Parameters a layer really stores: unpruned weights plus the bias."""
    mask = getattr(module, "mask", None)
    weights = int(mask.sum()) if mask is not None else module.weight.numel()
    return weights + (module.bias.numel() if module.bias is not None else 0)


def _layer_row(name: str, layer: nn.Module, new: nn.Module, method: str, settings: dict, stats) -> LayerRow:
    error = None
    if stats is not None and name in stats:
        error = relative_output_error(layer.weight, layer.bias, new.weight, new.bias, stats[name],
                                      getattr(layer, "groups", 1))
    setting = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "threshold")
    before = layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
    return LayerRow(name, type(layer).__name__, list(layer.weight.shape), method, None, before,
                    _stored_params(new), error, setting=setting, bits=getattr(new, "bits", None))


def _run_lowrank(model, selected, stats, chosen: Method, sizing: dict, settings, progress) -> Report:
    from tqdm.auto import tqdm

    rank, keep, energy, budget = (sizing.get(k) for k in ("rank", "keep", "energy", "budget"))
    factorizations: dict[str, Factorization] = {}
    ranks: dict[str, int] = {}
    for name, layer in tqdm(selected.items(), desc=chosen.name, unit="layer", disable=progress_disabled(progress)):
        request = _initial_rank(name, layer, rank, keep)
        try:
            factorizations[name] = chosen.fn(layer, stats[name], request, **settings)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
        ranks[name] = request
    if energy is not None:
        for name, f in factorizations.items():
            ranks[name] = rank_for_energy(_curve(f).relative_error, energy)
    elif budget is not None:
        ranks = allocate_budget({name: _curve(f) for name, f in factorizations.items()}, budget)
    report = Report()
    for name, f in factorizations.items():
        row = _lowrank_row(name, selected[name], chosen.name, f, ranks[name])
        if row.replaced:
            replace_module(model, name, f.module(ranks[name]))
        report.rows.append(row)
    return report


def _settings_for(name: str, settings: Mapping[str, object]) -> dict:
    """A layer's settings: a setting given as a dict of layer name → value is looked up."""
    chosen = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            if name not in value:
                raise ValueError(f"{key} gives no value for layer {name!r}; add it to the {key} dict or drop the layer")
            value = value[name]
        chosen[key] = value
    return chosen


def _run_layerwise(model, selected, stats, chosen: Method, settings, progress) -> Report:
    from tqdm.auto import tqdm

    settings = dict(settings)
    scope = settings.pop("scope", "layer")
    per_layer = {name: _settings_for(name, settings) for name in selected}
    if chosen.name == "magnitude":
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if "sparsity" not in settings:
            raise ValueError("method 'magnitude' needs sparsity, the fraction of weights to remove")
        if scope == "global":
            if isinstance(settings["sparsity"], Mapping):
                raise ValueError("scope='global' takes one sparsity for all layers, not a dict")
            threshold = global_threshold(list(selected.values()), settings["sparsity"], settings.get("norm", 1))
            for name in per_layer:
                per_layer[name]["threshold"] = threshold
    report = Report()
    for name, layer in tqdm(selected.items(), desc=chosen.name, unit="layer", disable=progress_disabled(progress)):
        moments = stats[name] if stats is not None and name in stats else None
        try:
            new = chosen.fn(layer, moments, **per_layer[name])
        except (ValueError, TypeError) as error:
            raise type(error)(f"layer {name!r}: {error}") from None
        report.rows.append(_layer_row(name, layer, new, chosen.name, per_layer[name], stats))
        replace_module(model, name, new)
    return report


def compress(
    model: nn.Module,
    data: Iterable | torch.Tensor | None = None,
    *,
    stats: LayerStats | None = None,
    method: str = "dalr",
    rank: int | Mapping[str, int] | None = None,
    keep: float | None = None,
    energy: float | None = None,
    budget: float | None = None,
    layers: Iterable[str] | str | None = None,
    lam: float | None = None,
    positions: int | None = None,
    progress: bool | None = None,
    **settings,
) -> Report:
    """Compress the selected layers of ``model`` in place with a registered method.

    Low-rank methods (``"svd"``, ``"svd-bc"``, ``"dalr"``, ``"dalr-bc"``) take exactly one of
    ``rank`` (an int, or layer name → int), ``keep`` (fraction of each layer's parameters),
    ``energy`` (fraction of each layer's target output energy kept) or ``budget`` (fraction of
    the selected layers' parameters, spread where it lowers the target output error most per
    parameter). Pruning and quantization methods take their settings as keywords:

    * ``"magnitude"``: ``sparsity``, ``norm=1|2``, ``scope="layer"|"global"``
    * ``"uniform"``: ``bits``, ``granularity="tensor"|"channel"|"group"``, ``group_size``
    * ``"binary"``: ``stochastic=False``, ``seed``;  ``"ternary"``
    * ``"kmeans"``: ``bits``, ``init="linear"|"random"|"density"``, ``seed``

    Args:
        model: changed in place; its layers are named as in ``model.named_modules()``.
        data: target-domain batches, used when ``stats`` is not given (see :func:`collect`).
        stats: statistics from :func:`collect`, to reuse one pass over data.
        layers: names or ``"re:"`` patterns; default every layer the method takes
            (or the keys of a ``rank`` dict).
        lam: DALR's ridge λ relative to ``trace(XXᵀ)/in`` (default ``lowrank.DEFAULT_LAM``).
        positions: spatial positions sampled per image for Conv2d statistics (see :func:`collect`).

    Returns:
        A :class:`Report` with one row per selected layer; with data or statistics the rows
        hold each layer's relative output error on the target domain.
    """
    if lam is not None:
        settings["lam"] = lam
    chosen = _method(method, settings)
    sizing = {k: v for k, v in dict(rank=rank, keep=keep, energy=energy, budget=budget).items() if v is not None}
    if chosen.family == "lowrank" and len(sizing) != 1:
        raise ValueError(f"give exactly one of rank, keep, energy or budget (got {', '.join(sizing) or 'none'})")
    if chosen.family != "lowrank" and sizing:
        raise ValueError(f"{', '.join(sizing)} sizes low-rank methods; method {method!r} takes {', '.join(chosen.settings)}")
    if layers is None:
        by_layer = [v for v in (rank, *settings.values()) if isinstance(v, Mapping)]
        layers = list(by_layer[0]) if by_layer else None
    if chosen.family == "structural":
        return _run_structural(model, layers, data, stats, chosen, settings, positions, progress)
    selected = resolve_layers(model, layers, chosen.accepts)
    if chosen.family == "lowrank":
        for name, layer in selected.items():  # every setting is checked before the pass over data
            _initial_rank(name, layer, rank, keep)
    if stats is None and (data is not None or chosen.needs_stats):
        if data is None:
            raise ValueError(f"method {method!r} needs target data or precomputed stats (netcompress.collect)")
        stats = collect(model, data, list(selected), positions=positions, progress=progress)
    if chosen.needs_stats:
        missing = [name for name in selected if name not in stats]
        if missing:
            raise ValueError(f"stats hold nothing for layer(s) {', '.join(missing)}; collect them with layers=[...]")
    if chosen.family == "lowrank":
        return _run_lowrank(model, selected, stats, chosen, sizing, settings, progress)
    return _run_layerwise(model, selected, stats, chosen, settings, progress)


def _first_input(batches: list):
    batch = batches[0] if batches else None
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise ValueError("structured pruning traces the model on the first batch of data, which must be a tensor")
    return batch


def _run_structural(model, layers, data, stats, chosen: Method, settings, positions, progress) -> Report:
    if data is None:
        raise ValueError(f"method {chosen.name!r} traces the model on target data; pass data")
    batches = [data] if isinstance(data, torch.Tensor) else list(data)
    example = _first_input(batches)
    param = next(model.parameters())
    example = example.to(param.device, param.dtype if example.is_floating_point() else example.dtype)
    graph = None
    if layers is None:
        graph = plan_graph(model, [], example)[0]
        layers = [n for n, m in model.named_modules() if type(m) in chosen.accepts and n not in graph.blocked]
        if not layers:
            raise ValueError(f"no layer of the model can have its units removed by {chosen.name!r}")
    selected = resolve_layers(model, layers, chosen.accepts)
    graph, groups = plan_graph(model, list(selected), example)
    needed = needed_layers(graph, groups)
    if stats is None or any(n not in stats for n in needed):
        stats = collect(model, batches, needed, positions=positions, progress=progress)
    replacements = chosen.fn(model, graph, groups, stats, **settings)
    report = Report()
    setting = ", ".join(f"{k}={v}" for k, v in settings.items())
    for name, new in sorted(replacements.items()):
        old = model.get_submodule(name)
        old_params = sum(p.numel() for p in old.parameters())
        new_params = sum(p.numel() for p in new.parameters())
        note = ""
        if name in graph.producers and name in {m for g in groups for m in g}:
            note = f"kept {new.weight.shape[0]} of {old.weight.shape[0]} units"
        shape = list(old.weight.shape) if hasattr(old, "weight") and old.weight is not None else [old_params]
        report.rows.append(LayerRow(name, type(old).__name__, shape, chosen.name, None, old_params, new_params,
                                    None, note, setting=setting))
        replace_module(model, name, new)
    return report


def sweep(
    model: nn.Module,
    stats: LayerStats,
    layer: str,
    ranks: Iterable[int],
    *,
    method: str = "dalr",
    lam: float | None = None,
    **settings,
) -> Iterator[tuple[int, nn.Module, LayerRow]]:
    """Yield ``(rank, compressed copy of model, report row)`` for each rank, from one factorization.

    The decomposition is computed once at the largest rank and truncated for the
    others, so a sweep costs about one compression. ``model`` is left unchanged.
    """
    if lam is not None:
        settings["lam"] = lam
    chosen = _method(method, settings)
    if chosen.family != "lowrank":
        raise ValueError(f"sweep runs low-rank methods; {method!r} is a {chosen.family} method")
    ranks = list(ranks)
    if not ranks:
        raise ValueError("ranks is empty; give at least one rank to sweep")
    target = resolve_layers(model, [layer])[layer]
    for r in ranks:
        _rank_request(layer, r)
    try:
        f = chosen.fn(target, stats[layer], max(ranks), **settings)
    except ValueError as error:
        raise ValueError(f"layer {layer!r}: {error}") from None
    for r in ranks:
        row = _lowrank_row(layer, target, method, f, r)
        compressed = copy.deepcopy(model)
        if row.replaced:
            replace_module(compressed, layer, f.module(r))
        yield r, compressed, row
