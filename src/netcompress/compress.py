"""``compress``: select → validate → statistics → plan → apply, all or nothing.

Methods live in :mod:`netcompress.registry`; ``compress`` does the walking, planning,
swapping and reporting once for all of them, family by family:

1. *select*: every layer of the model that holds a weight matrix becomes a report row,
   either selected, left dense with the reason (a layer the method cannot take), or not
   selected;
2. *validate*: every setting is checked against every selected layer before any pass
   over data;
3. *statistics*: one streaming pass (:func:`collect`), with a held-out part;
4. *plan*: every replacement is computed while the model is untouched;
5. *apply*: the replacements are swapped in and, with data, the model is run once; any
   failure puts the model back exactly as it was.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from netcompress._layers import (
    Padded,
    explicit_names,
    explicit_padding,
    plain_layer,
    progress_disabled,
    replace_module,
    resolve_layers,
)
from netcompress._tensors import call_model, model_device_dtype, model_input
from netcompress._transaction import all_or_nothing, evaluating
from netcompress.lowrank.methods import Factorization, check_lam, check_shrinkage, layer_matrix
from netcompress.lowrank.modules import LowRankConv2d, LowRankLinear
from netcompress.lowrank.plan import (
    LayerCurve,
    allocate_budget,
    check_fraction,
    rank_for_energy,
    rank_for_keep,
    useful_rank_limit,
)
from netcompress.moments import Moments, relative_output_error
from netcompress.prune.structured import needed_layers, plan_graph
from netcompress.prune.unstructured import global_threshold
from netcompress.registry import METHODS, Method
from netcompress.registry import method as _method
from netcompress.report import LayerRow, Report
from netcompress.stats import LayerStats, collect
from netcompress.storage._architecture import remember_original

__all__ = ["METHODS", "compress", "sweep"]

# Layers whose inputs collect() can observe (embeddings take indices: data-free methods only).
OBSERVABLE = (nn.Linear, nn.Conv2d)

# Held-out share of the data that compress keeps apart for honest errors when it collects statistics itself.
DEFAULT_HOLDOUT = 0.2


def _rank_request(name: str, rank: int | Mapping[str, int]) -> int:
    value = rank.get(name) if isinstance(rank, Mapping) else rank
    if value is None:
        raise ValueError(f"rank gives no value for layer {name!r}; add it to the rank dict or drop it from layers")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"rank {value!r} for layer {name!r} must be a positive integer")
    return value


def _initial_rank(name: str, layer: nn.Module, rank, keep: float | None) -> int:
    """The rank to factorize at: the requested one, the one ``keep`` allows, or the largest useful one."""
    out_features, in_features = layer_matrix(layer).shape
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
    out_features, in_features = f.weight.shape
    return LayerCurve(relative.cpu(), in_features + out_features, f.params_after(0), f.params_before())


def _params(module: nn.Module) -> int:
    """Weights a layer really stores (unpruned weights, or quantized codes) plus its bias and other parameters.

    A quantizer's scales and codebooks are not counted here: they are the ``bits`` column's overhead.
    """
    inner = module.layer if isinstance(module, Padded) else module
    codes = getattr(inner, "codes", None)
    if isinstance(codes, torch.Tensor):
        mask = getattr(inner, "mask", None)
        bias = getattr(inner, "bias", None)
        return (int(mask.sum()) if mask is not None else codes.numel()) + (bias.numel() if bias is not None else 0)
    total = 0
    for name, p in module.named_parameters():
        mask = getattr(module, "mask", None) if name == "weight" else None
        total += int(mask.sum()) if mask is not None else p.numel()
    return total


def effective_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (out, in·kh·kw) weight matrix and bias a layer or replacement computes with."""
    if isinstance(module, Padded):
        return effective_weight(module.layer)
    if isinstance(module, (LowRankLinear, LowRankConv2d)):
        up = module.up.weight.detach().reshape(module.up.weight.shape[0], -1).double()
        down = module.down.weight.detach().reshape(module.down.weight.shape[0], -1).double()
        return up @ down, module.up.bias
    weight = module.weight.detach()
    mask = getattr(module, "mask", None)
    if mask is not None and not isinstance(weight, nn.Parameter):  # quantized: its weight already holds the mask
        mask = None
    weight = weight * mask if mask is not None else weight
    return weight.reshape(weight.shape[0], -1).double(), module.bias


def _errors(old: nn.Module, new: nn.Module, stats: LayerStats | None, name: str) -> tuple[float | None, float | None]:
    """In-sample and held-out relative output error of replacing ``old`` by ``new``."""
    if stats is None or name not in stats:
        return None, None
    W, b = effective_weight(old)
    W_new, b_new = effective_weight(new)
    groups = getattr(old, "groups", 1)
    in_sample = relative_output_error(W, b, W_new, b_new, stats[name], groups)
    heldout = stats.heldout.layers.get(name) if stats.heldout is not None else None
    held = relative_output_error(W, b, W_new, b_new, heldout, groups) if heldout is not None and heldout.count else None
    return in_sample, held


def _row(name: str, old: nn.Module, method: str, **fields) -> LayerRow:
    weight = old._parameters.get("weight") if not isinstance(old, Padded) else old.layer.weight
    shape = list(weight.shape) if isinstance(weight, torch.Tensor) else [_params(old)]
    before = _params(old)
    fields.setdefault("params_after", before)
    return LayerRow(name=name, kind=type(old).__name__, shape=shape, method=method, rank=fields.pop("rank", None),
                    params_before=before, relative_error=fields.pop("relative_error", None), **fields)


def _wrapped(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` behind the explicit padding ``old`` applied before its product, if any."""
    padding = explicit_padding(old)
    if padding is None or explicit_padding(new) is not None:  # a new conv that pads itself ('same') needs no wrapper
        return new
    return Padded(padding[0], padding[1], new)


def _layer_settings(name: str, settings: Mapping[str, object]) -> dict:
    """A layer's settings: a setting given as a dict of layer name → value is looked up."""
    chosen = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            if name not in value:
                raise ValueError(f"{key} gives no value for layer {name!r}; add it to the {key} dict or drop the layer")
            value = value[name]
        chosen[key] = value
    return chosen


class _Plan:
    """Replacements and report rows computed while the model is untouched."""

    def __init__(self) -> None:
        self.replacements: dict[str, nn.Module] = {}
        self.rows: dict[str, LayerRow] = {}


def _plan_lowrank(selected, stats, chosen: Method, sizing: dict, settings, progress) -> _Plan:
    from tqdm.auto import tqdm

    rank, keep, energy, budget = (sizing.get(k) for k in ("rank", "keep", "energy", "budget"))
    factorizations: dict[str, Factorization] = {}
    ranks: dict[str, int] = {}
    for name, layer in tqdm(selected.items(), desc=chosen.name, unit="layer", disable=progress_disabled(progress)):
        plain = plain_layer(layer)
        request = _initial_rank(name, plain, rank, keep)
        try:
            factorizations[name] = chosen.fn(plain, stats[name], request, **settings)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
        ranks[name] = request
    heldout = stats.heldout.layers if stats.heldout is not None else {}
    curves = {name: _curve(f, heldout.get(name)) for name, f in factorizations.items()} if energy or budget else {}
    if energy is not None:
        for name, curve in curves.items():
            ranks[name] = rank_for_energy(curve.relative_error, energy)
    elif budget is not None:
        ranks = allocate_budget(curves, budget)
    plan = _Plan()
    for name, f in factorizations.items():
        layer, k = selected[name], ranks[name]
        before, after = f.params_before(), f.params_after(k)
        if k > f.max_rank or after >= before:
            why = (f"rank {k} would need {after:,} parameters, not fewer than {before:,}" if k <= f.max_rank
                   else "the budget is better spent here dense than factored")
            plan.rows[name] = _row(name, layer, chosen.name, status="left dense", note=why, relative_error=0.0,
                                   heldout_error=0.0 if stats.heldout is not None else None)
            continue
        new = _wrapped(layer, f.module(k))
        plan.replacements[name] = new
        error, held = _errors(layer, new, stats, name)
        plan.rows[name] = _row(name, layer, chosen.name, rank=k, params_after=_params(new), relative_error=error,
                               heldout_error=held, setting=f"rank {k}")
    return plan


def _plan_layerwise(selected, stats, chosen: Method, settings, progress) -> _Plan:
    from tqdm.auto import tqdm

    settings = dict(settings)
    scope = settings.pop("scope", "layer")
    per_layer = {name: _layer_settings(name, settings) for name in selected}
    if chosen.name == "magnitude" and scope == "global":
        threshold = global_threshold([plain_layer(m) for m in selected.values()], settings["sparsity"],
                                     settings.get("norm", 1))
        for name in per_layer:
            per_layer[name]["threshold"] = threshold
    plan = _Plan()
    for name, layer in tqdm(selected.items(), desc=chosen.name, unit="layer", disable=progress_disabled(progress)):
        moments = stats[name] if stats is not None and name in stats else None
        try:
            new = _wrapped(layer, chosen.fn(plain_layer(layer), moments, **per_layer[name]))
        except (ValueError, TypeError) as error:
            raise type(error)(f"layer {name!r}: {error}") from None
        plan.replacements[name] = new
        error, held = _errors(layer, new, stats, name)
        setting = ", ".join(f"{k}={v}" for k, v in per_layer[name].items() if k != "threshold")
        plan.rows[name] = _row(name, layer, chosen.name, params_after=_params(new), relative_error=error,
                               heldout_error=held, setting=setting,
                               bits=getattr(new.layer if isinstance(new, Padded) else new, "bits", None))
    return plan


def _validate(chosen: Method, selected: dict[str, nn.Module], skipped: dict[str, str], explicit: set[str],
              sizing: dict, settings: dict, rank, keep) -> None:
    """Every setting against every selected layer, before any pass over data.

    A layer of the default selection that a setting does not fit (say, a group size that does
    not divide its width) is left dense with the reason; a layer named explicitly raises.
    """
    if chosen.family == "lowrank":
        for key in ("keep", "energy", "budget"):
            if key in sizing:
                check_fraction(key, sizing[key])
        if "lam" in settings:
            check_lam(settings["lam"])
        if "shrinkage" in settings:
            check_shrinkage(settings["shrinkage"])
        for name, layer in selected.items():
            _initial_rank(name, plain_layer(layer), rank, keep)
        return
    if chosen.name == "magnitude":
        scope = settings.get("scope", "layer")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if "sparsity" not in settings:
            raise ValueError("method 'magnitude' needs sparsity, the fraction of weights to remove")
        if scope == "global" and isinstance(settings["sparsity"], Mapping):
            raise ValueError("scope='global' takes one sparsity for all layers, not a dict")
    if chosen.check is None:
        return
    for name, layer in list(selected.items()):
        layer_settings = {k: v for k, v in _layer_settings(name, settings).items() if k != "scope"}
        try:
            chosen.check(plain_layer(layer), **layer_settings)
        except (ValueError, TypeError) as error:
            if name in explicit or len(selected) == 1:
                raise type(error)(f"layer {name!r}: {error}") from None
            skipped[name] = str(error)
            del selected[name]
    if not selected:
        first = next(iter(skipped.items()))
        raise ValueError(f"no layer of the model fits these settings (layer {first[0]!r}: {first[1]})")


def _check_samples(stats: LayerStats, selected: Iterable[str], rows: dict[str, LayerRow]) -> None:
    """Note (and warn once) where a layer saw fewer samples than it has input features."""
    few = []
    for name in selected:
        if name in stats and name in rows:
            m: Moments = stats[name]
            features = m.gram.shape[-1]
            if m.count < features:
                few.append(name)
                note = f"{m.count:,} samples < {features:,} input features: in-sample error is optimistic"
                rows[name].note = f"{rows[name].note}; {note}" if rows[name].note else note
    if few:
        warnings.warn(f"{len(few)} layer(s) saw fewer target samples than input features (first: {few[0]!r}); "
                      "their in-sample error is optimistic: read the held-out column, or pass more data",
                      stacklevel=3)


def _first_batch(data):
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (list, tuple)) and data:
        return data[0]
    return None


@torch.no_grad()
def _check_runs(model: nn.Module, batch) -> None:
    """Run the compressed model on one batch; a failure or a non-finite output is an error."""
    try:
        with evaluating(model):
            output = call_model(model, batch, *model_device_dtype(model))
    except Exception as error:  # any failure here means the swap broke the model
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"the compressed model failed at forward ({reason}); the model was left unchanged") from None
    tensors = [output] if isinstance(output, torch.Tensor) else [
        v for v in (output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list))
                    else []) if isinstance(v, torch.Tensor)]
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
        raise ValueError("the compressed model gives NaN or Inf outputs; the model was left unchanged")


def _apply(model: nn.Module, plan: _Plan, skipped: dict[str, str], method: str, data) -> Report:
    modules = dict(model.named_modules())
    batch = _first_batch(data)
    with all_or_nothing(model):
        for name, new in plan.replacements.items():
            new.train(modules[name].training)  # a replacement keeps its layer's train/eval mode
            remember_original(new, modules[name])  # so a saved file records the architecture it came from
            replace_module(model, name, new)
        if batch is not None:
            _check_runs(model, batch)
    rows = dict(plan.rows)
    for name, reason in skipped.items():
        if name in modules and name not in rows:
            status = "not selected" if reason in ("not selected", "excluded") else "left dense"
            rows[name] = _row(name, modules[name], method, status=status, note="" if reason == "not selected" else reason)
    order = {name: i for i, name in enumerate(modules)}
    return Report(sorted(rows.values(), key=lambda r: order.get(r.name, len(order))))


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
    exclude: Iterable[str] | str | None = None,
    lam: float | None = None,
    positions: int | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    progress: bool | None = None,
    **settings,
) -> Report:
    """Compress the selected layers of ``model`` in place with a registered method, all or nothing.

    Low-rank methods (``"svd"``, ``"svd-bc"``, ``"dalr"``, ``"dalr-bc"``) take exactly one of
    ``rank`` (an int, or layer name → int), ``keep`` (fraction of each layer's parameters),
    ``energy`` (fraction of each layer's target output energy kept) or ``budget`` (fraction of
    the selected layers' parameters, spread where it lowers the target output error most per
    parameter; a layer is left dense where factoring it saves too little for its error).
    Pruning and quantization methods take their settings as keywords (see ``METHODS`` and the
    README's method table); a setting given as a dict of layer name → value is per layer.

    Args:
        model: changed in place only if everything succeeds; on any error it is left exactly
            as it was. Its layers are named as in ``model.named_modules()``.
        data: target-domain batches, used when ``stats`` is not given (see :func:`collect`);
            the compressed model is also run on the first batch before it is returned.
        stats: statistics from :func:`collect`, to reuse one pass over data.
        layers: names or ``"re:"`` patterns; default every layer the method can take (the
            others are listed in the Report as left dense, with the reason).
        exclude: names or ``"re:"`` patterns of layers to leave as they are.
        lam: DALR's ridge λ relative to ``trace(XXᵀ)/in`` (default ``lowrank.DEFAULT_LAM``).
        positions: spatial positions sampled per image for Conv2d statistics (see :func:`collect`).
        holdout: share of ``data`` kept apart to measure each layer's held-out error (when
            ``compress`` collects the statistics itself; 0 uses all data for fitting).

    Returns:
        A :class:`Report` with one row per weight layer of the model: compressed, left dense
        (with the reason) or not selected, with in-sample and held-out relative output errors.
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
        return _run_structural(model, layers, exclude, data, stats, chosen, settings, positions, progress)
    explicit = explicit_names(layers)
    selected, skipped = resolve_layers(model, layers, chosen.accepts, exclude)
    selected, skipped = _drop_unfactorable(chosen, selected, skipped, explicit)
    _validate(chosen, selected, skipped, explicit, sizing, settings, rank, keep)
    if stats is None and (data is not None or chosen.needs_stats):
        if data is None:
            raise ValueError(f"method {method!r} needs target data or precomputed stats (netcompress.collect)")
        observable = [n for n, m in selected.items() if isinstance(m, OBSERVABLE)]
        if observable or chosen.needs_stats:
            stats = collect(model, data, observable, positions=positions, holdout=holdout, progress=progress)
    if chosen.needs_stats:
        unreached = [n for n in selected if n not in stats]
        if any(n in explicit for n in unreached):
            raise ValueError(f"stats hold nothing for layer(s) {', '.join(n for n in unreached if n in explicit)}; "
                             "collect them with layers=[...] and data that reaches them")
        for name in unreached:
            skipped[name] = stats.skipped.get(name, "no statistics were collected for it")
            del selected[name]
        if not selected:
            raise ValueError(f"no selected layer has statistics ({unreached[0]!r}: {skipped[unreached[0]]})")
    if chosen.family == "lowrank":
        plan = _plan_lowrank(selected, stats, chosen, sizing, settings, progress)
    else:
        plan = _plan_layerwise(selected, stats, chosen, settings, progress)
    if stats is not None:
        _check_samples(stats, selected, plan.rows)
    return _apply(model, plan, skipped, chosen.name, data)


def _drop_unfactorable(chosen: Method, selected: dict, skipped: dict, explicit: set[str]) -> tuple[dict, dict]:
    """Low rank leaves grouped convolutions dense: their weight is not one matrix."""
    if chosen.family != "lowrank":
        return selected, skipped
    for name, layer in list(selected.items()):
        groups = getattr(layer, "groups", 1)
        if groups != 1:
            reason = f"a grouped convolution (groups={groups}) is not one matrix; low rank leaves it dense"
            if name in explicit:
                raise ValueError(f"layer {name!r}: {reason}")
            skipped[name] = reason
            del selected[name]
    if not selected:
        raise ValueError("no layer of the model can be factorized (all are grouped convolutions)")
    return selected, skipped


def _example_input(batches: list, model: nn.Module):
    if not batches:
        raise ValueError("data yielded no batches; structured pruning needs target data")
    return model_input(batches[0], *model_device_dtype(model))


def _run_structural(model, layers, exclude, data, stats, chosen: Method, settings, positions, progress) -> Report:
    if data is None:
        raise ValueError(f"method {chosen.name!r} traces the model on target data; pass data")
    if chosen.check is not None:
        chosen.check(**settings)
    selected, skipped = resolve_layers(model, layers, chosen.accepts, exclude)
    batches = [data] if isinstance(data, torch.Tensor) else list(data)
    example = _example_input(batches, model)
    explicit = explicit_names(layers)
    graph = plan_graph(model, [], example)[0]
    for name in list(selected):
        reason = graph.blocked.get(name)
        if name not in graph.producers:
            reason = "the traced graph never calls it as a layer"
        if reason is not None and name not in explicit:
            skipped[name] = f"its units cannot be removed: {reason}"
            del selected[name]
    if not selected:
        raise ValueError(f"no layer of the model can have its units removed by {chosen.name!r}")
    graph, groups = plan_graph(model, list(selected), example)
    needed = needed_layers(graph, groups)
    if stats is None or any(n not in stats for n in needed):
        stats = collect(model, batches, needed, positions=positions, progress=progress)
    replacements = chosen.fn(model, graph, groups, stats, **settings)
    plan = _Plan()
    setting = ", ".join(f"{k}={v}" for k, v in settings.items())
    members = {m for g in groups for m in g}
    for name, new in sorted(replacements.items()):
        old = model.get_submodule(name)
        note = f"kept {new.weight.shape[0]} of {old.weight.shape[0]} units" if name in members else ""
        plan.replacements[name] = _wrapped(old, new)
        plan.rows[name] = _row(name, old, chosen.name, params_after=_params(new), note=note, setting=setting)
    for name in selected:
        if name not in plan.rows:
            skipped[name] = "nothing to remove at this sparsity"
    return _apply(model, plan, skipped, chosen.name, batches[0])


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
    target = resolve_layers(model, [layer], chosen.accepts)[0][layer]
    for r in ranks:
        _rank_request(layer, r)
    try:
        f = chosen.fn(plain_layer(target), stats[layer], max(ranks), **settings)
    except ValueError as error:
        raise ValueError(f"layer {layer!r}: {error}") from None
    for r in ranks:
        compressed = copy.deepcopy(model)
        before, after = f.params_before(), f.params_after(r)
        if after >= before:
            row = _row(layer, target, method, status="left dense",
                       note=f"rank {r} would need {after:,} parameters, not fewer than {before:,}")
        else:
            new = _wrapped(target, f.module(r))
            error, held = _errors(target, new, stats, layer)
            row = _row(layer, target, method, rank=r, params_after=_params(new), relative_error=error,
                       heldout_error=held, setting=f"rank {r}")
            replace_module(compressed, layer, new)
        yield r, compressed, row
