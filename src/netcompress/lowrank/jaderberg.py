"""``jaderberg`` and ``jaderberg-dalr``: a convolution as a vertical then a horizontal convolution.

Jaderberg, Vedaldi and Zisserman, "Speeding up convolutional neural networks with low rank
expansions" (BMVC 2014), scheme 2: a vertical ``kh×1`` convolution to ``r`` channels, then a
horizontal ``1×kw`` convolution to the outputs, from the truncated SVD of the kernel reshaped to
``(C·kh) × (N·kw)``. ``jaderberg-dalr`` fits the same stages to the target data, as DALR
(Masana et al., ICCV 2017) fits its second factor. Both return a
:class:`~netcompress.lowrank.conv.ConvDecomposition`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from netcompress.lowrank.budget import LowRankSettings
from netcompress.lowrank.conv import _CONV, ConvDecomposition, _decompose, _fitted, rank_cost
from netcompress.lowrank.ridge import RidgeSettings
from netcompress.registry import register
from netcompress.stats.moments import Moments

__all__ = ["Jaderberg", "JaderbergDALR", "jaderberg", "jaderberg_dalr"]


@dataclass(frozen=True, kw_only=True)
class Jaderberg(LowRankSettings):
    """Jaderberg et al. (BMVC 2014) scheme 2: a vertical and a horizontal convolution, from the kernel's SVD."""


@dataclass(frozen=True, kw_only=True)
class JaderbergDALR(RidgeSettings):
    """Jaderberg's two stages fitted to the target data (whitened inputs); ``lam`` and ``shrinkage`` as DALR's."""


@register("jaderberg", Jaderberg, **_CONV, rank_cost=rank_cost("jaderberg"))
def jaderberg(layer: nn.Module, moments: Moments, rank: int) -> ConvDecomposition:
    """Jaderberg et al. (BMVC 2014) scheme 2, data-free: the truncated SVD of the kernel as ``(C·kh) × (N·kw)``."""
    return _decompose("jaderberg", layer, moments, rank, seed=0)


@register("jaderberg-dalr", JaderbergDALR, **_CONV, needs_stats=True, rank_cost=rank_cost("jaderberg"))
def jaderberg_dalr(layer: nn.Module, moments: Moments, rank: int, *, lam: float | None = None,
                   shrinkage: float | str = "auto") -> ConvDecomposition:
    """Jaderberg's two stages fitted to the target data: vertical filters from the SVD of the kernel whitened by
    the second moment of what they read (or the plain one, where that fits better), horizontal ones by
    least squares on the layer's outputs."""
    return _fitted("jaderberg", layer, moments, rank, 0, lam, shrinkage)
