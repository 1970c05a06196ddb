"""The family protocol: how ``compress`` runs the methods of one family, one claim at a time.

A *claim* is one settings object and the layers it was given (``compress(model, data,
{"re:.*attn.*": nc.GPTQ(bits=4), "_default": nc.Uniform(bits=8)})`` makes two). Each claim is a
:class:`Request` (the model, its data, the settings, the options of the call) and a
:class:`Selection` (what it compresses, what it leaves dense and why, what the user named),
built once and handed through the steps a family runs:

1. :meth:`Family.select`: the layers the claim names that its method can take;
2. :meth:`Family.validate`: every setting against every selected layer, before any pass over data;
3. :meth:`Family.observe`: the layers the one shared statistics pass must see;
4. :meth:`Family.settle`: after that pass, leave dense what it never reached (methods that need it);
5. :meth:`Family.plan`: every replacement and its report row, while the model is untouched.

:class:`Family` itself runs methods that replace one layer at a time (``"layer"``: pruning masks,
quantization); the low-rank family (:mod:`netcompress.lowrank.family`) and the structural one
(:mod:`netcompress.prune.family`) override the steps they do differently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import nn

from netcompress._core.layers import (
    DENSE,
    explicit_names,
    plain_layer,
    progress_disabled,
    resolve_layers,
)
from netcompress.apply import (
    Plan,
    behind_padding,
    layer_row,
    layer_settings,
    output_errors,
    readable_as_weight,
    stored_params,
)
from netcompress.registry import FAMILIES, Method, Settings, register_family
from netcompress.report import LayerRow

if TYPE_CHECKING:
    from netcompress.stats.collect import LayerStats

__all__ = ["DEFAULT_HOLDOUT", "Family", "Request", "Selection", "direct_reader", "leave_for_reader"]

# Held-out share of the data that compress keeps apart for honest errors when it collects statistics itself.
DEFAULT_HOLDOUT = 0.2


@dataclass
class Request:
    """One claim of a :func:`~netcompress.compress` call: the model and its data, one settings object, the options."""

    model: nn.Module
    data: Iterable | torch.Tensor | None
    stats: LayerStats | None
    method: Method
    settings: Settings
    layers: Iterable[str] | str | None = None
    exclude: Iterable[str] | str | None = None
    positions: int | None = None
    holdout: float = DEFAULT_HOLDOUT
    progress: bool | None = None
    sequential: bool = False
    blocks: str | None = None
    called_once: bool = False  # every selected layer runs at most once per forward pass (checked once)
    read_directly: dict[str, str] = field(default_factory=dict)  # without data: layers a parent's source reads
    where: str = ""  # how errors name the claim in a mix ("'re:.*attn.*' (gptq)"), empty for a single method

    @property
    def family(self) -> Family:
        return FAMILIES[self.method.family]

    @cached_property
    def arguments(self) -> dict[str, object]:
        """The settings the method's function takes (the family's sizing fields left out)."""
        return self.settings.values(self.method.settings)

    def row(self, name: str, layer: nn.Module, **fields) -> LayerRow:
        """A report row of a layer this claim considered: named by the method, with the settings that replay it."""
        return layer_row(name, layer, self.method.name, settings=self.settings.to_json(), **fields)


@dataclass
class Selection:
    """One claim's layers, built once: what it compresses, what it leaves dense and why, what the user named."""

    selected: dict[str, nn.Module]
    skipped: dict[str, str]
    explicit: set[str]
    context: dict[str, object] = field(default_factory=dict)  # what a family keeps between its steps (a graph)

    def leave_dense(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        self.selected.pop(name, None)

    def fail(self, name: str, error: Exception) -> None:
        """A layer a setting does not fit: raise if the user named it (or it is the only one), else leave it dense."""
        if name in self.explicit or len(self.selected) == 1:
            raise type(error)(f"layer {name!r}: {error}") from None
        self.leave_dense(name, str(error))

    def require(self, what: str) -> None:
        """Refuse a claim left with no layer, naming the first reason."""
        if not self.selected:
            first = next(((n, r) for n, r in self.skipped.items() if r not in ("not selected", "excluded")),
                          next(iter(self.skipped.items()), ("", "no weight layers")))
            raise ValueError(f"{what} ({first[0]!r}: {first[1]})")


class Family:
    """How ``compress`` runs the methods of one family; this base runs methods that replace one layer at a time.

    ``fn(layer, moments_or_None, **settings) -> module``. A subclass overrides the steps it does differently.
    """

    name = "layer"
    needs_data = False  # True where every method of the family must run the model on data
    sequential = True  # whether compress(..., sequential=True) can run its methods block by block
    heldout = True  # whether its statistics keep a held-out share apart (errors on unseen samples)
    resizes = False  # whether it changes layers' widths (BatchNorm statistics are then re-estimated)

    def select(self, request: Request) -> Selection:
        chosen = request.method
        selected, skipped = resolve_layers(request.model, request.layers, chosen.accepts, request.exclude)
        selection = Selection(selected, skipped, explicit_names(request.layers))
        self.drop(request, selection)
        selection.require(f"no layer of the model can be compressed by {chosen.name!r}")
        return selection

    def drop(self, request: Request, selection: Selection) -> None:
        """Leave dense (with the reason) the selected layers no method of this family can take."""

    def validate(self, request: Request, selection: Selection) -> None:
        """Every setting against every selected layer, before any pass over data.

        A layer of the default selection that a setting does not fit (say, a group size that does
        not divide its width) is left dense with the reason; a layer named explicitly raises.
        """
        chosen = request.method
        if chosen.check is None:
            return
        for name, layer in list(selection.selected.items()):
            given = layer_settings(name, request.arguments)  # a dict setting that lacks the layer is the user's error
            try:
                if _rounds_inputs(request, name) and isinstance(layer, nn.Embedding):
                    raise ValueError("an embedding's input is token ids, not activations; leave it out of "
                                     "activations= (exclude it, or give it its own settings without activations)")
                chosen.check(plain_layer(layer), **given)
            except (ValueError, TypeError) as error:
                selection.fail(name, error)
        selection.require("no layer of the model fits these settings")

    def observe(self, request: Request, selection: Selection) -> tuple[list[str], list[str]]:
        """The layers the statistics pass must see, and those of them it must reach (else the call fails)."""
        chosen = request.method
        calibrated = _rounds_inputs(request)  # a static input grid needs the inputs seen
        if request.stats is None and request.data is None:
            if chosen.needs_stats or calibrated:
                needs = "static activation quantization (activations=)" if calibrated else f"method {chosen.name!r}"
                raise ValueError(f"{needs} needs target data or precomputed stats (netcompress.collect)")
            return [], []
        observable = [n for n, m in selection.selected.items() if isinstance(m, DENSE)]
        required = [n for n in observable if n in selection.explicit] if chosen.needs_stats or calibrated else []
        return observable, required

    def settle(self, request: Request, selection: Selection, stats: LayerStats | None) -> None:
        """After the pass: a method that needs statistics leaves dense the layers it never reached.

        A layer the pass never reached (the data never got there, or its parent computes with its
        weight directly, ``F.linear(x, self.qkv.weight)``) is left dense with that reason; only one
        the user named raises.
        """
        if not request.method.needs_stats:
            return
        unreached = [n for n in selection.selected if stats is None or n not in stats]
        named = [n for n in unreached if n in selection.explicit]
        if named:
            raise ValueError(f"stats hold nothing for layer(s) {', '.join(named)}; "
                             "collect them with layers=[...] and data that reaches them")
        for name in unreached:
            selection.leave_dense(name, stats.skipped.get(name, "no statistics were collected for it")
                                  if stats is not None else "no statistics were collected for it")
        if not selection.selected:
            raise ValueError(f"no selected layer has statistics ({unreached[0]!r}: {selection.skipped[unreached[0]]})")

    def arguments(self, request: Request, selected: dict[str, nn.Module]) -> dict[str, dict]:
        """The arguments each layer's function gets (its own values, after the method's ``prepare``)."""
        chosen = request.method
        arguments = {name: layer_settings(name, request.arguments) for name in selected}
        if chosen.prepare is not None:  # a setting that couples the layers (a global threshold) sees all of them
            chosen.prepare({name: plain_layer(m) for name, m in selected.items()}, arguments)
        return arguments

    def plan(self, request: Request, selection: Selection, stats: LayerStats | None,
             arguments: dict[str, dict] | None = None) -> Plan:
        """Each selected layer's replacement and report row, one layer at a time."""
        from tqdm.auto import tqdm

        chosen, selected = request.method, selection.selected
        arguments = self.arguments(request, selected) if arguments is None else arguments
        plan = Plan()
        for name, layer in tqdm(selected.items(), desc=chosen.name, unit="layer",
                                disable=progress_disabled(request.progress)):
            moments = stats[name] if stats is not None and name in stats else None
            inputs = _input_settings(request, name)
            grid = None
            try:
                new = chosen.fn(plain_layer(layer), moments, **arguments[name])
                if inputs:
                    grid = chosen.inputs.calibrate(name, new, stats, inputs)
            except (ValueError, TypeError) as error:
                raise type(error)(f"layer {name!r}: {error}") from None
            reader = direct_reader(request, stats, name)
            if reader is not None and not readable_as_weight(layer, behind_padding(layer, new)):
                leave_for_reader(request, plan, name, layer, reader, f"its replacement ({type(new).__name__})")
                continue
            error, held = output_errors(layer, new, stats, name)
            note = f"{reader}; its replacement's weight is what that module now computes with" if reader else ""
            if grid is not None:
                error, held = chosen.inputs.errors(layer, new, stats, name, grid, error, held)
                note = (note + "; " if note else "") + (f"input grid {inputs['activations']}-bit, clip {grid.clip} "
                                                         f"(judged on the {grid.judged_on} samples)")
            shown = layer_settings(name, request.settings.given())
            plan.add(name, layer, new, request.row(
                name, layer, params_after=stored_params(new), relative_error=error, heldout_error=held,
                setting=", ".join(f"{k}={v}" for k, v in shown.items()), bits=getattr(new, "bits", None), note=note))
        return plan


register_family(Family())


def _input_settings(request: Request, name: str | None = None) -> dict:
    """The settings of the claim's input stage (``activations=`` ...) for layer ``name``; empty when it has none."""
    stage = request.method.inputs
    if stage is None:
        return {}
    values = request.settings.values(tuple(stage.keys))
    values = layer_settings(name, values) if name is not None else values
    return values if values.get(stage.keys[0]) is not None else {}


def _rounds_inputs(request: Request, name: str | None = None) -> bool:
    """Whether the claim rounds its layers' inputs too (static activation quantization)."""
    return bool(_input_settings(request, name))


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
