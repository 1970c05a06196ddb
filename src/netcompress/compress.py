"""``compress``: choose layers, factorize them, pick ranks, swap modules, report.

Methods live in :data:`METHODS` (name → factorizing function and its accepted
settings); ``compress`` does the walking, planning, swapping and reporting once
for all of them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ._layers import progress_disabled, replace_module, resolve_layers
from .lowrank import Factorization, dalr, dalr_bc, layer_matrix, svd, svd_bc
from .plan import LayerCurve, allocate_budget, rank_for_energy, rank_for_keep, useful_rank_limit
from .report import LayerRow, Report
from .stats import LayerStats, collect

__all__ = ["METHODS", "Method", "compress", "sweep"]


@dataclass(frozen=True)
class Method:
    """A registered compression method: ``factorize(layer, moments, rank, **settings)``."""

    name: str
    factorize: Callable[..., Factorization]
    settings: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("svd", svd),
        Method("svd-bc", svd_bc),
        Method("dalr", dalr, ("lam", "bias_compensation")),
        Method("dalr-bc", dalr_bc, ("lam",)),
    )
}


def _method(name: str, settings: Mapping[str, object]) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    method = METHODS[name]
    unknown = sorted(set(settings) - set(method.settings))
    if unknown:
        accepted = ", ".join(method.settings) or "none"
        raise TypeError(f"method {name!r} does not take {', '.join(unknown)} (its settings: {accepted})")
    return method


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


def _row(name: str, layer: nn.Module, method: str, f: Factorization, rank: int) -> LayerRow:
    kind = type(layer).__name__
    shape = list(layer.weight.shape)
    before = f.params_before()
    after = f.params_after(rank)
    error = f.relative_error(rank) if rank <= f.max_rank else 0.0
    if after >= before:
        note = f"left dense: rank {rank} would need {after:,} parameters, not fewer than {before:,}"
        return LayerRow(name, kind, shape, method, None, before, before, 0.0, note)
    return LayerRow(name, kind, shape, method, rank, before, after, error)


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
    progress: bool | None = None,
    **settings,
) -> Report:
    """Replace the selected layers of ``model`` in place by low-rank factorizations.

    Exactly one of ``rank`` (an int, or layer name → int), ``keep`` (fraction of each
    layer's parameters), ``energy`` (fraction of each layer's target-domain output energy
    kept) or ``budget`` (fraction of the selected layers' total parameters, spread where it
    lowers the target output error most per parameter) sets the ranks.

    Args:
        model: changed in place; its layers are named as in ``model.named_modules()``.
        data: target-domain batches, used when ``stats`` is not given (see :func:`collect`).
        stats: statistics from :func:`collect`, to reuse one pass over data.
        method: ``"svd"``, ``"svd-bc"``, ``"dalr"`` or ``"dalr-bc"`` (DALR on centred inputs
            with bias compensation).
        layers: names or ``"re:"`` patterns; default all Linear and Conv2d layers
            (or the keys of a ``rank`` dict).
        lam: DALR's ridge λ relative to ``trace(XXᵀ)/in`` (default ``lowrank.DEFAULT_LAM``).
        settings: further method settings, e.g. ``bias_compensation=True`` for ``"dalr"``.

    Returns:
        A :class:`Report` with one row per selected layer; a layer whose factorized
        form would not be smaller is left dense and its row says so.
    """
    if lam is not None:
        settings["lam"] = lam
    chosen = _method(method, settings)
    given = {k: v for k, v in dict(rank=rank, keep=keep, energy=energy, budget=budget).items() if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of rank, keep, energy or budget (got {', '.join(given) or 'none'})")
    if layers is None and isinstance(rank, Mapping):
        layers = list(rank)
    selected = resolve_layers(model, layers)
    # Every setting is checked before the (possibly long) pass over data.
    requests = {name: _initial_rank(name, layer, rank, keep) for name, layer in selected.items()}
    if stats is None:
        if data is None:
            raise ValueError("give target data or precomputed stats (netcompress.collect) to compress")
        stats = collect(model, data, list(selected), progress=progress)
    missing = [name for name in selected if name not in stats]
    if missing:
        raise ValueError(f"stats hold nothing for layer(s) {', '.join(missing)}; collect them with layers=[...]")

    factorizations: dict[str, Factorization] = {}
    ranks: dict[str, int] = {}
    from tqdm.auto import tqdm

    for name, layer in tqdm(selected.items(), desc=method, unit="layer", disable=progress_disabled(progress)):
        try:
            factorizations[name] = chosen.factorize(layer, stats[name], requests[name], **settings)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
        ranks[name] = requests[name]

    if energy is not None:
        for name, f in factorizations.items():
            ranks[name] = rank_for_energy(_curve(f).relative_error, energy)
    elif budget is not None:
        ranks = allocate_budget({name: _curve(f) for name, f in factorizations.items()}, budget)

    report = Report()
    for name, f in factorizations.items():
        row = _row(name, selected[name], method, f, ranks[name])
        if row.replaced:
            replace_module(model, name, f.module(ranks[name]))
        report.rows.append(row)
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
    ranks = list(ranks)
    if not ranks:
        raise ValueError("ranks is empty; give at least one rank to sweep")
    target = resolve_layers(model, [layer])[layer]
    for r in ranks:
        _rank_request(layer, r)
    try:
        f = chosen.factorize(target, stats[layer], max(ranks), **settings)
    except ValueError as error:
        raise ValueError(f"layer {layer!r}: {error}") from None
    for r in ranks:
        row = _row(layer, target, method, f, r)
        compressed = copy.deepcopy(model)
        if row.replaced:
            replace_module(compressed, layer, f.module(r))
        yield r, compressed, row
