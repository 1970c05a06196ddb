"""The separable layers that replace a convolution: :class:`JaderbergConv2d` and :class:`CPConv2d`.

Built by :class:`~netcompress.lowrank.conv.ConvDecomposition` (seed 003, "Low Rank - Convolution");
each records the original convolution's geometry and computes with an equivalent
``effective_weight``.
"""

from __future__ import annotations

import torch
from torch import nn

from netcompress._core.description import Entry, conv_fields, describable

__all__ = ["CPConv2d", "JaderbergConv2d"]


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _geometry(layer: nn.Module, in_channels: int, out_channels: int, rank: int, *pairs) -> tuple[tuple[int, int], ...]:
    """Record the original convolution's channels, rank, kernel, stride, padding and dilation on ``layer``; return the pairs."""
    layer.in_channels, layer.out_channels, layer.rank = in_channels, out_channels, rank
    layer.kernel_size, layer.stride, layer.padding, layer.dilation = pairs = tuple(map(_pair, pairs))
    return pairs


@describable
class JaderbergConv2d(nn.Module):
    """``kh×1`` convolution to ``rank`` channels (stride, padding, dilation along the height), then ``1×kw`` (along the width)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), bias: bool = True):
        super().__init__()
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _geometry(self, in_channels, out_channels, rank, kernel_size, stride,
                                                           padding, dilation)
        self.vertical = nn.Conv2d(in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        self.up = nn.Conv2d(rank, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.vertical(x))

    def effective_weight(self, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (out, in·kh·kw) float64 matrix this layer computes with (its ``rows``), and its bias."""
        V = self.vertical.weight.detach().double()[..., 0]  # (rank, C, kh)
        H = self.up.weight.detach().double()[rows][:, :, 0, :]  # (out, rank, kw)
        return torch.einsum("nkj,kci->ncij", H, V).reshape(H.shape[0], -1), self.up.bias

    def describe(self) -> dict:
        return {**conv_fields(self), "rank": self.rank, "bias": self.up.bias is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> JaderbergConv2d:
        args = entry.conv_args()
        kh, kw = args["kernel_size"]
        rank = entry.integer("rank")
        if rank > min(args["in_channels"] * kh, args["out_channels"] * kw):
            raise entry.fail(f"field 'rank' {rank} exceeds min(C·kh, N·kw)")
        return cls(**args, rank=rank, bias=entry.flag("bias"))


@describable
class CPConv2d(nn.Module):
    """``1×1`` to ``rank`` channels, depthwise ``kh×1`` and ``1×kw`` (the original stride, padding, dilation), ``1×1`` to the outputs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), bias: bool = True):
        super().__init__()
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _geometry(self, in_channels, out_channels, rank, kernel_size, stride,
                                                           padding, dilation)
        self.pointwise = nn.Conv2d(in_channels, rank, 1, bias=False)
        self.vertical = nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=rank, bias=False)
        self.horizontal = nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), (1, dw), groups=rank, bias=False)
        self.up = nn.Conv2d(rank, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.horizontal(self.vertical(self.pointwise(x))))

    def effective_weight(self, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (out, in·kh·kw) float64 matrix this layer computes with (its ``rows``), and its bias."""
        A = self.up.weight.detach().double()[rows][:, :, 0, 0]  # (out, rank)
        P = self.pointwise.weight.detach().double()[:, :, 0, 0]  # (rank, C)
        v = self.vertical.weight.detach().double()[:, 0, :, 0]  # (rank, kh)
        h = self.horizontal.weight.detach().double()[:, 0, 0, :]  # (rank, kw)
        return torch.einsum("nr,rc,ri,rj->ncij", A, P, v, h).reshape(A.shape[0], -1), self.up.bias

    def describe(self) -> dict:
        return {**conv_fields(self), "rank": self.rank, "bias": self.up.bias is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> CPConv2d:
        args = entry.conv_args()
        rank = entry.integer("rank")
        entry.refuse_larger(rank * (args["in_channels"] + args["out_channels"] + sum(args["kernel_size"])),
                            "this CP decomposition")
        return cls(**args, rank=rank, bias=entry.flag("bias"))
