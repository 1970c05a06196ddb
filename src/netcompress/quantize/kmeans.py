"""Deep Compression's weight sharing (Han, Mao and Dally, ICLR 2016): ``2^bits`` shared values per layer from 1-D k-means."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from netcompress.quantize.modules import QUANTIZABLE
from netcompress.quantize.uniform import _check_bits, _check_layer, _codebook_module, _weight_and_mask
from netcompress.registry import Settings, each, register
from netcompress.stats.moments import Moments

__all__ = ["KMEANS_ITERATIONS", "KMeans", "check_kmeans", "kmeans"]

KMEANS_ITERATIONS = 30


def check_kmeans(layer: nn.Module, bits: int | None = None, init: str = "linear", seed: int = 0) -> None:
    """Raise ``ValueError``/``TypeError`` if :func:`kmeans` cannot quantize ``layer`` with these settings."""
    if bits is None:
        raise TypeError("method 'kmeans' needs bits, so that 2^bits shared values are kept")
    _check_bits(bits)
    _check_init(init)
    _check_layer(layer)


def _check_init(init: object) -> None:
    if init not in ("linear", "random", "density"):
        raise ValueError(f"init must be 'linear', 'random' or 'density', got {init!r}")


def _initial_centroids(values: torch.Tensor, levels: int, init: str, seed: int) -> torch.Tensor:
    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), levels, dtype=values.dtype)
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        return values[torch.randint(len(values), (levels,), generator=generator)].sort().values
    return torch.quantile(values, torch.linspace(0, 1, levels + 2, dtype=values.dtype)[1:-1])


@dataclass(frozen=True, kw_only=True)
class KMeans(Settings):
    """Deep Compression's weight sharing: ``2^bits`` shared values per layer from 1-D k-means (``init``, ``seed``)."""

    bits: int
    init: str = "linear"
    seed: int = 0

    def check(self) -> None:
        each(self.bits, _check_bits)
        each(self.init, _check_init)


@register("kmeans", KMeans, family="layer", accepts=QUANTIZABLE, check=check_kmeans, example={"bits": 3})
def kmeans(layer: nn.Module, moments: Moments | None = None, *, bits: int, init: str = "linear",
           seed: int = 0) -> nn.Module:
    """Deep Compression's weight sharing: ``2^bits`` shared values per layer from 1-D k-means.

    Only unpruned weights are clustered. ``init`` is ``"linear"`` (evenly between min and max,
    which Han, Mao and Dally, ICLR 2016, Figure 8 find best), ``"random"`` (sampled weights,
    seeded) or ``"density"`` (evenly in the weights' CDF). One codebook for the whole layer.
    """
    check_kmeans(layer, bits, init, seed)
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
    return _codebook_module(layer, centroids[None, :], codes.to(torch.uint8), matrix.shape[0], mask)
