"""How much a network computes: the multiply-accumulates (MACs) of its Linear and convolution layers.

The model is run once on an example batch with forward hooks, so the count follows the
shapes the layers actually see (strides, padding, pooling, tokens) rather than a formula
per architecture. Per sample, a layer costs

* ``nn.Linear``: ``out_features · in_features`` per output row (a ``(N, T, F)`` input has ``T`` rows);
* ``nn.Conv1d/2d/3d``: ``out_channels · (in_channels / groups) · kernel volume`` per output position.

Only products are counted (the "FLOPs" of the pruning literature, e.g. PEEL's FLOPs–accuracy
spectra, are MACs); biases, BatchNorm, activations and pooling are not. A layer that holds
other Linear/convolution layers (a low-rank pair, a padding wrapper) is counted through them.

:class:`ChannelCosts` predicts the count after structured pruning from the channel counts alone
(PEEL's reallocation searches over them without building each network).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from netcompress._core.tensors import batch_size, call_model, model_device_dtype
from netcompress._core.transaction import evaluating

__all__ = ["ChannelCosts", "channel_costs", "count_flops", "layer_flops"]

_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _computes(module: nn.Module) -> bool:
    """A Linear/Conv layer, or a quantized one (integer codes decoded to the same product)."""
    if isinstance(module, _COUNTED):
        return True
    return isinstance(getattr(module, "codes", None), torch.Tensor) and (
        hasattr(module, "in_features") or hasattr(module, "kernel_size"))


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one call of ``module`` that produced ``output`` (the whole batch)."""
    if not hasattr(module, "kernel_size"):  # Linear-like
        return output.numel() * module.in_features
    per_output = module.in_channels // module.groups
    for side in module.kernel_size:
        per_output *= side
    return output.numel() * per_output


def layer_flops(model: nn.Module, example) -> dict[str, int]:
    """Multiply-accumulates of each Linear/Conv layer for one sample of ``example``, by layer name.

    ``example`` is a batch as ``compress`` takes it (a tensor, a tuple whose first item is the
    input, or a dict of keyword inputs); the counts are divided by its leading dimension. A
    layer called twice counts twice; a layer the example never reaches counts 0.
    """
    layers = {name: m for name, m in model.named_modules()  # nothing counted twice
              if _computes(m) and not any(_computes(c) for c in m.modules() if c is not m)}
    totals = dict.fromkeys(layers, 0)
    handles = []
    for name, layer in layers.items():
        def hook(module, inputs, output, name=name):
            totals[name] += _macs(module, output)
        handles.append(layer.register_forward_hook(hook))
    try:
        with evaluating(model), torch.no_grad():  # a training-mode BatchNorm would update its running statistics
            call_model(model, example, *model_device_dtype(model))
    finally:
        for handle in handles:
            handle.remove()
    samples = batch_size(example)
    return {name: total // samples for name, total in totals.items()}


def count_flops(model: nn.Module, example) -> int:
    """Multiply-accumulates of ``model`` for one sample of ``example`` (all Linear/Conv layers; see :func:`layer_flops`).

    Example: ``netcompress.count_flops(LeNet5(), torch.zeros(1, 784))`` is 2,293,000
    (conv1 288,000 + conv2 1,600,000 + fc1 400,000 + fc2 5,000).
    """
    return sum(layer_flops(model, example).values())


@dataclass(frozen=True)
class ChannelCosts:
    """Multiply-accumulates per sample as a function of each group of coupled layers' channel count.

    A layer's cost is its output channels times its input channels (features, once flattened)
    times a constant (kernel volume, output positions), so from the dense counts of one hooked
    pass the cost of any channel counts follows without building the network.
    """

    macs: dict[str, int]  # dense MACs per sample of every Linear/Conv layer
    out_group: dict[str, int]  # layer → index of the group that sets its output channels
    inputs: dict[str, tuple[tuple[int | None, int, int], ...]]  # layer → (group or None, channels, repeat) segments
    sizes: tuple[int, ...]  # dense channels of each group

    def __call__(self, counts: list[int]) -> float:
        total = 0.0
        for name, macs in self.macs.items():
            factor = counts[self.out_group[name]] / self.sizes[self.out_group[name]] if name in self.out_group else 1.0
            segments = self.inputs.get(name)
            if segments:
                dense = sum(c * r for _, c, r in segments)
                kept = sum((counts[g] if g is not None else c) * r for g, c, r in segments)
                factor *= kept / dense
            total += macs * factor
        return total


def channel_costs(model: nn.Module, example, graph, groups: list[list[str]]) -> ChannelCosts:
    """The :class:`ChannelCosts` of ``model`` whose channel spaces ``graph`` (a traced
    :class:`~netcompress.prune.dependency.ChannelGraph`) describes, for the producer ``groups``."""
    index = {name: i for i, group in enumerate(groups) for name in group}
    inputs = {name: tuple((index.get(s.source), s.channels, s.repeat) for s in space)
              for name, space in graph.consumers.items()}
    sizes = tuple(graph.producers[group[0]] for group in groups)
    return ChannelCosts(layer_flops(model, example), index, inputs, sizes)
