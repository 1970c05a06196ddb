"""Every registered method on two real pretrained models that ship offline, with held-out fidelity.

Models: EfficientNet-Lite0 (ImageNet-1k, 4.65 M parameters) and all-MiniLM-L6-v2 (sentence
embeddings, 22.7 M), as loaded by :mod:`experiments.real_models` with default layers.

Data, split by source so the held-out figures come from scenes and texts the methods never saw:

* EfficientNet: 66 calibration crops (11 of each of 6 photographs) and 64 held-out crops (16 of
  each of 4 other photographs), from ``skimage.data`` and scikit-learn's sample images. Fidelity is
  the top-1 agreement with the uncompressed model (1.0 = same predicted class on every crop).
* MiniLM: 128 calibration sentences and 128 held-out sentences from the docstrings of different
  standard-library modules. Fidelity is the mean cosine between compressed and original embeddings.

Each configuration runs in its own subprocess (peak memory is that process's maximum resident set
size, model and data included; the "none" row is the floor) under a memory cap and a time limit,
so that one failure or blow-up shows as a one-line error in its row and the table always completes.
"params" is the fraction of the model's parameters kept; "save" is the ``nc.save`` directory and
".ncz" the ``nc.save_compressed`` file, in MB. One statistics pass (``nc.collect``, conv layers sampled
at 64 positions per image; the "statistics" row) serves every configuration, so "time s" is the wall
time of ``compress`` given those statistics (structured methods still trace the model on the data).
Times are for this machine and are not asserted on. Writes ``results/real_models.json``.

    python bench_real_models.py [--quick] [--only efficientnet|minilm]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, run_child

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "real_models.json"
MEMORY_CAP = 10 * 2**30  # address space per configuration: an allocation past it fails instead of the machine
TIME_LIMIT = 300  # seconds per configuration
POSITIONS = 64  # spatial positions sampled per image for conv statistics

EFFICIENTNET = [
    ("dalr", {"budget": 0.3}), ("dalr", {"budget": 0.5}), ("dalr", {"budget": 0.7}),
    ("svd", {"budget": 0.3}), ("svd", {"budget": 0.5}), ("svd", {"budget": 0.7}),
    ("dalr-bc", {"budget": 0.5}), ("svd-bc", {"budget": 0.5}),
    ("magnitude", {"sparsity": 0.5}),
    ("channel", {"sparsity": 0.3}), ("activation", {"sparsity": 0.3}),
    ("uniform", {"bits": 8, "granularity": "channel"}), ("uniform", {"bits": 4, "granularity": "channel"}),
    ("kmeans", {"bits": 4}), ("binary", {}), ("ternary", {}),
]
MINILM = [
    ("dalr", {"budget": 0.5}), ("svd", {"budget": 0.5}), ("dalr-bc", {"budget": 0.5}), ("svd-bc", {"budget": 0.5}),
    ("uniform", {"bits": 4, "granularity": "group", "group_size": 32, "symmetric": True}),
    ("uniform", {"bits": 4, "granularity": "group", "group_size": 32}),
    ("uniform", {"bits": 8, "granularity": "channel"}),
    ("kmeans", {"bits": 4}), ("magnitude", {"sparsity": 0.5}),
    ("channel", {"sparsity": 0.3}), ("activation", {"sparsity": 0.3}),
    ("binary", {}), ("ternary", {}),
]
MODELS = {"efficientnet": ("EfficientNet-Lite0", EFFICIENTNET, "top-1 agr."),
          "minilm": ("all-MiniLM-L6-v2", MINILM, "cosine")}


# --------------------------------------------------------------------------- data, once per model


def prepare(model_key: str, folder: Path, quick: bool) -> Path:
    """Write the calibration/held-out inputs and the uncompressed model's outputs to ``folder``."""
    import torch
    from experiments import real_models as rm

    if model_key == "efficientnet":
        model = rm.efficientnet_lite0()
        calibration = rm.photographs("calibration", 3 if quick else 11, seed=0)
        heldout = rm.photographs("heldout", 4 if quick else 16, seed=1)
        data = {"calibration": calibration, "heldout": heldout,
                "ref_calibration": rm.logits(model, calibration), "ref_heldout": rm.logits(model, heldout)}
    else:
        model, tokenizer = rm.minilm()
        count = 32 if quick else 128
        calibration, heldout = rm.sentences("calibration", count, seed=0), rm.sentences("heldout", count, seed=0)
        data = {"calibration": calibration, "heldout": heldout,
                "ref_calibration": rm.embed(model, tokenizer, calibration),
                "ref_heldout": rm.embed(model, tokenizer, heldout)}
    path = folder / f"{model_key}.pt"
    torch.save(data, path)
    return path


# --------------------------------------------------------------------------- one configuration


def _bytes_in(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:160]


def run_one(model_key: str, method: str | None, settings: dict, data_path: str) -> dict:
    """Compress a fresh copy of the model in this process and measure it; never raises.

    ``method="collect"`` runs the statistics pass instead and writes it beside the data, for the others.
    """
    import torch
    from experiments import real_models as rm

    import netcompress as nc

    torch.manual_seed(0)
    data = torch.load(data_path, weights_only=True)
    if model_key == "efficientnet":
        model = rm.efficientnet_lite0()
        batches = list(data["calibration"].split(16))
        measure = rm.top1_agreement

        def outputs(m, split):
            return rm.logits(m, data[split])
    else:
        model, tokenizer = rm.minilm()
        batches = rm.tokenize(tokenizer, data["calibration"], batch_size=16)
        measure = rm.embedding_cosine

        def outputs(m, split):
            return rm.embed(m, tokenizer, data[split])

    total = sum(p.numel() for p in model.parameters())
    row: dict = {"error": None}
    stats_path = Path(data_path).with_suffix(".stats")
    stage = "compress"
    try:
        if method == "collect":
            start = time.perf_counter()
            stats = nc.collect(model, batches, positions=POSITIONS, progress=False)
            row["seconds"] = time.perf_counter() - start
            row["layers"] = str(len(stats))
            stats.save(stats_path)
            return row
        if method is not None:
            # One statistics pass serves every configuration (safetensors: nothing is unpickled).
            stats = nc.LayerStats.load(stats_path) if stats_path.exists() else None
            start = time.perf_counter()
            report = nc.compress(model, batches, stats=stats, method=method, positions=POSITIONS, progress=False,
                                 **settings)
            row["seconds"] = time.perf_counter() - start
            rows = report.rows
            row["layers"] = f"{sum(r.replaced for r in rows)}/{len(rows)}"
            row["params_kept"] = (total - report.params_before + report.params_after) / total
        else:
            report, row["params_kept"] = None, 1.0
        stage = "evaluate"
        row["heldout"] = measure(data["ref_heldout"], outputs(model, "heldout"))
        row["in_sample"] = measure(data["ref_calibration"], outputs(model, "calibration"))
        with tempfile.TemporaryDirectory() as tmp:
            stage = "save"
            nc.save(model, Path(tmp) / "saved", report)
            row["save_mb"] = _bytes_in(Path(tmp) / "saved") / 1e6
            stage = "save_compressed"
            nc.save_compressed(model, Path(tmp) / "model.ncz")
            row["ncz_mb"] = (Path(tmp) / "model.ncz").stat().st_size / 1e6
    except Exception as error:  # one row per configuration, whatever happens
        row["error"] = f"{stage}: {_one_line(error)}"
        if method == "collect":
            row["error"] = f"collect: {_one_line(error)} (each method collects its own)"
    return row


def child_main(spec: str) -> None:
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    args = json.loads(spec)
    row = run_one(args["model"], args["method"], args["settings"], args["data"])
    row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    print("RESULT " + json.dumps(row), flush=True)


def run_isolated(model_key: str, method: str | None, settings: dict, data_path: Path) -> dict:
    spec = json.dumps({"model": model_key, "method": method, "settings": settings, "data": str(data_path)})
    start = time.perf_counter()
    row = _run_child(spec)
    row["wall_s"] = time.perf_counter() - start  # the whole subprocess: imports, loading, evaluation, saving
    return row


def _run_child(spec: str) -> dict:
    return run_child([sys.executable, __file__, "--child", spec], TIME_LIMIT, HERE)


# --------------------------------------------------------------------------- table


def settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"


def configurations(key: str) -> list[tuple[str | None, dict]]:
    """The model's list plus one row for any registered method it does not cover (added later)."""
    import netcompress as nc

    listed = MODELS[key][1]
    missing = [(name, {"_missing": True}) for name in nc.METHODS if name not in {m for m, _ in listed}]
    unknown = [(name, settings) for name, settings in listed if name not in nc.METHODS]
    return [(None, {}), ("collect", {}), *[c for c in listed if c not in unknown], *missing, *unknown]


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _write(results: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    partial = RESULTS.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    partial.replace(RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer crops and sentences (a smoke run)")
    parser.add_argument("--only", choices=list(MODELS), help="one model only")
    args = parser.parse_args()
    import netcompress as nc

    started = time.perf_counter()
    results = {"models": {}, "positions": POSITIONS, "quick": args.quick, "complete": False}
    with tempfile.TemporaryDirectory() as tmp:
        for key in [args.only] if args.only else list(MODELS):
            title, _, fidelity = MODELS[key]
            data_path = prepare(key, Path(tmp), args.quick)
            records, table = [], []
            for method, settings in configurations(key):
                if method not in (None, "collect") and method not in nc.METHODS:
                    record = {"error": f"method {method!r} is not registered"}
                elif settings.get("_missing"):
                    settings, record = {}, {"error": "registered, but this benchmark has no typical setting for it"}
                else:
                    record = run_isolated(key, method, copy.deepcopy(settings), data_path)
                record.update(method={None: "none", "collect": "statistics"}.get(method, method), settings=settings)
                records.append(record)
                table.append([record["method"], settings_text(settings), record.get("layers", "-"),
                              fmt(record.get("params_kept"), ".3f"), fmt(record.get("heldout"), ".3f"),
                              fmt(record.get("in_sample"), ".3f"), fmt(record.get("save_mb"), ".2f"),
                              fmt(record.get("ncz_mb"), ".2f"), fmt(record.get("seconds"), ".1f"),
                              fmt(record.get("peak_mb"), ".0f"), record.get("error") or ""])
                results["models"][key] = {"title": title, "fidelity": fidelity, "rows": records}
                _write(results)  # after every row, so that an interrupted run still leaves its figures
                wall = record.get("wall_s", 0)
                print(f"  {key}: {record['method']} {settings_text(settings)}: {wall:.0f} s", file=sys.stderr, flush=True)
            results["models"][key] = {"title": title, "fidelity": fidelity, "rows": records}
            print(f"\n{title}: held-out and in-sample {fidelity} against the uncompressed model")
            print_table(["method", "settings", "layers", "params", f"held-out {fidelity}", "in-sample",
                         "save MB", ".ncz MB", "time s", "peak MB", "error"], table)
    results.update(seconds=time.perf_counter() - started, complete=True)
    _write(results)
    print(f"\n{results['seconds']:.0f} s in all; written to {RESULTS.relative_to(HERE)}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
    else:
        main()
