"""Masked layers: a Linear or Conv2d whose pruned weights are held at zero by a mask buffer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._core.description import Entry, conv_fields, describable, linear_fields

__all__ = [
    "MaskedConv2d",
    "MaskedLinear",
    "masked_like",
]


@describable
class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose pruned weights (``mask == False``) stay zero."""

    masked = True  # a plain layer but for its mask: observed, and shrunk by structured pruning, as one

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def describe(self) -> dict:
        return {**linear_fields(self), "bias": self.bias is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> MaskedLinear:
        return cls(*entry.linear_size(), bias=entry.flag("bias"))


@describable
class MaskedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose pruned weights (``mask == False``) stay zero."""

    masked = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def describe(self) -> dict:
        return {**conv_fields(self), "groups": self.groups, "bias": self.bias is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> MaskedConv2d:
        return cls(**entry.conv_args(), groups=entry.integer("groups"), bias=entry.flag("bias"))


# Layers a pruning method takes: dense ones, and masked ones pruned again.
PRUNABLE = (nn.Linear, nn.Conv2d, MaskedLinear, MaskedConv2d)


def masked_like(layer: nn.Module) -> nn.Module:
    """An empty masked layer with ``layer``'s shape and hyper-parameters."""
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Conv2d):
        module = MaskedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                              layer.padding, layer.dilation, layer.groups, layer.bias is not None)
    else:
        module = MaskedLinear(layer.in_features, layer.out_features, layer.bias is not None)
    return module.to(**factory)


