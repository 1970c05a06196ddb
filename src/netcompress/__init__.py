"""netcompress: compress a trained PyTorch network for the domain it will serve.

The public surface (everything else is an implementation detail)::

    stats  = netcompress.collect(model, target_batches)           # one streaming pass
    report = netcompress.compress(model, stats=stats, method="dalr", budget=0.1)
    netcompress.save(model, "out/", report)                      # safetensors + manifest
    netcompress.load(fresh_model, "out/")

    netcompress.compress(model, method="magnitude", sparsity=0.9)    # prune (masks kept)
    netcompress.compress(model, method="kmeans", bits=5)             # share weights
    netcompress.save_compressed(model, "model.ncz")                  # Huffman-coded container
"""

from ._layers import Padded
from .compress import METHODS, compress, sweep
from .container import load_compressed, save_compressed, storage_table
from .io import load, read_report, save
from .lowrank import Factorization, LowRankConv2d, LowRankLinear, dalr, dalr_bc, svd, svd_bc
from .pipeline import read_recipe, run_pipeline
from .prune import MaskedConv2d, MaskedLinear
from .quantize import QuantizedConv2d, QuantizedLinear
from .report import LayerRow, Report
from .stats import LayerStats, Moments, collect, relative_output_error
from .train import finetune

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Factorization",
    "LayerRow",
    "LayerStats",
    "LowRankConv2d",
    "LowRankLinear",
    "MaskedConv2d",
    "MaskedLinear",
    "Moments",
    "Padded",
    "QuantizedConv2d",
    "QuantizedLinear",
    "Report",
    "collect",
    "compress",
    "dalr",
    "dalr_bc",
    "finetune",
    "load",
    "load_compressed",
    "read_recipe",
    "read_report",
    "relative_output_error",
    "run_pipeline",
    "save",
    "save_compressed",
    "storage_table",
    "svd",
    "svd_bc",
    "sweep",
]
