"""Replacements computed while the model is untouched, their report rows, and the all-or-nothing swap.

Every family plans into a :class:`Plan` (layer name → new module, layer name → report row);
:func:`apply_plan` swaps them in together, runs the model once on a batch, and puts the model
back exactly as it was if anything fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from netcompress._core.architecture import remember_original
from netcompress._core.layers import (
    Padded,
    explicit_padding,
    plain_layer,
    reparametrized_note,
    replace_module,
)
from netcompress._core.sizes import saved_bytes
from netcompress._core.sources import copy_trainability
from netcompress._core.tensors import (
    WeightRows,
    _take,
    batch_size,
    call_model,
    model_device_dtype,
    plain_bias,
    weight_rows,
)
from netcompress._core.transaction import all_or_nothing, evaluating
from netcompress.report import LayerRow, Report
from netcompress.stats.moments import Moments, relative_output_error

if TYPE_CHECKING:
    from netcompress.stats.collect import LayerStats

__all__ = ["Plan", "add_dense_rows", "apply_plan", "behind_padding", "check_runs", "check_samples", "first_batch", "full_report", "swap_in", "layer_row", "layer_settings",
           "output_errors", "readable_as_weight", "stored_params"]


def stored_params(module: nn.Module) -> int:
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
    for name, p in module.named_parameters(recurse=False):
        mask = getattr(module, "mask", None) if name == "weight" else None
        total += int(mask.sum()) if mask is not None else p.numel()
    return total + sum(stored_params(child) for child in module.children())  # a factored layer's quantized factors


def output_errors(old: nn.Module, new: nn.Module, stats: LayerStats | None, name: str) -> tuple[float | None, float | None]:
    """In-sample and held-out relative output error of replacing ``old`` by ``new``.

    A re-parametrised ``old`` is compared through its effective weight (:func:`plain_layer`).
    """
    if stats is None or name not in stats:
        return None, None
    old = plain_layer(old)
    # Read a block of rows at a time: a 32,000-row head is never decoded or copied to float64 whole.
    W, b = WeightRows(old), plain_bias(old)
    W_new, b_new = WeightRows(new), plain_bias(new)
    groups = getattr(old, "groups", 1)
    in_sample = relative_output_error(W, b, W_new, b_new, stats[name], groups)
    heldout = stats.heldout.layers.get(name) if stats.heldout is not None else None
    held = relative_output_error(W, b, W_new, b_new, heldout, groups) if heldout is not None and heldout.count else None
    return in_sample, held


def readable_as_weight(old: nn.Module, new: nn.Module) -> bool:
    """Whether a module that computes with ``old.weight`` and ``old.bias`` directly (``F.linear(x, qkv.weight,
    qkv.bias)``) computes, once ``new`` is in ``old``'s place, exactly what ``new`` computes.

    True only when ``new`` has a ``weight`` of ``old``'s shape equal to the matrix it computes with
    (a quantized layer's decoded weight; a masked layer whose pruned weights are zero) and a
    ``bias`` equal to the one it adds. A factored layer has no ``weight``: a parent reading it
    would fail, and reading ``old``'s would keep the dense layer in use.
    """
    weight, before = getattr(new, "weight", None), plain_layer(old)._parameters.get("weight")
    if not isinstance(weight, torch.Tensor) or before is None or weight.shape != before.shape:
        return False
    with torch.no_grad():
        computed = weight_rows(new, slice(None))
        if not torch.equal(weight.detach().reshape(computed.shape).to(computed.dtype), computed):
            return False
        bias, added = getattr(new, "bias", None), plain_bias(new)
        if (bias is None) != (added is None):
            return False
        return bias is None or torch.equal(bias.detach(), added.detach())


def layer_row(name: str, old: nn.Module, method: str, **fields) -> LayerRow:
    """The Report's row of layer ``name`` (``old`` as it is in the model), ``status`` "compressed" unless given.

    A re-parametrised layer is sized by its effective weight; a compressed one's note says the
    re-parametrisation is gone (:func:`~netcompress._core.layers.reparametrized_note`).
    """
    inner = old.layer if isinstance(old, Padded) else old
    plain = plain_layer(inner)
    weight = plain._parameters.get("weight")
    shape = list(weight.shape) if isinstance(weight, torch.Tensor) else [stored_params(old)]
    before = stored_params(old) if plain is inner else stored_params(plain)
    fields.setdefault("params_after", before)
    note = reparametrized_note(inner) if fields.get("status", "compressed") == "compressed" else ""
    if note:
        fields["note"] = f"{fields['note']}; {note}" if fields.get("note") else note
    return LayerRow(name=name, kind=type(old).__name__, shape=shape, method=method, rank=fields.pop("rank", None),
                    params_before=before, relative_error=fields.pop("relative_error", None), **fields)


def behind_padding(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` behind the explicit padding ``old`` applied before its product, if any."""
    padding = explicit_padding(old)
    if padding is None or explicit_padding(new) is not None:  # a new conv that pads itself ('same') needs no wrapper
        return new
    return Padded(padding[0], padding[1], new)


def layer_settings(name: str, settings: Mapping[str, object]) -> dict:
    """A layer's settings: a setting given as a dict of layer name → value is looked up."""
    chosen = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            if name not in value:
                raise ValueError(f"{key} gives no value for layer {name!r}; add it to the {key} dict or drop the layer")
            value = value[name]
        chosen[key] = value
    return chosen


class Plan:
    """Replacements and report rows computed while the model is untouched."""

    def __init__(self) -> None:
        self.replacements: dict[str, nn.Module] = {}
        self.rows: dict[str, LayerRow] = {}

    def add(self, name: str, old: nn.Module, new: nn.Module, row: LayerRow) -> None:
        """Plan to replace layer ``name`` by ``new`` (behind ``old``'s explicit padding, if any).

        ``new``'s parameters take ``old``'s ``requires_grad`` (:func:`~netcompress._core.sources.copy_trainability`):
        a frozen layer comes out frozen.
        """
        self.replacements[name] = behind_padding(old, copy_trainability(new, old))
        self.rows[name] = row

    def merge(self, other: Plan) -> None:
        """Add another claim's plan; a layer two claims would both replace is refused."""
        both = sorted(set(self.replacements) & set(other.replacements))
        if both:
            raise ValueError(f"layer {both[0]!r} would be replaced by two claims of the plan (a structural method "
                             "resizes it as a reader of the channels it removes); exclude it from one of them")
        self.replacements.update(other.replacements)
        self.rows.update(other.rows)


def check_samples(stats: LayerStats, selected: Iterable[str], rows: dict[str, LayerRow]) -> None:
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


def first_batch(data):
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (list, tuple)) and data:
        return data[0]
    return None


@torch.no_grad()
def check_runs(model: nn.Module, batch) -> None:
    """Run the compressed model on the first sample of a batch; a failure or a non-finite output is an error.

    One sample proves the swapped layers fit together and costs a fraction of the batch (a
    language model's logits for a whole batch are a vocabulary-wide tensor per token).
    """
    if batch_size(batch) > 1:
        batch = _take(batch, torch.zeros(1, dtype=torch.long))
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


def swap_in(model: nn.Module, plan: Plan) -> None:
    """Put the planned replacements into ``model`` (no undo: call inside :func:`all_or_nothing`)."""
    modules = dict(model.named_modules())
    for name, new in plan.replacements.items():
        new.train(modules[name].training)  # a replacement keeps its layer's train/eval mode
        remember_original(new, modules[name])  # so a saved file records the architecture it came from
        replace_module(model, name, new)


def add_dense_rows(rows: dict[str, LayerRow], modules: dict[str, nn.Module], skipped: dict[str, str],
                   method: str) -> None:
    """Rows for the layers left as they are: "not selected" (or excluded), else "left dense" with the reason."""
    for name, reason in skipped.items():
        if name in modules and name not in rows:
            status = "not selected" if reason in ("not selected", "excluded") else "left dense"
            rows[name] = layer_row(name, modules[name], method, status=status,
                                   note="" if reason == "not selected" else reason)


def full_report(model: nn.Module, modules: dict[str, nn.Module], rows: dict[str, LayerRow]) -> Report:
    """The rows in the model's order (``modules``: the model as it was); ``saved_bytes`` measured on the model now."""
    now = dict(model.named_modules())
    for name, row in rows.items():
        if name in now:
            row.saved_bytes = saved_bytes(now[name])
    order = {name: i for i, name in enumerate(modules)}
    return Report(sorted(rows.values(), key=lambda r: order.get(r.name, len(order))))


def apply_plan(model: nn.Module, plan: Plan, data) -> Report:
    """Swap every replacement in, run the model once on the first batch, and report; on any failure undo it all."""
    modules = dict(model.named_modules())
    batch = first_batch(data)
    with all_or_nothing(model, values=False):  # only modules are swapped: nothing to copy
        swap_in(model, plan)
        if batch is not None:
            check_runs(model, batch)
    return full_report(model, modules, plan.rows)
