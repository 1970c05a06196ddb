"""``compress(model, data, target=nc.Target(size=0.25))``: a plan of per-layer settings that meets a target.

1. **statistics**, one pass with a held-out share; the original's outputs on the held-out samples;
2. **prices**: every candidate of every family for every layer (:mod:`.candidates`), with its bytes,
   MACs, held-out error and, for a latency target, its measured time (:mod:`.latency`);
3. **sensitivity**: each layer's effect on the whole model's held-out output (:mod:`.sensitivity`);
4. **allocation**: least predicted whole-model error within the target (:mod:`.allocate`);
5. **check and repair**: the plan is swapped in whole and measured on the held-out samples; each
   chosen replacement is then measured alone, the sensitivities re-estimated from those
   replacements, the plan re-allocated and measured again; the better measured plan is kept;
6. the plan is run as one ``compress`` call (a plan of settings objects, replayable) and, with
   ``recover=``, distilled from the original on the same sample.

The Report's ``target`` gives the target, what the plan was predicted and measured to reach, and
each layer's choice with its error and sensitivity.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from netcompress._core.layers import _match, progress_disabled, replace_module
from netcompress._core.sizes import saved_bytes
from netcompress._core.tensors import _take, batch_size, call_model, model_device_dtype
from netcompress._core.transaction import evaluating
from netcompress.apply import behind_padding
from netcompress.planner.allocate import allocate, smallest_budget
from netcompress.planner.candidates import DEFAULT_CANDIDATES, FAMILIES, Candidate, price_layer
from netcompress.planner.latency import LatencyTable, median_seconds
from netcompress.planner.sensitivity import noise_sensitivity, replacement_sensitivity
from netcompress.planner.target import Target
from netcompress.registry import register_planner
from netcompress.report import Report
from netcompress.stats.collect import LayerStats, collect
from netcompress.stats.fidelity import References, measure, reference_outputs
from netcompress.stats.flops import layer_flops

__all__ = ["compress_to_target", "float32_bytes"]

PROBE_SAMPLES = 256  # held-out samples each sensitivity probe runs the model on
REPAIRS = 3  # rounds of check and re-allocation after the first plan


def float32_bytes(model: nn.Module) -> int:
    """The bytes of the model's tensors with every floating tensor in float32: what ``size`` is a share of."""
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())


def _check_candidates(candidates: Iterable[str] | None) -> tuple[str, ...]:
    if candidates is None:
        return DEFAULT_CANDIDATES
    chosen = (candidates,) if isinstance(candidates, str) else tuple(candidates)
    unknown = [c for c in chosen if c not in FAMILIES]
    if unknown or not chosen:
        raise ValueError(f"candidates names the families a plan may use, some of {', '.join(FAMILIES)}; "
                         f"got {unknown[0] if unknown else 'none'!r}")
    return chosen


def _probe(references: References) -> References:
    """At most :data:`PROBE_SAMPLES` of the held-out samples, for the many sensitivity passes."""
    batches, labels, outputs, left = [], [], [], PROBE_SAMPLES
    for batch, label, output in zip(references.batches, references.labels, references.outputs, strict=True):
        if left <= 0:
            break
        take = min(left, batch_size(batch))
        index = torch.arange(take)
        batches.append(_take(batch, index))
        labels.append(None if label is None else label[:take])
        outputs.append(output[:take])
        left -= take
    return References(batches, labels, outputs, references.where)


@dataclass
class _Layer:
    candidates: list[Candidate]
    sensitivity: float


def _input_shapes(model: nn.Module, names: Iterable[str], batch, size: int) -> dict[str, tuple[int, ...]]:
    """The shape of each layer's input in the model, with the batch dimension set to ``size``."""
    modules, shapes, handles = dict(model.named_modules()), {}, []
    for name in names:
        def hook(module, inputs, name=name):
            if name not in shapes and inputs and isinstance(inputs[0], torch.Tensor):
                shapes[name] = (size, *inputs[0].shape[1:])
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with evaluating(model), torch.no_grad():
            call_model(model, _take(batch, torch.zeros(1, dtype=torch.long)), *model_device_dtype(model))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _batch_of(batch, size: int):
    """A batch of ``size`` samples made from ``batch``'s (repeated as needed): the batch a latency is timed at."""
    index = torch.arange(size) % batch_size(batch)
    return _take(batch, index)


def _model_seconds(model: nn.Module, batch) -> float:
    device, dtype = model_device_dtype(model)
    with evaluating(model):
        return median_seconds(lambda: call_model(model, batch, device, dtype))


def _costs(target: Target, layers: Mapping[str, _Layer]) -> dict[str, list[float]]:
    key = {"size": "bytes", "bytes": "bytes", "flops": "macs", "latency": "latency"}[target.kind]
    return {name: [float(getattr(c, key)) for c in layer.candidates] for name, layer in layers.items()}


def _options(layers: Mapping[str, _Layer], costs: Mapping[str, list[float]]) -> dict[str, list[tuple[float, float]]]:
    return {name: [(cost, (layer.sensitivity * c.error) ** 2) for cost, c in zip(costs[name], layer.candidates,
                                                                                 strict=True)]
            for name, layer in layers.items()}


def _plan_error(model: nn.Module, table: Mapping[str, _Layer], picks: Mapping[str, int], probe: References) -> float:
    """The whole model's held-out relative error with every picked replacement swapped in, then put back
    (no copy of the model per trial plan: the replacements are swapped in place, as the check of one layer does)."""
    modules = dict(model.named_modules())
    swapped = {name: modules[name] for name, i in picks.items() if table[name].candidates[i].settings is not None}
    try:
        for name, old in swapped.items():
            replace_module(model, name, behind_padding(old, table[name].candidates[picks[name]].module))
        return measure(model, probe).relative_error
    finally:
        for name, old in swapped.items():
            replace_module(model, name, old)


def _single_method_plans(table: Mapping[str, _Layer], costs, budget: float | None) -> list[dict[str, int]]:
    """For each candidate's settings, the plan giving it to every layer it fits (the rest dense), where it fits
    the budget: the single-method baselines, checked on the same held-out samples as the planner's plans."""
    if budget is None:
        return []
    labels = {c.label for layer in table.values() for c in layer.candidates[1:]}
    found = []
    for label in sorted(labels):
        picks = {name: next((i for i, c in enumerate(layer.candidates) if c.label == label), 0)
                 for name, layer in table.items()}
        if sum(costs[name][i] for name, i in picks.items()) <= budget:
            found.append(picks)
    return found


def _allocate(target: Target, options, budget: float | None) -> dict[str, int] | None:
    if budget is None:
        return smallest_budget(options, target.max_error)
    return allocate(options, budget)


def _unreachable(target: Target, options, budget: float | None, fixed: float) -> str:
    if budget is None:
        return (f"no plan of these candidates is predicted to keep the whole model's held-out relative error within "
                f"max_error {target.max_error:g}; raise max_error or allow more candidates")
    floor = fixed + sum(min(c for c, _ in points) for points in options.values())
    unit, outside = {"latency": ("s", "outside the layers (activations, norms, overhead)"),
                     "flops": (" MACs", "in layers no candidate covers")}.get(target.kind, (" bytes", "in tensors no "
                                                                                         "candidate compresses"))
    return (f"target {target.kind} {getattr(target, target.kind)} is out of reach: with the cheapest candidate of "
            f"every layer the model still costs {floor:,.6g}{unit} against {fixed + budget:,.6g}{unit} allowed "
            f"({fixed:,.6g}{unit} {outside}); raise the target or allow more candidates")


@register_planner
def compress_to_target(model: nn.Module, data, target: Target, *, run: Callable[..., Report],
                       candidates: Iterable[str] | None = None, layers=None, exclude=None, holdout: float = 0.2,
                       positions: int | None = None, progress: bool | None = None, eval_data=None,
                       recover=None) -> Report:
    """Compress ``model`` in place to ``target`` (see the module's steps); ``run`` is :func:`netcompress.compress`."""
    from tqdm.auto import tqdm

    if not isinstance(target, Target):
        raise TypeError(f"target must be a netcompress.Target, got {type(target).__name__}")
    families = _check_candidates(candidates)
    if data is None:
        raise ValueError("a target is planned on target data; pass data")
    if not holdout > 0:
        raise ValueError("a target is checked on held-out samples; pass holdout > 0 (default 0.2)")
    if isinstance(data, torch.Tensor):
        data = [data]
    data = list(data)
    quiet = progress_disabled(progress)
    modules = dict(model.named_modules())
    # collect resolves names and patterns as compress does: a pattern takes the layers it matches that hold weights
    stats: LayerStats = collect(model, data, layers, holdout=holdout, positions=positions, progress=progress)
    excluded = set(_match(modules, exclude, "exclude")) if exclude is not None else set()
    chosen_names = [n for n in stats if n not in excluded and n not in stats.read_directly]
    references = reference_outputs(model, data, holdout)
    probe = _probe(references)
    example = data[0]
    dense_macs = layer_flops(model, example)
    table: dict[str, _Layer] = {}
    for name in tqdm(chosen_names, desc="prices", unit="layer", disable=quiet):
        found = price_layer(name, modules[name], stats, dense_macs.get(name, 0), families)
        table[name] = _Layer(found, 1.0)
    fixed_bytes = saved_bytes(model) - sum(layer.candidates[0].bytes for layer in table.values())
    dense_latency = None
    if target.kind == "latency":
        timing = LatencyTable()
        shapes = _input_shapes(model, table, example, target.batch)
        for name, layer in tqdm(table.items(), desc="latency", unit="layer", disable=quiet):
            for candidate in layer.candidates:  # timed as it would run: behind the layer's explicit padding
                timed = candidate.module if candidate.settings is None else behind_padding(modules[name],
                                                                                            candidate.module)
                candidate.latency = timing.seconds(timed, shapes[name])
        timing.save()
        dense_latency = _model_seconds(model, _batch_of(example, target.batch))
    for name, s in noise_sensitivity(model, {n: modules[n] for n in table}, probe, progress=progress).items():
        table[name].sensitivity = s
    costs = _costs(target, table)
    dense_cost = sum(c[0] for c in costs.values())
    fixed, budget = _budget(target, model, costs, fixed_bytes, dense_latency, dense_cost, sum(dense_macs.values()))
    options = _options(table, costs)
    picks = _allocate(target, options, budget)
    if picks is None:
        raise ValueError(_unreachable(target, options, budget, fixed))
    plans = [(_plan_error(model, table, picks, probe), picks, _predicted(options, picks))]
    alone: dict[str, float] = {}
    for _ in range(REPAIRS):
        # repair: the chosen replacements measured alone give each layer's sensitivity to its own kind of error
        found = replacement_sensitivity(model, {n: (table[n].candidates[i].module, table[n].candidates[i].error)
                                                for n, i in picks.items() if n not in alone}, probe,
                                        progress=progress)
        alone.update(found)
        for name, s in found.items():
            table[name].sensitivity = s
        options = _options(table, costs)
        picks = _allocate(target, options, budget)
        if picks is None or any(picks == p for _, p, _ in plans):
            break
        plans.append((_plan_error(model, table, picks, probe), picks, _predicted(options, picks)))
    for uniform in _single_method_plans(table, costs, budget):  # every single method that fits, measured too:
        if not any(uniform == p for _, p, _ in plans):         # the plan kept is never worse than the best of them
            plans.append((_plan_error(model, table, uniform, probe), uniform,
                          _predicted(options, uniform)))
    measured, picks, predicted = min(plans, key=lambda p: p[0])
    if target.max_error is not None and measured > target.max_error:
        raise ValueError(f"the best plan for the target keeps a whole-model held-out relative error of {measured:.4f}, "
                         f"above max_error {target.max_error:g}; raise max_error or the target's cost")
    plan = {name: table[name].candidates[i].settings for name, i in picks.items()
            if table[name].candidates[i].settings is not None}
    if not plan:
        raise ValueError(f"the model as it is already meets target {target.asked()}; nothing to compress")
    teacher = copy.deepcopy(model) if recover is not None else None
    report = run(model, data, plan, stats=stats, holdout=holdout, positions=positions, progress=progress,
                 eval_data=eval_data)
    report.target = _summary(target, model, table, picks, alone, predicted, measured, dense_latency, example,
                             fixed_bytes, dense_macs)
    if recover is not None:
        from netcompress.distill.recover import recover as run_recovery

        report.target["recovered"] = run_recovery(model, teacher, data, holdout, references, recover, progress)
        # measured again where compress measured it: the labelled data if given, else the held-out part
        after = references if eval_data is None else reference_outputs(teacher, None, 0.0, eval_data)
        report.fidelity = measure(model, after)
    return report


def _budget(target: Target, model: nn.Module, costs, fixed_bytes: int, dense_latency: float | None,
            dense_cost: float, total_macs: int) -> tuple[float, float | None]:
    """(what the layers' costs do not cover, the budget left for them; ``None``: minimise bytes within max_error)."""
    if target.kind == "size" or (target.kind == "bytes" and target.bytes is not None):
        allowed = target.size * float32_bytes(model) if target.size is not None else float(target.bytes)
        return float(fixed_bytes), allowed - fixed_bytes
    if target.kind == "flops":
        fixed = total_macs - dense_cost  # MACs of layers no candidate covers
        return fixed, target.flops * total_macs - fixed
    if target.kind == "latency":
        fixed = dense_latency - dense_cost  # time outside the layers timed (activations, norms, pooling)
        return fixed, target.latency * dense_latency - fixed
    return float(fixed_bytes), None  # max_error alone: the cheapest plan in bytes


def _predicted(options, picks: Mapping[str, int]) -> float:
    return sum(options[n][i][1] for n, i in picks.items()) ** 0.5


def _summary(target: Target, model: nn.Module, table, picks, alone, predicted: float, measured: float,
             dense_latency: float | None, example, fixed_bytes: int, dense_macs) -> dict:
    """The Report's ``target``: asked, predicted, reached (measured on the model as compressed), and each layer."""
    total_bytes = saved_bytes(model)
    reached: dict[str, float] = {"bytes": float(total_bytes)}
    original_bytes = fixed_bytes + sum(layer.candidates[0].bytes for layer in table.values())
    reached["size"] = total_bytes / original_bytes if original_bytes else 1.0
    total_macs = sum(dense_macs.values())
    if total_macs:
        reached["flops"] = sum(layer_flops(model, example).values()) / total_macs
    if dense_latency is not None:
        reached["latency"] = _model_seconds(model, _batch_of(example, target.batch)) / dense_latency
    chosen = {}
    for name, index in picks.items():
        candidate = table[name].candidates[index]
        alone_error = alone[name] * candidate.error if name in alone else None
        chosen[name] = {"choice": candidate.label, "error": candidate.error, "sensitivity": table[name].sensitivity,
                        "whole_error_alone": alone_error}
    return {"asked": target.asked(), "reached": reached, "predicted_error": predicted, "measured_error": measured,
            "layers": chosen}
