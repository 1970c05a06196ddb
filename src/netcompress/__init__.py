"""netcompress: compress a trained PyTorch network for the domain it will serve.

The public surface (everything else is an implementation detail)::

    import netcompress as nc

    stats  = nc.collect(model, target_batches)                    # one streaming pass
    report = nc.compress(model, stats=stats, settings=nc.DALR(budget=0.1))
    nc.compress(model, batches, {"re:.*attention.*": nc.GPTQ(bits=4),   # a method per layer, one pass
                                 "classifier": None, "_default": nc.Uniform(bits=8)})
    nc.compress(model, batches, target=nc.Target(size=0.125))     # a plan chosen per layer to a target
    nc.save(model, "out/", report)                                # safetensors + manifest
    nc.load(fresh_model, "out/")
    nc.replay(report.to_json(), fresh_model, target_batches)      # the same weights again
    nc.save_compressed(model, "model.ncz")                        # Huffman-coded container
    nc.export_onnx(model, batch, "model.onnx", check_data=batches)  # checked with onnxruntime

Each method has a frozen settings class (``nc.METHODS`` lists them); ``method="gptq", bits=4``
is sugar for ``nc.GPTQ(bits=4)``.
"""

# Importing a family's package registers its methods.
from netcompress import lowrank, prune, quantize  # noqa: F401
from netcompress._core.version import __version__  # noqa: F401  (nc.__version__)
from netcompress.compress import compress, replay
from netcompress.distill.finetune import finetune
from netcompress.distill.recover import Recover
from netcompress.lowrank import CP, CPDALR, DALR, DALRBC, SVD, SVDBC, Jaderberg, JaderbergDALR
from netcompress.lowrank.family import sweep
from netcompress.pipeline import read_recipe, run_pipeline
from netcompress.planner import search as _planner  # noqa: F401  (registers compress(target=...)'s planner)
from netcompress.planner.target import Target
from netcompress.prune import Activation, Channel, Magnitude, SparseGPT
from netcompress.prune.n2n import n2n_search
from netcompress.prune.peel import prune_reallocate
from netcompress.quantize import GPTQ, Binary, KMeans, Ternary, Uniform
from netcompress.registry import Method, MethodTable, Settings, register, register_family, unregister
from netcompress.report import LayerRow, Report
from netcompress.stats.collect import LayerStats, collect
from netcompress.stats.flops import count_flops
from netcompress.stats.moments import Moments, relative_output_error
from netcompress.storage.container import load_compressed, save_compressed
from netcompress.storage.io import load, read_report, save
from netcompress.storage.onnx import export_onnx
from netcompress.storage.tables import storage_table

METHODS = MethodTable()  # name → Method, read-only: register() adds, unregister() removes

__all__ = [
    # settings, one class per method
    "CP", "CPDALR", "DALR", "DALRBC", "GPTQ", "SVD", "SVDBC", "Activation", "Binary", "Channel", "Jaderberg",
    "JaderbergDALR", "KMeans", "Magnitude", "Settings", "SparseGPT", "Ternary", "Uniform",
    # compress, measure, keep
    "LayerRow", "LayerStats", "METHODS", "Method", "Moments", "Recover", "Report", "Target", "collect", "compress",
    "count_flops", "export_onnx", "finetune", "load", "load_compressed", "n2n_search", "prune_reallocate",
    "read_recipe", "read_report", "register", "register_family", "relative_output_error", "replay", "run_pipeline",
    "save", "save_compressed", "storage_table", "sweep", "unregister",
]
