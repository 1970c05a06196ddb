"""netcompress: compress a trained PyTorch network for the domain it will serve.

The public surface (everything else is an implementation detail)::

    stats  = netcompress.collect(model, target_batches)           # one streaming pass
    report = netcompress.compress(model, stats=stats, method="dalr", budget=0.1)
    netcompress.save(model, "out/", report)                      # safetensors + manifest
    netcompress.load(fresh_model, "out/")

    netcompress.compress(model, method="magnitude", sparsity=0.9)    # prune (masks kept)
    netcompress.compress(model, method="kmeans", bits=5)             # share weights
    netcompress.save_compressed(model, "model.ncz")                  # Huffman-coded container
    netcompress.export_onnx(model, batch, "model.onnx", check_data=batches)  # checked with onnxruntime
    netcompress.prune_reallocate(model, (x, y), flops=0.3, epochs=5)  # PEEL: channels where they help
"""

# Importing a family's package registers its methods.
from netcompress import lowrank, prune, quantize  # noqa: F401
from netcompress._core.layers import Padded
from netcompress.compress import METHODS, Family, Request, compress
from netcompress.distill.finetune import finetune
from netcompress.lowrank.family import sweep
from netcompress.lowrank.methods import Factorization, dalr, dalr_bc, svd, svd_bc
from netcompress.lowrank.modules import LowRankConv2d, LowRankLinear
from netcompress.pipeline import read_recipe, run_pipeline
from netcompress.prune.modules import MaskedConv2d, MaskedLinear
from netcompress.prune.n2n import N2NResult, n2n_search
from netcompress.prune.peel import Reallocation, prune_reallocate
from netcompress.quantize.modules import QuantizedConv2d, QuantizedLinear
from netcompress.registry import Method, register, register_family, unregister
from netcompress.report import LayerRow, Report
from netcompress.stats.collect import LayerStats, collect
from netcompress.stats.flops import count_flops
from netcompress.stats.moments import Moments, relative_output_error
from netcompress.storage.container import load_compressed, save_compressed
from netcompress.storage.io import load, read_report, save
from netcompress.storage.onnx import ExportResult, export_onnx
from netcompress.storage.tables import storage_table

__version__ = "0.1.0"


__all__ = [
    "METHODS",
    "ExportResult",
    "Family",
    "Method",
    "Request",
    "Factorization",
    "LayerRow",
    "LayerStats",
    "LowRankConv2d",
    "LowRankLinear",
    "MaskedConv2d",
    "MaskedLinear",
    "Moments",
    "N2NResult",
    "Padded",
    "QuantizedConv2d",
    "QuantizedLinear",
    "Reallocation",
    "Report",
    "collect",
    "compress",
    "count_flops",
    "dalr",
    "dalr_bc",
    "export_onnx",
    "finetune",
    "load",
    "load_compressed",
    "n2n_search",
    "prune_reallocate",
    "read_recipe",
    "read_report",
    "register",
    "register_family",
    "relative_output_error",
    "run_pipeline",
    "save",
    "save_compressed",
    "storage_table",
    "svd",
    "svd_bc",
    "sweep",
    "unregister",
]
