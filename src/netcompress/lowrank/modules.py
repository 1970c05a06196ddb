"""Factored layers: ``W ≈ A B`` as two Linear layers, or a rank-``r`` convolution then a 1×1 convolution."""

from __future__ import annotations

import torch
from torch import nn

from netcompress._core.description import Entry, conv_fields, describable, linear_fields
from netcompress._core.tensors import weight_rows

__all__ = [
    "LowRankConv2d",
    "LowRankLinear",
    "build_low_rank",
]


@describable
class LowRankLinear(nn.Module):
    """``y = up(down(x))``: ``in → rank`` without bias, then ``rank → out`` with the bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def effective_weight(self, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (out, in·kh·kw) float64 matrix ``up · down`` this layer computes with (its ``rows``), and its bias."""
        return _product(self.up, self.down, rows)

    def describe(self) -> dict:
        return {**linear_fields(self), "rank": self.rank, "bias": self.up.bias is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> LowRankLinear:
        in_features, out_features = entry.linear_size()
        return cls(in_features, out_features, _rank(entry, min(in_features, out_features)), entry.flag("bias"))


@describable
class LowRankConv2d(nn.Module):
    """A ``rank``-channel convolution with the original kernel, stride, padding and dilation, then a 1×1 convolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        rank: int,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        bias: bool = True,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.down = nn.Conv2d(in_channels, rank, kernel_size, stride, padding, dilation, bias=False)
        self.up = nn.Conv2d(rank, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def effective_weight(self, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (out, in·kh·kw) float64 matrix ``up · down`` this layer computes with (its ``rows``), and its bias."""
        return _product(self.up, self.down, rows)

    def describe(self) -> dict:
        return {**conv_fields(self.down), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "rank": self.rank, "bias": self.up.bias is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> LowRankConv2d:
        args = entry.conv_args()
        per_row = args["in_channels"] * args["kernel_size"][0] * args["kernel_size"][1]
        rank = _rank(entry, min(args["out_channels"], per_row))
        return cls(args["in_channels"], args["out_channels"], args["kernel_size"], rank,
                   args["stride"], args["padding"], args["dilation"], entry.flag("bias"))


def _rank(entry: Entry, limit: int) -> int:
    """The description's rank, refused above ``min(out, in)`` (a factored layer never needs more)."""
    rank = entry.integer("rank")
    if rank > limit:
        raise entry.fail(f"field 'rank' {rank} exceeds min(out, in) = {limit}")
    return rank


def build_low_rank(layer: nn.Module, rank: int, bias: bool) -> nn.Module:
    """An empty (uninitialised) low-rank replacement for ``layer`` with the given rank."""
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Conv2d):
        module = LowRankConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, rank,
            layer.stride, layer.padding, layer.dilation, bias,
        )
    else:
        module = LowRankLinear(layer.in_features, layer.out_features, rank, bias)
    return module.to(**factory)


def _product(up: nn.Module, down: nn.Module, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
    # each factor as it computes: quantized factors (factor_bits) decoded, not their stored codes
    A = weight_rows(up, rows).detach().double()
    B = weight_rows(down, slice(None)).detach().double()
    return A @ B, up.bias
