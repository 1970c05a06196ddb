"""Structured pruning: remove whole units / channels so that layers become physically smaller.

Three roles are kept apart (as Torch-Pruning does): *what is coupled* comes from the
dependency tracer (:mod:`netcompress._graph`), *how important* a channel is from the
criteria below, *how much* from ``sparsity`` (one share for every layer, or a dict of layer
name → share, which PEEL's reallocation (:mod:`.reallocate`) uses to give each layer its own
channel count). Removing channels of a producer slices its rows and the matching inputs of
every layer and BatchNorm that reads them.

* ``activation`` (the "Pruning (mean)"/"Pruning (max)" baselines of Masana et al., ICCV 2017; Hu et al.'s
  neuron importance): units or channels ranked by their rectified response ``max(y, 0)`` on the
  target data, over samples (and, for a convolution, every position): ``criterion="mean"``,
  ``"max"`` or ``"rate"`` (activation rate). The response is the layer's own output: behind a
  BatchNorm it is read before the normalisation.
* ``channel``: filters ranked by how much output energy they feed into the layers that
  read them on the target data (``criterion="energy"``: ``Σ_f ||W_c[:, f]||² E[x_f²]``), or
  by the plain L1 norm of the filter (``criterion="l1"``). With ``refit=True`` each
  consumer is then re-fitted by least squares on its target input statistics, bias
  included: ``[W' b'] = [W b] G̃[:, K] G̃[K, K]⁻¹`` with ``G̃`` the second moment of ``[x; 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from netcompress._core.tensors import weight_matrix
from netcompress.prune.dependency import ChannelGraph, Segment, trace_channels
from netcompress.prune.magnitude import _check_sparsity
from netcompress.prune.modules import PRUNABLE, MaskedConv2d, MaskedLinear
from netcompress.registry import Settings, register

if TYPE_CHECKING:
    from netcompress.stats.collect import LayerStats

__all__ = ["activation", "channel", "check_activation", "check_channel", "needed_layers", "plan_graph"]

REFIT_RIDGE = 1e-6  # relative to the mean diagonal of the kept second moment


def plan_graph(model: nn.Module, names: list[str], example: torch.Tensor) -> tuple[ChannelGraph, list[list[str]]]:
    """Trace the model and group the requested producers with the ones coupled to them."""
    graph = trace_channels(model, example)
    groups, placed = [], set()
    for name in names:
        if name in placed:
            continue
        group = graph.group(name)
        for member in group:
            if member in graph.blocked:
                raise ValueError(f"cannot prune the units of layer {member!r}: {graph.blocked[member]}")
        groups.append(group)
        placed.update(group)
    return graph, groups


def needed_layers(graph: ChannelGraph, groups: list[list[str]]) -> list[str]:
    """Producers and the layers that read their channels: the statistics a plan needs."""
    members = {m for g in groups for m in g}
    readers = [c for c, space in graph.consumers.items() if any(s.source in members for s in space)]
    return sorted(members | set(readers))


def _input_features(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _feature_keep(space: tuple[Segment, ...], keep: dict[str, torch.Tensor], per_feature: int) -> torch.Tensor:
    """Boolean keep-mask over a layer's input features (im2col rows for a conv: ``per_feature`` each)."""
    parts = []
    for segment in space:
        channel_keep = keep.get(segment.source, torch.ones(segment.channels, dtype=torch.bool))
        parts.append(channel_keep.repeat_interleave(segment.repeat * per_feature))
    return torch.cat(parts)


def _output_energy_importance(name: str, graph: ChannelGraph, model: nn.Module, stats: LayerStats) -> torch.Tensor:
    """Per channel of ``name``: the output energy it feeds into its readers on the target data."""
    channels = graph.producers[name]
    importance = torch.zeros(channels, dtype=torch.float64)
    for reader, space in graph.consumers.items():
        if not any(s.source == name for s in space):
            continue
        layer = model.get_submodule(reader)
        matrix = weight_matrix(layer)[0]
        moments = stats[reader]
        per_feature = matrix.pow(2).sum(0).cpu() * (moments.input_energy.cpu() / max(moments.count, 1))
        per_feature = per_feature.reshape(-1, 1 if isinstance(layer, nn.Linear) else layer.kernel_size[0] * layer.kernel_size[1]).sum(1)
        offset = 0
        for segment in space:
            width = segment.channels * segment.repeat
            if segment.source == name:
                importance += per_feature[offset:offset + width].reshape(segment.channels, segment.repeat).sum(1)
            offset += width
    return importance


def _importance(group, criterion, graph, model, stats) -> torch.Tensor:
    total = None
    for name in group:
        layer = model.get_submodule(name)
        if criterion in ("mean", "max", "rate"):
            m = stats[name]
            score = {"mean": m.mean_response, "max": m.max_response, "rate": m.activation_rate}[criterion].cpu()
        elif criterion == "l1":
            weight = (layer.weight * layer.mask) if hasattr(layer, "mask") else layer.weight
            score = weight.detach().abs().reshape(weight.shape[0], -1).sum(1).double().cpu()
        else:
            score = _output_energy_importance(name, graph, model, stats)
        total = score.double() if total is None else total + score
    return total


def _keep_mask(importance: torch.Tensor, sparsity: float) -> torch.Tensor:
    remove = min(round(sparsity * len(importance)), len(importance) - 1)
    keep = torch.ones(len(importance), dtype=torch.bool)
    if remove:
        keep[importance.argsort(stable=True)[:remove]] = False
    return keep


def _refit(layer: nn.Module, moments, keep_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Least-squares weights (and bias) on the kept inputs that best reproduce the layer's target outputs."""
    W, b = weight_matrix(layer)
    W = W.cpu()
    b = b.detach().to(torch.float64).cpu() if b is not None else torch.zeros(W.shape[0], dtype=torch.float64)
    n = moments.count
    augmented = torch.zeros(W.shape[1] + 1, W.shape[1] + 1, dtype=torch.float64)
    augmented[:-1, :-1] = moments.gram.cpu()
    augmented[:-1, -1] = augmented[-1, :-1] = moments.input_sum.cpu()
    augmented[-1, -1] = n
    kept = torch.cat([keep_features, torch.tensor([True])])
    system = augmented[kept][:, kept]
    system.diagonal().add_(REFIT_RIDGE * system.diagonal().mean())
    rhs = augmented[kept] @ torch.cat([W, b[:, None]], 1).T  # G̃[K, :] [W b]ᵀ
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(rhs, factor).T if info.item() == 0 else torch.linalg.lstsq(system, rhs).solution.T
    return solution[:, :-1], solution[:, -1]


def _rebuilt(layer: nn.Module, rows: torch.Tensor | None, inputs: torch.Tensor | None,
             refit: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """A physically smaller copy of ``layer`` keeping ``rows`` (outputs) and ``inputs`` (input channels).

    ``refit`` holds least-squares weights over the kept inputs and a bias, which replace the
    sliced ones (a pruning mask, if any, is re-applied to them).
    """
    out_features = layer.weight.shape[0]
    out_keep = rows if rows is not None else torch.ones(out_features, dtype=torch.bool)
    in_keep = inputs if inputs is not None else torch.ones(_input_features(layer), dtype=torch.bool)
    conv = isinstance(layer, nn.Conv2d)
    tail = tuple(layer.kernel_size) if conv else ()
    if refit is not None:
        weight = refit[0].reshape(out_features, int(in_keep.sum()), *tail)[out_keep]
        bias = refit[1][out_keep]
    else:
        weight = layer.weight.detach()[out_keep][:, in_keep]
        bias = layer.bias.detach()[out_keep] if layer.bias is not None else None
    has_bias = bias is not None
    if conv:
        cls = MaskedConv2d if isinstance(layer, MaskedConv2d) else nn.Conv2d
        new = cls(int(in_keep.sum()), int(out_keep.sum()), layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, 1, has_bias)
    else:
        cls = MaskedLinear if isinstance(layer, MaskedLinear) else nn.Linear
        new = cls(int(in_keep.sum()), int(out_keep.sum()), has_bias)
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if has_bias:
            new.bias.copy_(bias)
        if isinstance(layer, (MaskedLinear, MaskedConv2d)):
            new.mask.copy_(layer.mask[out_keep][:, in_keep])
            new.weight.mul_(new.mask)
    return new


def _norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(norm)(int(keep.sum()), norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    new = new.to(device=norm.running_mean.device if norm.running_mean is not None else "cpu")
    with torch.no_grad():
        for key, value in norm.state_dict().items():
            target = new.state_dict()[key]
            target.copy_(value[keep] if value.dim() else value)
    return new


def _check_sparsities(sparsity: float | Mapping[str, float]) -> None:
    """One share for every layer, or a dict of layer name → share, each in [0, 1)."""
    if isinstance(sparsity, Mapping):
        if not sparsity:
            raise ValueError("sparsity is an empty dict; give at least one layer name → share to remove")
        for name, value in sparsity.items():
            try:
                _check_sparsity(value)
            except ValueError as error:
                raise ValueError(f"layer {name!r}: {error}") from None
    else:
        _check_sparsity(sparsity)


def sparsity_keeping(model: nn.Module, kept: Mapping[str, int]) -> dict[str, float]:
    """The per-layer ``sparsity`` of ``channel``/``activation`` that keeps exactly ``kept[name]`` output channels.

    ``n`` channels lose ``round(share · n)``, so the share is ``1 − k/n``; layers kept whole are left out.
    """
    shares = {}
    for name, k in kept.items():
        n = model.get_submodule(name).weight.shape[0]
        if not 1 <= k <= n:
            raise ValueError(f"layer {name!r} has {n} channels; it can keep 1 … {n} of them, not {k}")
        if k < n:
            shares[name] = 1 - k / n
    return shares


def _group_sparsity(group: list[str], sparsity: float | Mapping[str, float]) -> float:
    """The share a group of coupled layers loses: the one given, or the one its members agree on."""
    if not isinstance(sparsity, Mapping):
        return float(sparsity)
    given = {name: float(sparsity[name]) for name in group if name in sparsity}
    if not given:  # compress selects the dict's layers, so every group holds at least one of them
        raise ValueError(f"sparsity gives no value for layer(s) {', '.join(map(repr, group))}")
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{name!r}: {value}" for name, value in given.items())
        raise ValueError(f"sparsity gives different shares to layers that must keep the same channels ({listed}); "
                         "give them one value")
    return next(iter(given.values()))


def _prune(model, graph: ChannelGraph, groups, stats, sparsity, criterion, refit) -> dict[str, nn.Module]:
    _check_sparsities(sparsity)
    keep = {}
    for group in groups:
        mask = _keep_mask(_importance(group, criterion, graph, model, stats), _group_sparsity(group, sparsity))
        keep.update(dict.fromkeys(group, mask))
    replacements = {}
    touched = set(keep) | {c for c, sp in graph.consumers.items() if any(s.source in keep for s in sp)}
    for name in touched:
        layer = model.get_submodule(name)
        space = graph.consumers.get(name)
        per_feature = 1 if isinstance(layer, nn.Linear) else layer.kernel_size[0] * layer.kernel_size[1]
        inputs = _feature_keep(space, keep, 1) if space is not None and any(s.source in keep for s in space) else None
        fitted = _refit(layer, stats[name], _feature_keep(space, keep, per_feature)) if inputs is not None and refit else None
        replacements[name] = _rebuilt(layer, keep.get(name), inputs, fitted)
    for name, space in graph.norms.items():
        if any(s.source in keep for s in space):
            replacements[name] = _norm(model.get_submodule(name), _feature_keep(space, keep, 1))
    return replacements


def check_activation(*, sparsity: float | Mapping[str, float], criterion: str = "max") -> None:
    """Refuse bad ``activation`` settings before any work."""
    _check_sparsities(sparsity)
    if criterion not in ("mean", "max", "rate"):
        raise ValueError(f"criterion must be 'mean', 'max' or 'rate', got {criterion!r}")


def check_channel(*, sparsity: float | Mapping[str, float], criterion: str = "energy", refit: bool = True) -> None:
    """Refuse bad ``channel`` settings before any work."""
    _check_sparsities(sparsity)
    if criterion not in ("energy", "l1"):
        raise ValueError(f"criterion must be 'energy' or 'l1', got {criterion!r}")
    if not isinstance(refit, bool):
        raise ValueError(f"refit must be true or false, got {refit!r}")


@dataclass(frozen=True, kw_only=True)
class Activation(Settings):
    """Remove the ``sparsity`` share of units with the weakest target response (``criterion``: mean, max, rate)."""

    sparsity: float
    criterion: str = "max"

    def check(self) -> None:
        check_activation(sparsity=self.sparsity, criterion=self.criterion)


@dataclass(frozen=True, kw_only=True)
class Channel(Settings):
    """Remove the ``sparsity`` share of channels (``criterion``: energy, l1) and re-fit the next layer (``refit``)."""

    sparsity: float
    criterion: str = "energy"
    refit: bool = True

    def check(self) -> None:
        check_channel(sparsity=self.sparsity, criterion=self.criterion, refit=self.refit)


@register("activation", Activation, family="structural", accepts=PRUNABLE, needs_stats=True,
          example={"sparsity": 0.5})
def activation(model, graph, groups, stats, *, sparsity: float | Mapping[str, float],
               criterion: str = "max") -> dict[str, nn.Module]:
    """Remove the ``sparsity`` share of units with the weakest target-domain response (a dict: per layer)."""
    check_activation(sparsity=sparsity, criterion=criterion)
    return _prune(model, graph, groups, stats, sparsity, criterion, refit=False)


@register("channel", Channel, family="structural", accepts=PRUNABLE, needs_stats=True,
          example={"sparsity": 0.5})
def channel(model, graph, groups, stats, *, sparsity: float | Mapping[str, float], criterion: str = "energy",
            refit: bool = True) -> dict[str, nn.Module]:
    """Remove the ``sparsity`` share of filters/units, ranked by target output energy (or L1), then re-fit readers.

    ``sparsity`` as a dict of layer name → share gives each layer its own share (and selects those
    layers); layers coupled by a residual add must be given the same share. ``n`` channels lose
    ``round(share · n)`` of them, at most ``n − 1``, so ``1 − k/n`` keeps exactly ``k``.
    """
    check_channel(sparsity=sparsity, criterion=criterion, refit=refit)
    return _prune(model, graph, groups, stats, sparsity, criterion, refit=bool(refit))
