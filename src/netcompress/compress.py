"""``compress``: select → validate → statistics → plan → apply, all or nothing, for any registered method.

``compress`` knows no method and no family by name. It finds the method in the registry
(:mod:`netcompress.registry`) and hands a :class:`Request` to the method's family, whose
:meth:`Family.compress` runs the five steps:

1. *select*: every layer of the model that holds a weight matrix becomes a report row,
   either selected, left dense with the reason (a layer the method cannot take), or not
   selected;
2. *validate*: every setting is checked against every selected layer before any pass
   over data;
3. *statistics*: one streaming pass (:func:`collect`), with a held-out part;
4. *plan*: every replacement is computed while the model is untouched;
5. *apply*: the replacements are swapped in and, with data, the model is run once; any
   failure puts the model back exactly as it was (:mod:`netcompress.apply`).

:class:`Family` itself runs methods that replace one layer at a time (``"layer"``: pruning
masks, quantization); the low-rank family (:mod:`netcompress.lowrank.family`) and the
structural one (:mod:`netcompress.prune.family`) override the steps they do differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from netcompress._core.blocks import find_blocks
from netcompress._core.layers import (
    DENSE,
    explicit_names,
    plain_layer,
    progress_disabled,
    read_in_source,
    replace_module,
    resolve_layers,
)
from netcompress._core.transaction import all_or_nothing
from netcompress.apply import (
    Plan,
    apply_plan,
    behind_padding,
    check_runs,
    check_samples,
    first_batch,
    full_report,
    layer_row,
    layer_settings,
    output_errors,
    readable_as_weight,
    stored_params,
    swap_in,
)
from netcompress.registry import FAMILIES, METHODS, Method, register_family
from netcompress.registry import method as _method
from netcompress.report import LayerRow, Report
from netcompress.stats.collect import LayerStats, collect, layers_called_once

__all__ = ["DEFAULT_HOLDOUT", "METHODS", "Family", "Request", "compress", "direct_reader", "leave_for_reader"]

# Layers whose inputs collect() can observe (embeddings take indices: data-free methods only).
OBSERVABLE = DENSE

# Held-out share of the data that compress keeps apart for honest errors when it collects statistics itself.
DEFAULT_HOLDOUT = 0.2

# compress's keywords that size a method; each family says which of them it takes.
SIZING = ("rank", "keep", "energy", "budget")


@dataclass
class Request:
    """One call of :func:`compress`: the model and its data, the method and everything given for it."""

    model: nn.Module
    data: Iterable | torch.Tensor | None
    stats: LayerStats | None
    method: Method
    settings: dict[str, object]
    sizing: dict[str, object] = field(default_factory=dict)
    layers: Iterable[str] | str | None = None
    exclude: Iterable[str] | str | None = None
    positions: int | None = None
    holdout: float = DEFAULT_HOLDOUT
    progress: bool | None = None
    sequential: bool = False
    blocks: str | None = None
    called_once: bool = False  # every selected layer runs at most once per forward pass (checked once)
    read_directly: dict[str, str] = field(default_factory=dict)  # without data: layers a parent's source reads

    def fail(self, name: str, explicit: set[str], error: Exception, selected: dict, skipped: dict) -> None:
        """A layer a setting does not fit: raise if the user named it, else leave it dense with the reason."""
        if name in explicit or len(selected) == 1:
            raise type(error)(f"layer {name!r}: {error}") from None
        skipped[name] = str(error)
        del selected[name]


class Family:
    """How ``compress`` runs the methods of one family; this base runs methods that replace one layer at a time.

    ``fn(layer, moments_or_None, **settings) -> module``. A subclass overrides the steps it does
    differently (:meth:`drop`, :meth:`validate`, :meth:`plan`, or the whole :meth:`compress`).
    """

    name = "layer"
    sizing: tuple[str, ...] = ()  # which of compress's sizing keywords its methods take
    needs_data = False  # True where every method of the family must run the model on data
    sequential = True  # whether compress(..., sequential=True) can run its methods block by block

    def compress(self, request: Request) -> Report:
        chosen = request.method
        explicit = explicit_names(request.layers)
        selected, skipped = resolve_layers(request.model, request.layers, chosen.accepts, request.exclude)
        self.drop(request, selected, skipped, explicit)
        if not selected:
            first = next(iter(skipped.items()))
            raise ValueError(f"no layer of the model can be compressed by {chosen.name!r} ({first[0]!r}: {first[1]})")
        self.validate(request, selected, skipped, explicit)
        if request.data is None and request.stats is None:  # no pass to see a parent read a weight: read its source
            request.read_directly = read_in_source(request.model, selected)
        if request.sequential:
            return self.compress_sequentially(request, selected, skipped, explicit)
        stats = self.statistics(request, selected, skipped, explicit)
        plan = self.plan(request, selected, stats)
        if stats is not None:
            check_samples(stats, selected, plan.rows)
        return apply_plan(request.model, plan, skipped, chosen.name, request.data)

    def compress_sequentially(self, request: Request, selected: dict[str, nn.Module], skipped: dict[str, str],
                              explicit: set[str]) -> Report:
        """Block after block, each compressed on the inputs the already compressed blocks before it give.

        As in GPTQ and SparseGPT (Frantar and Alistarh, ICML 2023): the statistics of a block's
        layers are collected on the model as compressed so far, so each block corrects for the
        errors of those before it. Each batch also runs through the original network (the
        compressed layers swapped back), so that every layer knows its original inputs too: the
        Report's errors are against the original network's outputs, and DALR regresses those
        outputs on the compressed prefix's inputs. Nothing but the statistics is kept between
        passes.
        """
        model, chosen = request.model, request.method
        if request.data is None or request.stats is not None:
            raise ValueError("sequential=True collects statistics block by block from the data; pass data, not stats")
        modules = dict(model.named_modules())
        rows: dict[str, LayerRow] = {}
        data = request.data if isinstance(request.data, torch.Tensor) else list(request.data)
        # One whole pass checks no layer runs twice, so that every block's passes stop at the block
        # (a whole pass of a language model also makes its logits, a vocabulary-wide tensor).
        once = layers_called_once(model, first_batch(data), list(selected))
        request = dataclasses.replace(request, data=data, called_once=once)
        given, arguments = self.arguments(request, selected)  # once, on the original weights of every layer
        originals: dict[str, nn.Module] = {}
        with all_or_nothing(model, values=False):  # only modules are swapped: nothing to copy
            for names in find_blocks(model, selected, request.blocks):
                part = {name: selected[name] for name in names}
                reference = (lambda: original_layers(model, originals)) if originals else None
                stats = self.statistics(request, part, skipped, explicit, reference)
                if not part:
                    continue
                plan = self.plan(request, part, stats, (given, arguments))
                if stats is not None:
                    check_samples(stats, part, plan.rows)
                originals.update({name: modules[name] for name in plan.replacements})
                swap_in(model, plan)
                rows.update(plan.rows)
                del stats, plan  # one block's statistics at a time: freed before the next block's pass
            check_runs(model, first_batch(data))
        return full_report(model, modules, rows, skipped, chosen.name)

    def drop(self, request: Request, selected: dict[str, nn.Module], skipped: dict[str, str],
             explicit: set[str]) -> None:
        """Leave dense (in ``skipped``, with the reason) the selected layers no method of this family can take."""

    def validate(self, request: Request, selected: dict[str, nn.Module], skipped: dict[str, str],
                 explicit: set[str]) -> None:
        """Every setting against every selected layer, before any pass over data.

        A layer of the default selection that a setting does not fit (say, a group size that does
        not divide its width) is left dense with the reason; a layer named explicitly raises.
        """
        chosen, settings = request.method, request.settings
        if chosen.validate is not None:
            chosen.validate(**settings)
        if chosen.check is None:
            return
        for name, layer in list(selected.items()):
            given = layer_settings(name, settings)  # a dict setting that lacks the layer is the user's error
            try:
                chosen.check(plain_layer(layer), **given)
            except (ValueError, TypeError) as error:
                request.fail(name, explicit, error, selected, skipped)
        if not selected:
            first = next(iter(skipped.items()))
            raise ValueError(f"no layer of the model fits these settings (layer {first[0]!r}: {first[1]})")

    def statistics(self, request: Request, selected: dict[str, nn.Module], skipped: dict[str, str],
                   explicit: set[str], reference: Callable[[], AbstractContextManager] | None = None
                   ) -> LayerStats | None:
        """The given statistics, or one pass over the data (with a held-out part) for the selected layers.

        ``reference`` (sequential mode) also gathers each layer's inputs in the original network
        (see :func:`collect`). A layer the pass never reached (the data never got there, or its
        parent computes with its weight directly, ``F.linear(x, self.qkv.weight)``) is left dense
        with that reason by a method that needs statistics; only one the user named raises.
        """
        chosen, stats, data = request.method, request.stats, request.data
        if stats is None and (data is not None or chosen.needs_stats):
            if data is None:
                raise ValueError(f"method {chosen.name!r} needs target data or precomputed stats (netcompress.collect)")
            observable = [n for n, m in selected.items() if isinstance(m, OBSERVABLE)]
            if observable or chosen.needs_stats:
                required = [n for n in observable if n in explicit] if chosen.needs_stats else []
                stats = collect(request.model, data, observable, required=required, positions=request.positions,
                                holdout=request.holdout, progress=request.progress, stop_early=request.sequential,
                                reference=reference, called_once=request.called_once)
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
        return stats

    def arguments(self, request: Request, selected: dict[str, nn.Module]) -> tuple[dict, dict]:
        """Each layer's settings as given, and the arguments its function gets (after the method's ``prepare``)."""
        chosen = request.method
        given = {name: layer_settings(name, request.settings) for name in selected}
        arguments = {name: dict(s) for name, s in given.items()}
        if chosen.prepare is not None:  # a setting that couples the layers (a global threshold) sees all of them
            chosen.prepare({name: plain_layer(m) for name, m in selected.items()}, arguments)
        return given, arguments

    def plan(self, request: Request, selected: dict[str, nn.Module], stats: LayerStats | None,
             prepared: tuple[dict, dict] | None = None) -> Plan:
        """Each selected layer's replacement and report row, one layer at a time."""
        from tqdm.auto import tqdm

        chosen = request.method
        given, arguments = prepared if prepared is not None else self.arguments(request, selected)
        plan = Plan()
        for name, layer in tqdm(selected.items(), desc=chosen.name, unit="layer",
                                disable=progress_disabled(request.progress)):
            moments = stats[name] if stats is not None and name in stats else None
            try:
                new = chosen.fn(plain_layer(layer), moments, **arguments[name])
            except (ValueError, TypeError) as error:
                raise type(error)(f"layer {name!r}: {error}") from None
            reader = direct_reader(request, stats, name)
            if reader is not None and not readable_as_weight(layer, behind_padding(layer, new)):
                leave_for_reader(request, plan, name, layer, reader, f"its replacement ({type(new).__name__})")
                continue
            error, held = output_errors(layer, new, stats, name)
            note = f"{reader}; its replacement's weight is what that module now computes with" if reader else ""
            plan.add(name, layer, new, layer_row(
                name, layer, chosen.name, params_after=stored_params(new), relative_error=error, heldout_error=held,
                setting=", ".join(f"{k}={v}" for k, v in given[name].items()), bits=getattr(new, "bits", None),
                note=note))
        return plan


register_family(Family())


def direct_reader(request: Request, stats: LayerStats | None, name: str) -> str | None:
    """Why another module computes with layer ``name``'s weight directly (``None`` if none is known to).

    From the statistics pass (:attr:`LayerStats.read_directly`) or, without data, from the
    parent's source (:func:`~netcompress._core.layers.read_in_source`).
    """
    seen = stats.read_directly.get(name) if stats is not None else None
    return seen or request.read_directly.get(name)


def leave_for_reader(request: Request, plan: Plan, name: str, layer: nn.Module, reader: str, replacement: str) -> None:
    """Leave layer ``name`` dense in ``plan``: a module reading its weight directly (``reader``) could not read
    its ``replacement``'s (``"a factored replacement"``, say). A layer the user named raises with that reason."""
    note = (f"{reader}; {replacement} has no weight for it to read, so replacing the layer would not change what "
            "that module computes")
    if name in explicit_names(request.layers):
        raise ValueError(f"layer {name!r} cannot be compressed by {request.method.name!r}: {note}")
    plan.rows[name] = layer_row(name, layer, request.method.name, status="left dense", note=note)


@contextmanager
def original_layers(model: nn.Module, originals: Mapping[str, nn.Module]) -> Iterator[None]:
    """The model as the original network for the time of the context: the compressed layers swapped back."""
    modules = dict(model.named_modules())
    compressed = {name: modules[name] for name in originals}
    for name, layer in originals.items():
        replace_module(model, name, layer)
    try:
        yield
    finally:
        for name, layer in compressed.items():
            replace_module(model, name, layer)


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
    sequential: bool = False,
    blocks: str | None = None,
    **settings,
) -> Report:
    """Compress the selected layers of ``model`` in place with a registered method, all or nothing.

    Low-rank methods (``"svd"``, ``"svd-bc"``, ``"dalr"``, ``"dalr-bc"``) take exactly one of
    ``rank`` (an int, or layer name → int), ``keep`` (fraction of each layer's parameters),
    ``energy`` (fraction of each layer's target output energy kept) or ``budget`` (fraction of
    the selected layers' parameters, spread where it lowers the target output error most per
    parameter; a layer is left dense where factoring it saves too little for its error).
    Pruning and quantization methods take their settings as keywords (see ``METHODS`` and the
    method table in docs/getting-started.md); a setting given as a dict of layer name → value is per layer.

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
        sequential: compress block by block, each block's statistics collected on the model as
            compressed so far (GPTQ-style: ``gptq``, ``sparsegpt``, ``uniform``, ``magnitude``, and the
            low-rank methods, ``dalr`` regressing the original outputs on the compressed inputs;
            ``budget`` is then spent within each block).
        blocks: the ``ModuleList``/``Sequential`` whose children are the blocks (default: the stack
            holding most selected layers); layers outside it are compressed in the model's order.
        holdout: share of ``data`` kept apart to measure each layer's held-out error (when
            ``compress`` collects the statistics itself; 0 uses all data for fitting).

    Returns:
        A :class:`Report` with one row per weight layer of the model: compressed, left dense
        (with the reason) or not selected, with in-sample and held-out relative output errors.
    """
    if lam is not None:
        settings["lam"] = lam
    chosen = _method(method, settings)
    family = FAMILIES[chosen.family]
    sizing = {k: v for k, v in dict(rank=rank, keep=keep, energy=energy, budget=budget).items() if v is not None}
    foreign = [k for k in sizing if k not in family.sizing]
    if foreign:
        sized = sorted({f.name for f in FAMILIES.values() if set(foreign) & set(f.sizing)})
        raise ValueError(f"{', '.join(foreign)} sizes {' and '.join(sized)} methods; method {method!r} takes "
                         f"{', '.join(chosen.settings) or 'no settings'}")
    if layers is None:  # a setting given per layer selects those layers
        by_layer = [v for v in (rank, *settings.values()) if isinstance(v, Mapping)]
        layers = list(by_layer[0]) if by_layer else None
    if not isinstance(sequential, bool):
        raise ValueError(f"sequential must be True or False, got {sequential!r}")
    if blocks is not None and not sequential:
        raise ValueError("blocks names the blocks of sequential compression; pass sequential=True with it")
    if sequential and not family.sequential:
        raise ValueError(f"sequential=True runs quantization, pruning masks and low-rank methods block by block; "
                         f"method {method!r} is a {family.name} method, which changes several layers together")
    request = Request(model, data, stats, chosen, settings, sizing, layers, exclude, positions, holdout, progress,
                      sequential, blocks)
    with all_or_nothing(model, values=False):  # a method that writes into the model in place and fails is caught
        return family.compress(request)

