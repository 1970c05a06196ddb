"""BatchNorm running statistics re-estimated on the target sample after a structural change.

A BatchNorm layer normalises with the mean and variance it saw in training. After channels are
removed and the reading layers re-fitted, the layers after them see inputs of slightly different
statistics; re-estimating every BatchNorm's running mean and variance on the target sample
(a cumulative average over its batches, Ioffe and Szegedy's inference statistics) puts them back
in line. Only the BatchNorm layers run in training mode while doing so; dropout stays off.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from netcompress._core.tensors import call_model, model_device_dtype

__all__ = ["batchnorm_layers", "reestimate_batchnorm"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable) -> int:
    """Replace every BatchNorm's running mean and variance by their average over ``batches``; the count of layers.

    The model's train/eval modes and each layer's momentum are put back afterwards.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    device, dtype = model_device_dtype(model)
    kept = {m: {k: v.clone() for k, v in m.state_dict().items()} for m in layers}
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average: every batch counts the same
            layer.train()
        seen = 0
        for batch in batches:
            call_model(model, batch, device, dtype)
            seen += 1
        if seen == 0:
            raise ValueError("no batches to re-estimate BatchNorm statistics on; pass target data")
    except BaseException:  # the statistics as they were: a failed re-estimate changes nothing
        for layer, state in kept.items():
            layer.load_state_dict(state)
        raise
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, training in modes.items():
            module.train(training)
    return len(layers)
