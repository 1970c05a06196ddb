"""Low-rank factorization of Linear and Conv2d layers: SVD, SVD with bias compensation, DALR.

* :mod:`.modules`: the factored layers (:class:`LowRankLinear`, :class:`LowRankConv2d`);
* :mod:`.methods`: the factorizations (Masana et al., "Domain-adaptive deep network
  compression", ICCV 2017), each a :class:`Factorization` with the error of every rank;
* :mod:`.conv`: separable decompositions of convolutions (Jaderberg et al. 2014; CP, Lebedev
  et al. 2015) and their data-aware variants, each a :class:`ConvDecomposition`;
* :mod:`.plan`: choosing ranks from a kept fraction, an energy target or a global budget;
* :mod:`.family`: how ``compress`` sizes, validates and plans a low-rank method, and ``sweep``.
"""

from netcompress.lowrank.conv import (
    ConvDecomposition,
    CPConv2d,
    JaderbergConv2d,
    cp,
    cp_dalr,
    jaderberg,
    jaderberg_dalr,
)
from netcompress.lowrank.family import LowRankFamily, sweep
from netcompress.lowrank.methods import (
    DEFAULT_LAM,
    Factorization,
    check_lam,
    check_shrinkage,
    dalr,
    dalr_bc,
    layer_matrix,
    shrinkage_intensity,
    shrunk_second_moment,
    svd,
    svd_bc,
)
from netcompress.lowrank.modules import LowRankConv2d, LowRankLinear, build_low_rank

__all__ = [
    "CPConv2d", "ConvDecomposition", "DEFAULT_LAM", "Factorization", "JaderbergConv2d", "LowRankConv2d",
    "LowRankFamily", "LowRankLinear", "build_low_rank", "check_lam", "check_shrinkage", "cp", "cp_dalr", "dalr",
    "dalr_bc", "jaderberg", "jaderberg_dalr", "layer_matrix", "shrinkage_intensity", "shrunk_second_moment", "svd",
    "svd_bc", "sweep",
]
