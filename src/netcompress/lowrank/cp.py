"""``cp`` and ``cp-dalr``: a convolution as its rank-``R`` CP decomposition, four small convolutions.

Lebedev, Ganin, Rakhuba, Oseledets and Lempitsky, "Speeding-up convolutional neural networks
using fine-tuned CP-decomposition" (ICLR 2015): a ``1×1`` convolution to ``R`` channels, depthwise
``kh×1`` and ``1×kw`` convolutions, a ``1×1`` back to the outputs, by alternating least squares
(seeded). ``cp-dalr`` fits the decomposition to the target data and the last factor by least
squares on the outputs. Both return a :class:`~netcompress.lowrank.conv.ConvDecomposition`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from netcompress.lowrank.budget import LowRankSettings
from netcompress.lowrank.conv import _CONV, ConvDecomposition, _decompose, _fitted, rank_cost
from netcompress.lowrank.ridge import RidgeSettings
from netcompress.registry import register
from netcompress.stats.moments import Moments

__all__ = ["CP", "CPDALR", "cp", "cp_dalr"]


@dataclass(frozen=True, kw_only=True)
class CP(LowRankSettings):
    """Lebedev et al. (ICLR 2015): the rank-``R`` CP decomposition of the kernel, ALS from a ``seed``-ed start."""

    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class CPDALR(RidgeSettings):
    """CP fitted to the target data through whitened input channels; ``lam`` and ``shrinkage`` as DALR's."""

    seed: int = 0


@register("cp", CP, **_CONV, rank_cost=rank_cost("cp"))
def cp(layer: nn.Module, moments: Moments, rank: int, *, seed: int = 0) -> ConvDecomposition:
    """Lebedev et al. (ICLR 2015): the rank-``R`` CP decomposition of the kernel (ALS from a seeded start)."""
    return _decompose("cp", layer, moments, rank, seed)


@register("cp-dalr", CPDALR, **_CONV, needs_stats=True, rank_cost=rank_cost("cp"))
def cp_dalr(layer: nn.Module, moments: Moments, rank: int, *, seed: int = 0, lam: float | None = None,
            shrinkage: float | str = "auto") -> ConvDecomposition:
    """CP fitted to the target data: the decomposition of the kernel seen through whitened input channels (the
    second moment of what the first ``1×1`` reads; or the plain one, where that fits better), the last ``1×1``
    factor by least squares on the outputs."""
    return _fitted("cp", layer, moments, rank, seed, lam, shrinkage)
