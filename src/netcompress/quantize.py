"""Weight quantization: uniform (per tensor, per channel, group-wise), binary, ternary, k-means.

Every quantizer produces the same thing: per group of consecutive output channels a
small codebook, and per weight a code into its group's codebook. A
:class:`QuantizedLinear` / :class:`QuantizedConv2d` computes its weight as
``codebook[group, code]`` (times the pruning mask, if any), so

* evaluating accuracy is an ordinary forward pass (fake quantization);
* fine-tuning trains the codebook while the codes stay fixed: the gradient of a
  code word is the sum of the gradients of the weights that share it (Deep
  Compression's centroid fine-tuning, seed 003, Figure 3);
* storage packs the codes in ``bits`` bits or Huffman codes them (see ``codec``).

Per-channel is a group of one channel, per-tensor one group of all channels, and
group-wise (seed 004) groups of ``group_size`` channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .stats import Moments, input_columns

__all__ = [
    "QuantizedConv2d",
    "QuantizedLinear",
    "binary",
    "kmeans",
    "quantized_like",
    "ternary",
    "uniform",
]

# Clipping ranges tried by the uniform quantizer, as fractions of each group's full range.
CLIP_FRACTIONS = tuple(1.0 - 0.025 * i for i in range(25))
KMEANS_ITERATIONS = 30


class _Quantized(nn.Module):
    """Shared body of the quantized layers: ``weight = codebook[group(row), codes] · mask``."""

    def _init_codes(self, weight_shape: tuple[int, ...], levels: int, group_size: int, masked: bool, bias: bool):
        out = weight_shape[0]
        self.group_size = group_size
        self.codebook = nn.Parameter(torch.zeros(math.ceil(out / group_size), levels))
        self.register_buffer("codes", torch.zeros(weight_shape, dtype=torch.uint8))
        self.register_buffer("mask", torch.ones(weight_shape, dtype=torch.bool) if masked else None)
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None

    @property
    def levels(self) -> int:
        return self.codebook.shape[1]

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(self.levels)))

    @property
    def weight(self) -> torch.Tensor:
        out = self.codes.shape[0]
        rows = self.codebook.repeat_interleave(self.group_size, 0)[:out]
        weight = rows.gather(1, self.codes.reshape(out, -1).long()).reshape(self.codes.shape)
        return weight * self.mask if self.mask is not None else weight


class QuantizedLinear(_Quantized):
    """A Linear layer whose weights are codes into per-group codebooks."""

    def __init__(self, in_features: int, out_features: int, levels: int, group_size: int,
                 bias: bool = True, masked: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_codes((out_features, in_features), levels, group_size, masked, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class QuantizedConv2d(_Quantized):
    """A Conv2d layer whose weights are codes into per-group codebooks."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], levels: int,
                 group_size: int, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1,
                 bias: bool = True, masked: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, tuple(kernel_size)
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_codes(shape, levels, group_size, masked, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def quantized_like(layer: nn.Module, levels: int, group_size: int, masked: bool) -> nn.Module:
    """An empty quantized layer with ``layer``'s shape and hyper-parameters."""
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d) or isinstance(layer, QuantizedConv2d):
        module = QuantizedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, levels, group_size,
                                 layer.stride, layer.padding, layer.dilation, layer.groups, bias, masked)
    else:
        module = QuantizedLinear(layer.in_features, layer.out_features, levels, group_size, bias, masked)
    return module.to(**factory)


def _build(layer: nn.Module, codebook: torch.Tensor, codes: torch.Tensor, group_size: int,
           mask: torch.Tensor | None) -> nn.Module:
    module = quantized_like(layer, codebook.shape[1], group_size, mask is not None)
    if mask is not None:  # pruned weights carry code 0, so equal models have equal state
        codes = torch.where(mask.reshape(codes.shape), codes, torch.zeros_like(codes))
    with torch.no_grad():
        module.codebook.copy_(codebook)
        module.codes.copy_(codes.reshape(module.codes.shape))
        if mask is not None:
            module.mask.copy_(mask.reshape(module.mask.shape))
        if layer.bias is not None:
            module.bias.copy_(layer.bias)
    return module


def _weight_and_mask(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The dense float64 weight matrix (out, rest) of a plain, masked or quantized layer, and its mask."""
    weight = layer.weight.detach()
    mask = getattr(layer, "mask", None)
    out = weight.shape[0]
    if mask is not None:
        mask = mask.reshape(out, -1).bool()
    return weight.reshape(out, -1).to(torch.float64), mask


def _check_bits(bits: int, limit: int = 8) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= limit:
        raise ValueError(f"bits must be an integer from 1 to {limit}, got {bits!r}")
    return bits


def _group_size(out: int, granularity: str, group_size: int | None) -> int:
    if granularity == "tensor":
        return out
    if granularity == "channel":
        return 1
    if granularity == "group":
        if group_size is None or isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"granularity='group' needs group_size, a positive number of output channels, got {group_size!r}")
        if group_size > out:
            raise ValueError(f"group_size {group_size} exceeds the layer's {out} output channels; use granularity='tensor'")
        return group_size
    raise ValueError(f"granularity must be 'tensor', 'channel' or 'group', got {granularity!r}")


def _grouped(matrix: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, rest) → (groups, group_size·rest), padding the last group with NaN."""
    out, rest = matrix.shape
    groups = math.ceil(out / group_size)
    padded = torch.full((groups * group_size, rest), float("nan"), dtype=matrix.dtype, device=matrix.device)
    padded[:out] = matrix
    return padded.reshape(groups, group_size * rest)


def _column_weights(moments: Moments | None, matrix: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """How much an error in each weight costs on the target data: E[x_j²] of its input (ones without data)."""
    if moments is None:
        return torch.ones_like(matrix)
    energy = moments.gram.diagonal().to(matrix.device, matrix.dtype) / max(moments.count, 1)
    energy = energy / energy.mean().clamp_min(1e-30)
    return energy[input_columns(matrix.shape[0], matrix.shape[1], groups).to(matrix.device)]


def uniform(layer: nn.Module, moments: Moments | None = None, *, bits: int, granularity: str = "channel",
            group_size: int | None = None) -> nn.Module:
    """Uniform affine ``bits``-bit quantization with a clipping range chosen per group.

    Each group's grid spans ``[c·min, c·max]`` for the ``c`` in :data:`CLIP_FRACTIONS` that
    minimises the squared weight error, weighted by the mean square of each input on the
    target data when ``moments`` are given (data-aware calibration). Pruned weights stay pruned.
    """
    _check_bits(bits)
    matrix, mask = _weight_and_mask(layer)
    out, rest = matrix.shape
    size = _group_size(out, granularity, group_size)
    levels = 2 ** bits
    importance = _column_weights(moments, matrix, getattr(layer, "groups", 1))
    live = mask if mask is not None else torch.ones_like(matrix, dtype=torch.bool)
    values = _grouped(torch.where(live, matrix, torch.nan), size)
    cost = _grouped(torch.where(live, importance, 0.0), size).nan_to_num(0.0)
    low, high = values.nan_to_num(float("inf")).amin(1), values.nan_to_num(float("-inf")).amax(1)
    if torch.isinf(low).any():
        raise ValueError("a group of weights is entirely pruned; quantize with a larger group_size or prune less")
    best_error = torch.full_like(low, float("inf"))
    best = (low, high)
    for fraction in CLIP_FRACTIONS:
        lo, hi = low * fraction, high * fraction
        step = ((hi - lo) / (levels - 1)).clamp_min(1e-12)
        codes = ((values - lo[:, None]) / step[:, None]).round().clamp(0, levels - 1)
        error = (((lo[:, None] + codes * step[:, None]) - values).nan_to_num(0.0) ** 2 * cost).sum(1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best = (torch.where(better, lo, best[0]), torch.where(better, hi, best[1]))
    lo, hi = best
    step = ((hi - lo) / (levels - 1)).clamp_min(1e-12)
    codebook = lo[:, None] + step[:, None] * torch.arange(levels, dtype=lo.dtype, device=lo.device)
    codes = ((values - lo[:, None]) / step[:, None]).round().clamp(0, levels - 1).nan_to_num(0.0)
    codes = codes.reshape(-1, rest)[:out].to(torch.uint8)
    return _build(layer, codebook, codes, size, mask)


def binary(layer: nn.Module, moments: Moments | None = None, *, stochastic: bool = False, seed: int = 0) -> nn.Module:
    """1-bit weights ``±α`` per output channel, ``α`` the channel's mean ``|w|`` (seed 003).

    ``stochastic=True`` draws ``+α`` with probability ``clip((x + 1)/2, 0, 1)`` where
    ``x = w / max|w|`` of the channel (the seed's hard-sigmoid rule), with ``seed``.
    """
    matrix, mask = _weight_and_mask(layer)
    live = mask if mask is not None else torch.ones_like(matrix, dtype=torch.bool)
    magnitude = torch.where(live, matrix.abs(), 0.0)
    alpha = magnitude.sum(1) / live.sum(1).clamp_min(1)
    if stochastic:
        x = matrix / magnitude.amax(1, keepdim=True).clamp_min(1e-12)
        generator = torch.Generator(device=matrix.device).manual_seed(seed)
        positive = torch.rand(matrix.shape, generator=generator, dtype=matrix.dtype, device=matrix.device) < ((x + 1) / 2).clamp(0, 1)
    else:
        positive = matrix >= 0
    codebook = torch.stack([-alpha, alpha], 1)
    return _build(layer, codebook, positive.to(torch.uint8), 1, mask)


def ternary(layer: nn.Module, moments: Moments | None = None) -> nn.Module:
    """Weights in ``{−α, 0, +α}`` per output channel: threshold ``Δ = 0.7·mean|w|``, ``α`` the mean ``|w|`` above it."""
    matrix, mask = _weight_and_mask(layer)
    live = mask if mask is not None else torch.ones_like(matrix, dtype=torch.bool)
    magnitude = torch.where(live, matrix.abs(), 0.0)
    delta = 0.7 * magnitude.sum(1, keepdim=True) / live.sum(1, keepdim=True).clamp_min(1)
    kept = (magnitude > delta) & live
    alpha = (magnitude * kept).sum(1) / kept.sum(1).clamp_min(1)
    codes = torch.where(kept, torch.where(matrix > 0, 2, 0), 1)
    codebook = torch.stack([-alpha, torch.zeros_like(alpha), alpha], 1)
    return _build(layer, codebook, codes.to(torch.uint8), 1, mask)


def _initial_centroids(values: torch.Tensor, levels: int, init: str, seed: int) -> torch.Tensor:
    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), levels, dtype=values.dtype)
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        return values[torch.randint(len(values), (levels,), generator=generator)].sort().values
    if init == "density":
        return torch.quantile(values, torch.linspace(0, 1, levels + 2, dtype=values.dtype)[1:-1])
    raise ValueError(f"init must be 'linear', 'random' or 'density', got {init!r}")


def kmeans(layer: nn.Module, moments: Moments | None = None, *, bits: int, init: str = "linear",
           seed: int = 0) -> nn.Module:
    """Deep Compression's weight sharing: ``2^bits`` shared values per layer from 1-D k-means.

    Only unpruned weights are clustered. ``init`` is ``"linear"`` (evenly between min
    and max, which the seed's Figure 8 finds best), ``"random"`` (sampled weights,
    seeded) or ``"density"`` (evenly in the weights' CDF).
    """
    _check_bits(bits)
    matrix, mask = _weight_and_mask(layer)
    values = matrix[mask] if mask is not None else matrix.reshape(-1)
    if values.numel() == 0:
        raise ValueError("every weight of this layer is pruned; nothing to cluster")
    levels = min(2 ** bits, values.numel())
    centroids = _initial_centroids(values.cpu(), levels, init, seed).to(values.device)
    for _ in range(KMEANS_ITERATIONS):
        centroids = centroids.sort().values
        assignment = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        counts = torch.bincount(assignment, minlength=levels).to(values.dtype)
        sums = torch.zeros(levels, dtype=values.dtype, device=values.device).index_add_(0, assignment, values)
        # An empty cluster keeps its centroid.
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    centroids = centroids.sort().values
    codes = torch.bucketize(matrix, (centroids[1:] + centroids[:-1]) / 2)
    if mask is not None:
        codes = torch.where(mask, codes, 0)
    return _build(layer, centroids[None, :], codes.to(torch.uint8), matrix.shape[0], mask)
