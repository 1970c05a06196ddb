"""``compress``: settings (one method, or one per layer) → select → validate → statistics → plan → apply.

``compress`` knows no method and no family by name. The settings become *claims* (one settings
object and the layers it was given, :mod:`netcompress.family`); every claim's family runs the
same five steps:

1. *select*: every layer of the model that holds a weight matrix becomes a report row, either
   claimed and selected, left dense with the reason, or not selected;
2. *validate*: every setting against every selected layer, before any pass over data;
3. *statistics*: one streaming pass (:func:`collect`) shared by every claim, with a held-out part;
4. *plan*: every replacement is computed while the model is untouched;
5. *apply*: all replacements are swapped in at once and, with data, the model is run once; any
   failure puts the model back exactly as it was (:mod:`netcompress.apply`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from netcompress._core.batchnorm import reestimate_batchnorm
from netcompress._core.layers import _match, candidate_layers
from netcompress._core.sources import read_in_source
from netcompress._core.transaction import all_or_nothing
from netcompress.apply import Plan, add_dense_rows, apply_plan, check_samples, full_report
from netcompress.family import DEFAULT_HOLDOUT, Request, Selection
from netcompress.registry import METHODS, Settings, build_settings, planner
from netcompress.registry import method as _method
from netcompress.report import Report
from netcompress.sequential import compress_sequentially
from netcompress.stats.collect import LayerStats, collect
from netcompress.stats.fidelity import References, heldout_part, measure, reference_outputs

if TYPE_CHECKING:
    from netcompress.distill.recover import Recover
    from netcompress.planner.target import Target

__all__ = ["DEFAULT", "METHODS", "compress", "replay"]

DEFAULT = "_default"  # the key of a plan's settings for every layer no other key names

Claims = list[tuple[Request, Selection]]


def _settings(settings: Settings | Mapping | None, method: str | None, values: dict[str, object]
              ) -> Settings | dict[str, Settings | None]:
    """The call's settings: an object, a plan (layer pattern → object), or built from ``method=`` and keywords."""
    if settings is not None and (method is not None or values):
        given = ", ".join([*(["method"] if method is not None else []), *values])
        raise ValueError(f"give the settings as an object or a plan, or as method= with its settings, not both "
                         f"(got a settings argument and {given})")
    if settings is None:
        return build_settings("dalr" if method is None else method, values)
    if isinstance(settings, Settings):
        if not settings.method:
            raise ValueError(f"{type(settings).__name__} is not registered as a method; register it with "
                             "netcompress.register")
        return settings
    if isinstance(settings, Mapping):
        plan = {}
        for key, value in settings.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"a plan's keys are layer names, 're:' patterns or {DEFAULT!r}, got {key!r}")
            if value is not None and not (isinstance(value, Settings) and value.method):
                raise ValueError(f"the plan gives layer {key!r} {value!r}; give a settings object (nc.GPTQ(bits=4), "
                                 "...) or None to leave it as it is")
            plan[key] = value
        if not plan:
            raise ValueError("the plan is empty; map layer names or 're:' patterns to settings objects")
        return plan
    raise TypeError(f"settings must be a settings object (nc.GPTQ(bits=4), ...) or a dict of layer pattern → "
                    f"settings, got {type(settings).__name__}")


def _claims(model: nn.Module, settings: Settings | dict[str, Settings | None], layers, exclude,
            base: dict[str, object]) -> tuple[Claims, dict[str, str]]:
    """One claim per distinct settings object, and the layers no claim takes (with why).

    In a plan, the keys claim layers: an exact name, a ``"re:"`` pattern, or :data:`DEFAULT` for
    the rest; a layer two keys claim is refused. Keys whose settings are equal form one claim, so
    a ``budget`` is spread over every layer of its settings.
    """
    def claim(value: Settings, names, excluded, where: str = "") -> tuple[Request, Selection]:
        request = Request(model, settings=value, method=_method(value.method), layers=names, exclude=excluded,
                          where=where, **base)
        try:
            return request, request.family.select(request)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{where}: {error}" if where else str(error)) from None

    if isinstance(settings, Settings):
        return [claim(settings, layers, exclude)], {}
    if layers is not None:
        raise ValueError("a plan selects its layers by its keys; drop layers= (exclude= still applies)")
    modules, candidates = dict(model.named_modules()), candidate_layers(model)
    owner: dict[str, str] = {}
    for key in settings:
        if key == DEFAULT:
            continue
        for name in _match(modules, key, "the plan's key", candidates if key.startswith("re:") else None):
            if name in owner:
                raise ValueError(f"layer {name!r} is claimed by both {owner[name]!r} and {key!r} in the plan; "
                                 "make the patterns disjoint")
            owner[name] = key
    groups: list[tuple[Settings, list[str]]] = []
    for key, value in settings.items():
        if value is None or key == DEFAULT:
            continue
        same = next((g for g in groups if g[0] == value), None)
        (same[1].append(key) if same else groups.append((value, [key])))
    user_excluded = list(_match(modules, exclude, "exclude")) if exclude is not None else []
    claims = [claim(value, keys, user_excluded or None, f"{', '.join(map(repr, keys))} ({value.method})")
              for value, keys in groups]
    default = settings.get(DEFAULT)
    if default is not None:
        taken = [n for n in owner if n not in user_excluded]
        request, selection = claim(default, None, user_excluded + taken or None, f"{DEFAULT!r} ({default.method})")
        for name in taken:  # the default's "excluded" rows are the other keys' layers
            selection.skipped.pop(name, None)
        claims.append((request, selection))
    # a claim speaks for the layers its keys name; every other layer is not selected (or excluded)
    for request, selection in claims:
        keys = request.layers
        for name in list(selection.skipped):
            if keys is not None and owner.get(name) not in keys:
                del selection.skipped[name]
    rest = {n: ("excluded" if n in user_excluded else "not selected") for n in candidates}
    return claims, rest


def _statistics(claims: Claims, reference=None) -> LayerStats | None:
    """The given statistics, or one pass over the data for every claim's layers (with a held-out part)."""
    request = claims[0][0]
    wanted: dict[str, None] = {}
    required: dict[str, None] = {}
    for r, selection in claims:
        names, needed = r.family.observe(r, selection)
        wanted.update(dict.fromkeys(names))
        required.update(dict.fromkeys(needed))
    stats = request.stats
    if stats is not None and all(n in stats for n in wanted):
        return stats
    if request.data is None or not wanted:
        return stats
    # a structural family's own statistics keep no held-out part; a mix keeps one for the others
    holdout = request.holdout if any(r.family.heldout for r, _ in claims) else 0.0
    return collect(request.model, request.data, list(wanted), required=list(required), positions=request.positions,
                   holdout=holdout, progress=request.progress, stop_early=request.sequential,
                   reference=reference, called_once=request.called_once)


def _run(claims: Claims, rest: dict[str, str], eval_data=None, batchnorm: bool | str = "auto") -> Report:
    """Validate, collect once, plan every claim, apply everything at once; the Report of it all, measured whole."""
    request = claims[0][0]
    model = request.model
    for r, selection in claims:
        try:
            r.family.validate(r, selection)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{r.where}: {error}" if r.where else str(error)) from None
    if request.data is None and request.stats is None:  # no pass to see a parent read a weight: read its source
        direct = read_in_source(model, {n: m for _, s in claims for n, m in s.selected.items()})
        claims = [(dataclasses.replace(r, read_directly=direct), s) for r, s in claims]
    modules = dict(model.named_modules())
    # the original's answers on held-out target data, before any layer changes (after the pass has checked the data)
    if request.sequential:  # swapped in block by block, in the model already
        references = reference_outputs(model, request.data, request.holdout, eval_data)
        rows = compress_sequentially(claims, _statistics)
    else:
        stats = _statistics(claims)
        references = reference_outputs(model, request.data, request.holdout, eval_data)
        plan = Plan()
        for r, selection in claims:
            r.family.settle(r, selection, stats)
            plan.merge(r.family.plan(r, selection, stats))
        if stats is not None:
            # a structural family fits its units on every sample and keeps no held-out part to read instead
            check_samples(stats, [n for r, s in claims if r.family.heldout for n in s.selected], plan.rows)
        rows = plan.rows
    for r, selection in claims:  # each claim's rows for the layers it left as they are, then the unclaimed ones
        add_dense_rows(rows, modules, selection.skipped, r.method.name)
    add_dense_rows(rows, modules, rest, "")
    if request.sequential:
        report = full_report(model, modules, rows)
    else:
        report = apply_plan(model, plan, request.data)
    report.options = _options(request)
    _after_apply(report, claims, references, batchnorm)
    return report


def _after_apply(report: Report, claims: Claims, references: References | None, batchnorm: bool | str) -> None:
    """Re-estimate BatchNorm statistics after a structural change (on the fitted samples), then measure the whole model."""
    request = claims[0][0]
    resized = any(r.family.resizes and any(s.selected) for r, s in claims)
    if request.data is not None and (batchnorm is True or (batchnorm == "auto" and resized)):
        report.batchnorm = reestimate_batchnorm(request.model, heldout_part(request.data, request.holdout, heldout=False))
    if references is not None:
        report.fidelity = measure(request.model, references)


def _options(request: Request) -> dict[str, object]:
    return {"holdout": request.holdout, "positions": request.positions, "sequential": request.sequential,
            "blocks": request.blocks}


def compress(
    model: nn.Module,
    data: Iterable | torch.Tensor | None = None,
    settings: Settings | Mapping[str, Settings | None] | None = None,
    *,
    stats: LayerStats | None = None,
    method: str | None = None,
    layers: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
    positions: int | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    progress: bool | None = None,
    sequential: bool = False,
    blocks: str | None = None,
    eval_data: Iterable | tuple[torch.Tensor, torch.Tensor] | None = None,
    batchnorm: bool | str = "auto",
    target: Target | None = None,
    candidates: Iterable[str] | None = None,
    recover: Recover | None = None,
    **values,
) -> Report:
    """Compress ``model`` in place with one method, or a method per layer, all or nothing.

    ``settings`` is a settings object (``nc.GPTQ(bits=4)``, ``nc.DALR(budget=0.5)``, see
    ``netcompress.METHODS``), or a plan mapping layer names, ``"re:"`` patterns and ``"_default"``
    to settings objects (``None`` leaves a layer as it is)::

        compress(model, data, {"re:.*attention.*": nc.GPTQ(bits=4), "re:.*intermediate.*": nc.DALR(keep=0.5),
                               "classifier": None, "_default": nc.Uniform(bits=8)})

    Every method of a plan reads the same statistics pass, and everything is applied at once. A
    low-rank ``budget`` or ``energy`` sizes the layers of its own settings; a layer two keys claim
    is refused. ``method="gptq", bits=4`` is sugar for ``nc.GPTQ(bits=4)``; a setting given as a
    dict of layer name → value is per layer (and selects those layers).

    Args:
        model: changed in place only if everything succeeds; on any error it is left exactly
            as it was. Its layers are named as in ``model.named_modules()``.
        data: target-domain batches, used when ``stats`` is not given (see :func:`collect`);
            the compressed model is also run on the first batch before it is returned.
        stats: statistics from :func:`collect`, to reuse one pass over data.
        layers: with one settings object, names or ``"re:"`` patterns; default every layer the
            method can take (the others are listed in the Report as left dense, with the reason).
        exclude: names or ``"re:"`` patterns of layers to leave as they are.
        positions: spatial positions sampled per image for Conv2d statistics (see :func:`collect`).
        sequential: compress block by block, each block's statistics collected on the model as
            compressed so far (GPTQ-style: ``gptq``, ``sparsegpt``, ``uniform``, ``magnitude``, and the
            low-rank methods, ``dalr`` regressing the original outputs on the compressed inputs;
            ``budget`` is then spent within each block).
        blocks: the ``ModuleList``/``Sequential`` whose children are the blocks (default: the stack
            holding most selected layers); layers outside it are compressed in the model's order.
        holdout: share of ``data`` kept apart to measure each layer's held-out error (when
            ``compress`` collects the statistics itself; 0 uses all data for fitting), and the
            whole model's fidelity (:attr:`Report.fidelity`).
        eval_data: labelled target data, ``(inputs, labels)`` tensors or batches of them: the whole
            model is then measured on it, with accuracy before and after.
        batchnorm: re-estimate every BatchNorm's running statistics on the fitted part of ``data``
            after the model is changed: ``"auto"`` after a structural change (channels removed),
            ``True`` always, ``False`` never.
        target: instead of settings, what the model must reach (``nc.Target(size=0.25)``,
            ``flops=``, ``latency=``, ``max_error=``): the planner prices every candidate of every
            family for every layer on the statistics, chooses one per layer for the least predicted
            whole-model error, checks the plan end to end on held-out samples, and runs it as a plan
            (:mod:`netcompress.planner`); the Report's ``target`` says what was reached.
        candidates: with ``target``, the families the plan may use (default ``uniform``, ``gptq``, ``dalr``).
        recover: with ``target``, ``nc.Recover(epochs=...)``: distil from the original on the same
            sample afterwards, keeping the best epoch on the held-out samples.

    Returns:
        A :class:`Report`: first the whole model's fidelity on held-out target data (top-1
        agreement and output cosine against the original, accuracy with ``eval_data``), then one
        row per weight layer of the model: compressed, left dense (with the reason) or not
        selected, each naming its method and settings (JSON that :func:`replay` reproduces), with
        in-sample and held-out relative output errors.
    """
    if batchnorm not in (True, False, "auto"):
        raise ValueError(f"batchnorm must be True, False or 'auto', got {batchnorm!r}")
    if target is not None:
        if settings is not None or method is not None or values or stats is not None or sequential:
            raise ValueError("a target chooses the settings itself; give target= without settings, method=, "
                             "method settings, stats= or sequential=")
        with all_or_nothing(model, values=True):  # recovery trains the weights in place: all of it or none
            return planner()(model, data, target, run=compress, candidates=candidates, layers=layers,
                                      exclude=exclude, holdout=holdout, positions=positions, progress=progress,
                                      eval_data=eval_data, recover=recover)
    if candidates is not None or recover is not None:
        raise ValueError("candidates= and recover= go with target=; give a target, or drop them")
    chosen = _settings(settings, method, values)
    if layers is None and isinstance(chosen, Settings):  # a setting given per layer selects those layers
        by_layer = [v for v in chosen.values().values() if isinstance(v, Mapping)]
        layers = list(by_layer[0]) if by_layer else None
    if isinstance(data, Iterator):  # read once: every claim's steps and the check after apply see the same batches
        data = list(data)
    if not isinstance(sequential, bool):
        raise ValueError(f"sequential must be True or False, got {sequential!r}")
    if blocks is not None and not sequential:
        raise ValueError("blocks names the blocks of sequential compression; pass sequential=True with it")
    base = dict(data=data, stats=stats, positions=positions, holdout=holdout, progress=progress,
                sequential=sequential, blocks=blocks)
    with all_or_nothing(model, values=False):  # a method that writes into the model in place and fails is caught
        claims, rest = _claims(model, chosen, layers, exclude, base)
        return _run(claims, rest, eval_data, batchnorm)


def replay(report: Report | str, model: nn.Module, data: Iterable | torch.Tensor | None = None, *,
           stats: LayerStats | None = None, progress: bool | None = None) -> Report:
    """Compress ``model`` (a fresh copy of the original) as ``report`` records: the same settings on the same
    layers with the same options. On the same data it reproduces the same weights. ``report`` may be its JSON."""
    if isinstance(report, str):
        report = Report.from_json(report)
    return compress(model, data, report.recipe(), stats=stats, progress=progress, **report.options)
