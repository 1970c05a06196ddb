"""How ``compress`` runs a low-rank method, and ``sweep``: ranks from ``rank``, ``keep``, ``energy`` or ``budget``."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from netcompress._core.layers import plain_layer, progress_disabled, replace_module, resolve_layers
from netcompress.apply import Plan, behind_padding, layer_row, output_errors, stored_params
from netcompress.family import Family, Request, Selection, direct_reader, leave_for_reader
from netcompress.lowrank.budget import (
    LayerCurve,
    allocate_budget,
    rank_for_energy,
    rank_for_keep,
    useful_rank_limit,
)
from netcompress.lowrank.factorization import Factorization
from netcompress.quantize.uniform import quantize_factors
from netcompress.registry import build_settings, register_family
from netcompress.registry import method as registered
from netcompress.report import LayerRow
from netcompress.stats.collect import LayerStats
from netcompress.stats.moments import Moments

__all__ = ["LowRankFamily", "sweep"]


def _rank_request(name: str, rank: int | Mapping[str, int]) -> int:
    value = rank.get(name) if isinstance(rank, Mapping) else rank
    if value is None:
        raise ValueError(f"rank gives no value for layer {name!r}; add it to the rank dict or drop it from layers")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"rank {value!r} for layer {name!r} must be a positive integer")
    return value


def _initial_rank(name: str, layer: nn.Module, rank, keep: float | None, rank_cost=None) -> int:
    """The rank to factorize at: the requested one, the one ``keep`` allows, or the largest useful one.

    ``rank_cost(layer) -> (parameters per rank, largest rank)`` for factors that are not two
    matrices (see :class:`~netcompress.registry.Method`); by default the two factors of the
    (out, in·kh·kw) matrix.
    """
    out_features, in_features = layer.weight.shape[0], layer.weight[0].numel()  # the im2col shape, without a copy
    if rank_cost is None:
        per_rank, limit, what = in_features + out_features, min(out_features, in_features), "min(out, in)"
    else:
        (per_rank, limit), what = rank_cost(layer), "the largest rank this decomposition uses"
    if rank is not None:
        request = _rank_request(name, rank)
        if request > limit:
            raise ValueError(f"layer {name!r}: rank {request} exceeds {what} = {limit}")
        return request
    bias = out_features if layer.bias is not None else 0
    if keep is not None:
        request = rank_for_keep(keep, out_features * in_features + bias, per_rank, bias)
        return min(request, limit)
    return useful_rank_limit(out_features, in_features, per_rank, limit)


def _curve(f: Factorization, heldout: Moments | None = None) -> LayerCurve:
    """The layer's relative error for every rank: on held-out samples where there are some.

    Ranks are sized on data the factorization did not fit: on the fitted samples a data-aware
    method's error looks smaller than it will be on new target data, and a budget spent on
    those in-sample curves goes to the layers that overfit most.
    """
    if heldout is not None and heldout.count > 0:
        relative = f.relative_error_on(heldout)
    elif f.output_energy > 0:
        relative = f.output_error() / f.output_energy
    else:
        relative = torch.zeros(f.max_rank + 1)
    return LayerCurve(relative.cpu(), f.params_after(1) - f.params_after(0), f.params_after(0), f.params_before())


class LowRankFamily(Family):
    """Factorizations sized by ``rank``, ``keep``, ``energy`` or ``budget``; grouped convolutions stay dense."""

    name = "lowrank"

    def drop(self, request: Request, selection: Selection) -> None:
        for name, layer in list(selection.selected.items()):
            groups = getattr(layer, "groups", 1)
            if groups != 1:
                reason = f"a grouped convolution (groups={groups}) is not one matrix; low rank leaves it dense"
                if name in selection.explicit:
                    raise ValueError(f"layer {name!r}: {reason}")
                selection.leave_dense(name, reason)

    def validate(self, request: Request, selection: Selection) -> None:
        super().validate(request, selection)  # each layer against the method's settings
        size = request.settings.size()
        for name, layer in selection.selected.items():
            _initial_rank(name, plain_layer(layer), size.get("rank"), size.get("keep"), request.method.rank_cost)

    def plan(self, request: Request, selection: Selection, stats: LayerStats | None,
             arguments: dict[str, dict] | None = None) -> Plan:
        """Factor every selected layer, size the ranks, and plan the replacements (sequentially: one block's).

        Without data, a method that needs none (``svd``) sees white inputs. In sequential mode
        ``budget`` is spent within each block, on the curves of its layers.
        """
        from tqdm.auto import tqdm

        chosen, selected, size = request.method, selection.selected, request.settings.size()
        if stats is None:
            stats = LayerStats({name: Moments.white(*_matrix_shape(plain_layer(layer))[::-1])
                                for name, layer in selected.items()})
        factorizations: dict[str, Factorization] = {}
        ranks: dict[str, int] = {}
        plan = Plan()
        for name, layer in tqdm(selected.items(), desc=chosen.name, unit="layer",
                                disable=progress_disabled(request.progress)):
            plain = plain_layer(layer)
            reader = direct_reader(request, stats, name)
            if reader is not None:  # a factored layer has no weight a parent could compute with
                leave_for_reader(request, plan, name, layer, reader, "a factored replacement")
                continue
            ranks[name] = _initial_rank(name, plain, size.get("rank"), size.get("keep"), chosen.rank_cost)
            # a layer the data never reached, for a method that needs no data: white inputs, as without data
            moments = stats[name] if name in stats else Moments.white(*_matrix_shape(plain)[::-1])
            try:
                factorizations[name] = chosen.fn(plain, moments, ranks[name], **request.arguments)
            except ValueError as error:
                raise ValueError(f"layer {name!r}: {error}") from None
        energy, budget = size.get("energy"), size.get("budget")
        if energy is not None or budget is not None:
            heldout = stats.heldout.layers if stats.heldout is not None else {}
            curves = {name: _curve(f, heldout.get(name)) for name, f in factorizations.items()}
            if energy is not None:
                ranks = {name: rank_for_energy(curve.relative_error, energy) for name, curve in curves.items()}
            else:
                ranks = allocate_budget(curves, budget)
        for name, f in factorizations.items():
            layer, k = selected[name], ranks[name]
            before, after = f.params_before(), f.params_after(k)
            if k > f.max_rank or after >= before:
                why = (f"rank {k} would need {after:,} parameters, not fewer than {before:,}" if k <= f.max_rank
                       else "the budget is better spent here dense than factored")
                plan.rows[name] = request.row(name, layer, status="left dense", note=why, relative_error=0.0,
                                              heldout_error=0.0 if stats.heldout is not None else None)
                continue
            plan.add(name, layer, *_factored(name, layer, f, k, stats, chosen.name, request.settings.to_json(),
                                             request.settings.factor_bits))
        return plan


register_family(LowRankFamily())


def _matrix_shape(layer: nn.Module) -> tuple[int, int]:
    """(outputs, inputs per output) of a Linear or an ungrouped Conv2d's im2col matrix."""
    return layer.weight.shape[0], layer.weight[0].numel()


def _closed_form_errors(f: Factorization, rank: int, stats: LayerStats, name: str) -> tuple[float | None, float | None]:
    """In-sample and held-out relative output errors of rank ``rank`` from the factorization's cumulative sums.

    ``relative_error_on`` gives every rank's error on a set of moments with one product of the
    factors with its Gram, where comparing the built module with the layer takes a product of the
    whole ``out × in`` difference with it (for a 2,048 × 4,608 layer, 64 × 4,608² against 2,048 × 4,608²).
    """
    if name not in stats:
        return None, None
    heldout = stats.heldout.layers.get(name) if stats.heldout is not None else None

    def on(moments: Moments) -> float:
        return float(f.relative_error_on(moments)[rank].clamp_min(0).sqrt())

    return on(stats[name]), (on(heldout) if heldout is not None and heldout.count else None)


def _factored(name: str, layer: nn.Module, f: Factorization, rank: int, stats: LayerStats,
              method: str, settings: dict | None = None, factor_bits: int | None = None) -> tuple[nn.Module, LayerRow]:
    """The rank-``rank`` replacement of ``layer`` (its factors quantized to ``factor_bits``) and its report row
    (``settings``: the claim's, to replay)."""
    new = f.module(rank)
    if factor_bits is not None:
        new = quantize_factors(new, factor_bits)
        error, held = output_errors(layer, new, stats, name)
    else:
        error, held = _closed_form_errors(f, rank, stats, name)
    setting = f"rank {rank}" + (f", factors {factor_bits}-bit" if factor_bits is not None else "")
    return new, layer_row(name, layer, method, rank=rank, params_after=stored_params(new), relative_error=error,
                          heldout_error=held, setting=setting, settings=settings,
                          bits=float(factor_bits) if factor_bits is not None else None)


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
    ranks = list(ranks)
    chosen = registered(method)
    if chosen.family != LowRankFamily.name:
        raise ValueError(f"sweep runs low-rank methods; {method!r} is a {chosen.family} method")
    if not ranks:
        raise ValueError("ranks is empty; give at least one rank to sweep")
    for r in ranks:
        _rank_request(layer, r)
    settings = build_settings(method, {**settings, "rank": max(ranks)}).values(chosen.settings)
    target = resolve_layers(model, [layer], chosen.accepts)[0][layer]
    try:
        f = chosen.fn(plain_layer(target), stats[layer], max(ranks), **settings)
    except ValueError as error:
        raise ValueError(f"layer {layer!r}: {error}") from None
    for r in ranks:
        compressed = copy.deepcopy(model)
        before, after = f.params_before(), f.params_after(r)
        if after >= before:
            row = layer_row(layer, target, method, status="left dense",
                            note=f"rank {r} would need {after:,} parameters, not fewer than {before:,}")
        else:
            new, row = _factored(layer, target, f, r, stats, method)
            replace_module(compressed, layer, behind_padding(target, new))
        yield r, compressed, row


