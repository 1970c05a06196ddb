"""Low-rank factorization of Linear and Conv2d layers: SVD, SVD with bias compensation, DALR.

* :mod:`.modules`: the factored layers (:class:`LowRankLinear`, :class:`LowRankConv2d`);
* :mod:`.factorization`: a layer's nested factors, a :class:`Factorization` with the error of every rank;
* :mod:`.svd`, :mod:`.dalr`: the factorizations (Masana et al., "Domain-adaptive deep network
  compression", ICCV 2017); :mod:`.ridge`: DALR's ridge λ and shrinkage;
* :mod:`.conv`: separable decompositions of convolutions, each a :class:`ConvDecomposition`
  (the layers in :mod:`.conv_modules`, the first stages in :mod:`.conv_stages`), and
  :mod:`.jaderberg`, :mod:`.cp`: Jaderberg et al. 2014, CP (Lebedev et al. 2015) and their
  data-aware variants;
* :mod:`.plan`: choosing ranks from a kept fraction, an energy target or a global budget;
* :mod:`.family`: how ``compress`` sizes, validates and plans a low-rank method, and ``sweep``.
"""

# Importing a method's module registers it: in this order, the order of netcompress.METHODS.
# isort: off
from netcompress.lowrank.svd import SVD, SVDBC, svd, svd_bc
from netcompress.lowrank.dalr import DALR, DALRBC, dalr, dalr_bc
from netcompress.lowrank.jaderberg import Jaderberg, JaderbergDALR, jaderberg, jaderberg_dalr
from netcompress.lowrank.cp import CP, CPDALR, cp, cp_dalr
# isort: on
from netcompress.lowrank.budget import LowRankSettings
from netcompress.lowrank.conv import ConvDecomposition
from netcompress.lowrank.conv_modules import CPConv2d, JaderbergConv2d
from netcompress.lowrank.factorization import Factorization, layer_matrix
from netcompress.lowrank.family import LowRankFamily, sweep
from netcompress.lowrank.modules import LowRankConv2d, LowRankLinear, build_low_rank
from netcompress.lowrank.ridge import DEFAULT_LAM, check_lam, check_shrinkage, shrinkage_intensity, shrunk_second_moment

__all__ = [
    "CP", "CPDALR", "DALR", "DALRBC", "SVD", "SVDBC", "Jaderberg", "JaderbergDALR", "LowRankSettings",
    "CPConv2d", "ConvDecomposition", "DEFAULT_LAM", "Factorization", "JaderbergConv2d", "LowRankConv2d",
    "LowRankFamily", "LowRankLinear", "build_low_rank", "check_lam", "check_shrinkage", "cp", "cp_dalr", "dalr",
    "dalr_bc", "jaderberg", "jaderberg_dalr", "layer_matrix", "shrinkage_intensity", "shrunk_second_moment", "svd",
    "svd_bc", "sweep",
]
