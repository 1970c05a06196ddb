"""netcompress: compress a trained PyTorch network for the domain it will serve.

The public surface (everything else is an implementation detail)::

    stats  = netcompress.collect(model, target_batches)           # one streaming pass
    report = netcompress.compress(model, stats=stats, method="dalr", budget=0.1)
    netcompress.save(model, "out/", report)                      # safetensors + manifest
    netcompress.load(fresh_model, "out/")
"""

from .compress import METHODS, compress, sweep
from .io import load, read_report, save
from .lowrank import Factorization, LowRankConv2d, LowRankLinear, dalr, dalr_bc, svd, svd_bc
from .report import LayerRow, Report
from .stats import LayerStats, Moments, collect

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Factorization",
    "LayerRow",
    "LayerStats",
    "LowRankConv2d",
    "LowRankLinear",
    "Moments",
    "Report",
    "collect",
    "compress",
    "dalr",
    "dalr_bc",
    "load",
    "read_report",
    "save",
    "svd",
    "svd_bc",
    "sweep",
]
