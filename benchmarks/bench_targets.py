"""The planner (``compress(..., target=...)``) against the best single method at each cost, on real models.

For every model, one run measures side by side:

* **single methods**: one settings object for every layer it fits (``nc.Uniform(bits=8)``;
  ``nc.GPTQ(bits, group_size, symmetric=False)`` for bits 4/3/2 and groups per channel/128/32, a
  group size that does not divide a layer's inputs leaving that layer dense; ``nc.DALR(budget)`` for
  budgets 0.5 … 0.0625, also with 8-bit factors);
* **the planner**: ``nc.compress(model, calibration, target=nc.Target(...))`` with its default
  candidates (uniform, GPTQ, DALR, chosen per layer), for each target of the model;
* **peers** where importable (torchao int8/int4 weight-only; skipped with a note otherwise).

Every row is a fresh ``deepcopy`` of the same trained model, compressed on the same calibration
batches (inputs only, no labels; the default 20 % of them held out for the Report's fidelity), with
``torch.manual_seed(0)`` before each call. A row records its size share (``saved_bytes`` of the
compressed model, the bytes ``nc.save`` writes for its tensors, over the float32 bytes of the
original), those bytes, the bytes of the directory ``nc.save(model, dir, report)`` writes (safetensors,
manifest and report; the safetensors file alone too), the model's metric, and the wall seconds of the
``compress`` call. For EfficientNet, where one target is a latency, each row's latency share is also
measured: the median of interleaved timed calls of the dense and the compressed model on a batch of
64 test images (``--threads`` threads; netcompress's quantized layers rebuild float32 weights on every
call, so quantized rows are slower than dense: simulated, not an integer kernel).

"Best single at cost ≤ X" is the single-method row with the best metric among those whose cost
(size share, bytes, or latency share) is at most the target X; it is set next to the planner's row
for X (its size reached, metric, the whole-model relative output error it predicted and the one it
measured on held-out calibration samples, and its seconds).

Models and metrics:

1. digits MLP (``_common.trained("widemlp-digits")``: 784-1024-1024-10, MNIST then UCI digits):
   calibration the 1,000 training images, metric top-1 accuracy (%) on the 797 test digits;
   targets size 1/16 and 1/32.
2. LeNet-5 (``trained("lenet5")``, MNIST): calibration 512 training images, accuracy on the 1,000
   test images; targets size 1/16 and 1/32.
3. EfficientNet-Lite0 (ImageNet weights) fine-tuned on MNIST at 64×64 (``_domain_models``; cached):
   calibration 512 training images, accuracy on the 1,500 test images; targets size 1/8 and 1/16 and
   latency 0.7 at batch 64.
4. all-MiniLM-L6-v2: calibration 128 sentences from standard-library docstrings, metric the mean
   cosine of sentence embeddings (mean pooling) against the dense model's on 128 held-out sentences
   from other modules. The encoder's Linear layers are compressed (embeddings and pooler stay dense
   in every row: the pooler does not reach the sentence embedding). Targets: bytes such that those
   layers' weights get 3.125 and 2.5 bits each (codes with their scales and zero points, biases
   outside the count as GPTQ papers count), ``bytes = (saved_bytes(model) − 4·N) + bits·N/8`` with N
   the number of weights of the encoder Linear layers.

Writes ``results/targets.json`` (merged: a ``--models`` subset replaces only those models),
``results/targets.md`` and ``results/targets.png``; ``--quick`` runs the MLP with a few sweep points
and writes only ``results/targets_quick.json``. Times depend on the machine and its load.

    python bench_targets.py [--models mlp,lenet,efficientnet,minilm] [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import netcompress as nc
from _common import machine, print_table, trained
from netcompress._core.sizes import saved_bytes
from netcompress.distill.finetune import accuracy
from netcompress.planner.search import float32_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SEED = 0
MODELS = ("mlp", "lenet", "efficientnet", "minilm")
LATENCY_BATCH = 64
LATENCY_CALLS = 7  # timed calls of each of dense and compressed, interleaved, per row

SWEEP = ([("uniform", {"bits": 8})]
         + [("gptq", {"bits": b, "group_size": g, "symmetric": False}) for b in (4, 3, 2) for g in (None, 128, 32)]
         + [("dalr", {"budget": b}) for b in (0.5, 0.35, 0.25, 0.125, 0.0625)]
         + [("dalr", {"budget": b, "factor_bits": 8}) for b in (0.5, 0.25, 0.125)])
QUICK_SWEEP = [("uniform", {"bits": 8}), ("gptq", {"bits": 4, "group_size": None, "symmetric": False}),
               ("gptq", {"bits": 2, "group_size": None, "symmetric": False}), ("dalr", {"budget": 0.125}),
               ("dalr", {"budget": 0.0625}), ("dalr", {"budget": 0.125, "factor_bits": 8})]
MINILM_SWEEP = [("gptq", {"bits": 3, "group_size": 128, "symmetric": True}),
                ("gptq", {"bits": 3, "group_size": 128, "symmetric": False}),
                ("gptq", {"bits": 2, "group_size": 128, "symmetric": False}),
                ("gptq", {"bits": 2, "group_size": 64, "symmetric": False}),
                ("gptq", {"bits": 3, "group_size": 32, "symmetric": False}),
                ("gptq", {"bits": 2, "group_size": 32, "symmetric": False}), ("uniform", {"bits": 8})]
SETTINGS = {"uniform": nc.Uniform, "gptq": nc.GPTQ, "dalr": nc.DALR}
MINILM_BITS = (3.125, 2.5)


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- one model's case


@dataclass
class Case:
    """A trained model, its calibration batches, its metric and targets."""

    key: str
    title: str
    model: nn.Module
    calibration: list
    metric: Callable[[nn.Module], float]
    metric_name: str
    metric_format: str
    targets: list[tuple[str, nc.Target]]  # (label, target)
    sweep: list[tuple[str, dict]]
    layers: list[str] | None = None  # what every row compresses (None: every layer a method takes)
    latency_input: torch.Tensor | None = None  # with a latency target: every row's latency share is measured
    recover: bool = False  # also run the planner with RECOVER (beside the peers' rows with the same recovery)
    notes: list[str] = field(default_factory=list)


def image_metric(x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> Callable[[nn.Module], float]:
    def metric(model: nn.Module) -> float:
        with torch.inference_mode():
            return accuracy(model, x, y, batch_size=batch_size)
    return metric


def mlp_case(quick: bool) -> Case:
    model, data = trained("widemlp-digits", seed=SEED)
    model.eval()
    return Case("mlp", "digits MLP (784-1024-1024-10, MNIST → UCI digits)", model, list(data.train_x.split(250)),
                image_metric(data.test_x, data.test_y), "test accuracy %", ".2f",
                [("size 1/16", nc.Target(size=1 / 16)), ("size 1/32", nc.Target(size=1 / 32))],
                QUICK_SWEEP if quick else SWEEP,
                notes=[f"Calibration: the {len(data.train_x)} training images (no labels), batches of 250; "
                       f"metric: top-1 accuracy on the {len(data.test_x)} test digits."])


def lenet_case() -> Case:
    model, data = trained("lenet5", seed=SEED)
    model.eval()
    calibration = data.train_x[:512]
    return Case("lenet", "LeNet-5 (MNIST)", model, list(calibration.split(128)),
                image_metric(data.test_x, data.test_y), "test accuracy %", ".2f",
                [("size 1/16", nc.Target(size=1 / 16)), ("size 1/32", nc.Target(size=1 / 32))], SWEEP,
                notes=[f"Calibration: {len(calibration)} training images (no labels), batches of 128; "
                       f"metric: top-1 accuracy on the {len(data.test_x)} test images."])


def efficientnet_case() -> Case:
    from _domain_models import efficientnet_mnist64

    model, data = efficientnet_mnist64()
    calibration = data.prepare(data.train_x[:512])
    test_x = data.prepare(data.test_x)
    return Case("efficientnet", "EfficientNet-Lite0 (ImageNet) fine-tuned on MNIST at 64×64", model,
                list(calibration.split(64)), image_metric(test_x, data.test_y, batch_size=250), "test accuracy %",
                ".2f", [("size 1/8", nc.Target(size=1 / 8)), ("size 1/16", nc.Target(size=1 / 16)),
                        (f"latency 0.7 (batch {LATENCY_BATCH})", nc.Target(latency=0.7, batch=LATENCY_BATCH))],
                SWEEP, latency_input=test_x[:LATENCY_BATCH].clone(), recover=True,
                notes=[f"Fine-tuned from ImageNet on {len(data.train_x)} MNIST images (grey → 3 channels, 28 → 64 "
                       "bilinear, ImageNet mean/std), Adam, cached; calibration: 512 training images (no labels), "
                       f"batches of 64; metric: top-1 accuracy on the {len(data.test_x)} test images.",
                       f"Latency share: median of {LATENCY_CALLS} interleaved calls of dense and compressed on "
                       f"{LATENCY_BATCH} test images; quantized layers rebuild float32 weights on every call "
                       "(simulated), so quantized rows run slower than dense."])


def minilm_case() -> Case:
    from _domain_models import encoder_linears, minilm_parts

    parts = minilm_parts(count=128, seed=SEED)
    model = parts.model
    linear_bytes, weights = encoder_linears(model)
    rest = saved_bytes(model) - 4 * weights  # biases are not weights: they stay float32 outside the bit count
    targets = [(f"{bits:g} bits/weight", nc.Target(bytes=int(rest + bits * weights / 8))) for bits in MINILM_BITS]
    # Named one by one: with target=, layers="re:^encoder\\..*" is refused, because the planner hands every module
    # the pattern matches (LayerNorms, containers) to collect as an explicitly named layer, which collect rejects.
    encoder = [name for name, m in model.named_modules() if name.startswith("encoder.") and isinstance(m, nn.Linear)]
    return Case("minilm", "all-MiniLM-L6-v2 (sentence embeddings)", model, parts.batches, parts.quality,
                "embedding cosine vs dense", ".4f", targets, MINILM_SWEEP, layers=encoder,
                notes=[f"Calibration: {len(parts.calibration)} docstring sentences in batches of 16; metric: mean "
                       f"cosine of mean-pooled sentence embeddings vs the dense model on {len(parts.heldout)} "
                       "held-out sentences from other modules.",
                       f"Only the encoder's Linear layers are compressed ({weights:,} weights, {linear_bytes:,} "
                       f"float32 bytes with biases; {len(encoder)} layers named one by one in every row). Bits per "
                       "weight count a weight's code and its share of scales and zero points, as GPTQ papers do; "
                       f"everything else, biases included, stays as it is ({rest:,} bytes). Target bytes = rest + "
                       f"bits × {weights:,} / 8 for bits {', '.join(f'{b:g}' for b in MINILM_BITS)}."])


BUILDERS = {"mlp": mlp_case, "lenet": lenet_case, "efficientnet": efficientnet_case, "minilm": minilm_case}


# --------------------------------------------------------------------------- measuring one row


def settings_label(method: str, values: dict) -> str:
    if method == "uniform":
        return f"uniform {values['bits']}-bit"
    if method == "gptq":
        group = values.get("group_size")
        symmetric = " symmetric" if values.get("symmetric") else ""
        return f"gptq {values['bits']}-bit " + (f"g{group}" if group else "per channel") + symmetric
    text = f"dalr budget {values['budget']:g}"
    return text + (f" + {values['factor_bits']}-bit factors" if values.get("factor_bits") else "")


def family_of(method: str, values: dict) -> str:
    return "dalr + int8 factors" if method == "dalr" and values.get("factor_bits") else method


def on_disk(model: nn.Module, report: nc.Report | None) -> tuple[int, int]:
    """(bytes of the whole directory ``nc.save`` writes, bytes of its safetensors file)."""
    with tempfile.TemporaryDirectory(prefix="bench_targets_") as folder:
        path = nc.save(model, Path(folder) / "model", report)
        files = [f for f in path.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files), sum(f.stat().st_size for f in files if f.suffix == ".safetensors")


def latency_share(dense: nn.Module, model: nn.Module, x: torch.Tensor, calls: int = LATENCY_CALLS) -> float:
    """Median seconds of ``model`` over median seconds of ``dense`` on ``x``, calls interleaved (after a warm-up)."""
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.inference_mode():
        for m in (dense, model):
            m(x)
        for i in range(calls):
            for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                (dense, model)[k](x)
                times[k].append(time.perf_counter() - start)
    return statistics.median(times[1]) / statistics.median(times[0])


def fidelity_of(report: nc.Report | None) -> dict | None:
    if report is None or report.fidelity is None:
        return None
    f = report.fidelity
    return {"agreement": f.agreement, "cosine": f.cosine, "relative_error": f.relative_error, "samples": f.samples}


def short_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]


def measure(case: Case, original_bytes: int, run: Callable[[nn.Module], nc.Report | None]) -> dict:
    """Compress a fresh copy with ``run`` and measure it; an exception becomes ``{"error": ...}``."""
    model = copy.deepcopy(case.model)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    try:
        report = run(model)
    except Exception as error:  # noqa: BLE001 - one failing configuration is a row, not the end of the run
        return {"error": short_error(error), "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    model.eval()
    stored = saved_bytes(model)
    row = {"size": stored / original_bytes, "bytes": stored, "metric": case.metric(model), "seconds": seconds,
           "fidelity": fidelity_of(report)}
    try:
        row["disk_bytes"], row["safetensors_bytes"] = on_disk(model, report)
    except Exception as error:  # noqa: BLE001
        row["disk_error"] = short_error(error)
    if report is not None:  # the weight layers the compressed model keeps as they were (a setting did not fit, ...)
        row["dense_layers"] = [r.name for r in report.rows if not r.replaced]
    if case.latency_input is not None:
        row["latency"] = latency_share(case.model, model, case.latency_input)
    row["_report"] = report
    return row


def single_rows(case: Case, original_bytes: int) -> list[dict]:
    rows = []
    for method, values in case.sweep:
        settings = SETTINGS[method](**values)
        label = settings_label(method, values)
        row = measure(case, original_bytes, lambda m, s=settings: nc.compress(m, case.calibration, s,
                                                                             layers=case.layers, progress=False))
        row.pop("_report", None)
        rows.append({"method": label, "family": family_of(method, values), "settings": settings.to_json(), **row})
        print_row(case, rows[-1])
    return rows


def planner_rows(case: Case, original_bytes: int, recover: nc.Recover | None = None) -> list[dict]:
    rows = []
    for label, target in case.targets:
        row = measure(case, original_bytes, lambda m, t=target: nc.compress(m, case.calibration, target=t,
                                                                           layers=case.layers, recover=recover,
                                                                           progress=False))
        report = row.pop("_report", None)
        suffix = " + recovery" if recover is not None else ""
        entry = {"method": f"planner ({label}){suffix}", "family": "planner" + suffix, "target": label,
                 "asked": target.asked(), **row}
        if report is not None and report.target is not None and report.target.get("recovered") is not None:
            entry["recovery"] = report.target["recovered"]
        if report is not None and report.target is not None:
            summary = report.target
            entry.update(reached=summary["reached"], predicted_error=summary["predicted_error"],
                         measured_error=summary["measured_error"],
                         choices={name: layer["choice"] for name, layer in summary["layers"].items()})
            counts: dict[str, int] = {}
            for choice in entry["choices"].values():
                family = choice.split("(")[0]
                if family == "dalr" and "factor_bits" in choice:
                    family = "dalr+int8"
                counts[family] = counts.get(family, 0) + 1
            entry["choice_counts"] = counts
        rows.append(entry)
        print_row(case, entry)
    return rows


RECOVER = nc.Recover(epochs=4)  # the recovery every "+ recovery" row gets, planner and Torch-Pruning alike
PRUNING_EXTRA_RATIOS = (0.3,)  # Torch-Pruning ratios measured beside those that meet each size target


def recovered(case: Case, model: nn.Module) -> None:
    """``RECOVER`` on ``model`` in place: the planner's own recovery (distillation from the original on the
    calibration batches, best held-out epoch kept), for a model netcompress did not compress."""
    from netcompress.distill.recover import recover
    from netcompress.stats.fidelity import reference_outputs

    holdout = 0.2  # compress's default: the same held-out batches pick the best epoch
    references = reference_outputs(case.model, case.calibration, holdout)
    recover(model, copy.deepcopy(case.model), case.calibration, holdout, references, RECOVER, progress=False)


def torch_prune(model: nn.Module, case: Case, ratio: float, importance: str) -> nn.Module:
    """``model`` (a copy of the case's) pruned in place by Torch-Pruning 1.6 (``MetaPruner``) at ``ratio`` of
    the channels, the classifier ignored; Taylor importance takes its gradients from cross-entropy against
    the original's own predictions on the calibration batches (no labels are used anywhere)."""
    import torch_pruning as tp

    model.eval()
    example = case.calibration[0][:1]
    scorer = tp.importance.MagnitudeImportance(p=1) if importance == "l1" else tp.importance.TaylorImportance()
    pruner = tp.pruner.MetaPruner(model, example, importance=scorer, pruning_ratio=ratio,
                                  ignored_layers=[model._fc])
    if importance == "taylor":
        model.zero_grad()
        for batch in case.calibration:
            with torch.no_grad():
                target = case.model(batch).argmax(1)
            nn.functional.cross_entropy(model(batch), target).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def _ratio_for(case: Case, size: float, original_bytes: int) -> float:
    """The smallest Torch-Pruning (L1) ratio whose float32 bytes are within ``size`` of the original's."""
    low, high = 0.0, 0.97
    for _ in range(7):
        middle = (low + high) / 2
        pruned = torch_prune(copy.deepcopy(case.model), case, middle, "l1")
        low, high = (low, middle) if float32_bytes(pruned) <= size * original_bytes else (middle, high)
    return high


def pruning_peer_rows(case: Case, original_bytes: int) -> tuple[list[dict], str | None]:
    """Torch-Pruning L1 and Taylor at each size target's ratio (and :data:`PRUNING_EXTRA_RATIOS`), with and without
    :data:`RECOVER`, for the CNN; (rows, a note when Torch-Pruning is not importable)."""
    try:
        import torch_pruning
    except ImportError as error:
        return [], f"torch-pruning is not importable here ({error}); its rows are skipped"
    ratios = sorted({round(_ratio_for(case, t.size, original_bytes), 4) for _, t in case.targets
                     if t.kind == "size"} | set(PRUNING_EXTRA_RATIOS))
    rows = []
    for ratio in ratios:
        for importance in ("l1", "taylor"):
            for recovery in (False, True):
                def run(m: nn.Module, ratio=ratio, importance=importance, recovery=recovery) -> None:
                    torch_prune(m, case, ratio, importance)
                    if recovery:
                        recovered(case, m)

                row = measure(case, original_bytes, run)
                row.pop("_report", None)
                label = f"torch-pruning {importance} {ratio:.0%}" + (" + recovery" if recovery else "")
                rows.append({"method": label, "family": "torch-pruning" + (" + recovery" if recovery else ""),
                             "ratio": ratio, "torch_pruning": torch_pruning.__version__, **row})
                print_row(case, rows[-1])
    return rows, None


def peer_rows(case: Case, original_bytes: int) -> tuple[list[dict], str | None]:
    """torchao int8/int4 weight-only if torchao imports, Torch-Pruning for the CNN; (rows, a note when skipped)."""
    if case.key == "minilm":
        return [], None
    pruning, pruning_note = pruning_peer_rows(case, original_bytes) if case.key == "efficientnet" else ([], None)
    rows, note = _torchao_rows(case, original_bytes)
    notes = "; ".join(n for n in (pruning_note, note) if n) or None
    return pruning + rows, notes


def _torchao_rows(case: Case, original_bytes: int) -> tuple[list[dict], str | None]:
    try:
        from torchao.quantization import quantize_
    except ImportError as error:
        return [], f"torchao is not importable here ({error}); its rows are skipped"
    import torchao.quantization as tq

    def config(name: str):
        new, old = {"int8": "Int8WeightOnlyConfig", "int4": "Int4WeightOnlyConfig"}[name], f"{name}_weight_only"
        return getattr(tq, new)() if hasattr(tq, new) else getattr(tq, old)()

    rows = []
    for name in ("int8", "int4"):
        model = copy.deepcopy(case.model)
        start = time.perf_counter()
        try:
            quantize_(model, config(name))
            seconds = time.perf_counter() - start
            import io

            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            stored = buffer.getbuffer().nbytes
            row = {"size": stored / original_bytes, "bytes": stored, "metric": case.metric(model), "seconds": seconds,
                   "bytes_measure": "torch.save of the state dict"}
        except Exception as error:  # noqa: BLE001
            row = {"error": short_error(error)}
        rows.append({"method": f"torchao {name} weight-only", "family": "torchao", **row})
        print_row(case, rows[-1])
    return rows, None


def print_row(case: Case, row: dict) -> None:
    if "error" in row:
        say(f"  {case.key:12s} {row['method']:38s} ERROR {row['error']}")
        return
    extra = f"  latency {row['latency']:.3f}" if "latency" in row else ""
    if "measured_error" in row:
        extra += f"  predicted err {row['predicted_error']:.4f}  measured err {row['measured_error']:.4f}"
    say(f"  {case.key:12s} {row['method']:38s} size {row['size']:.4f}  {row['bytes']:>10,d} B  "
        f"metric {format(row['metric'], case.metric_format)}  {row['seconds']:6.1f} s{extra}")


# --------------------------------------------------------------------------- comparing


def cost_of(target: nc.Target, row: dict, original_bytes: int) -> float | None:
    kind = target.kind
    if kind == "size":
        return row.get("size")
    if kind == "bytes":
        return row.get("bytes")
    if kind == "latency":
        return row.get("latency")
    raise ValueError(f"no comparison for a {kind} target")


def heldout_error(row: dict) -> float | None:
    """The whole model's relative output error on the held-out calibration samples (the Report's fidelity)."""
    return (row.get("fidelity") or {}).get("relative_error")


def compare(case: Case, rows: list[dict], planned: list[dict], original_bytes: int,
            peer_rows_of: dict | None = None) -> list[dict]:
    """For each target: the best single-method row within its cost, the planner's row, and (from
    ``peer_rows_of``: ``{"peers": [...], "planner_recovered": [...]}``) the best peer within the cost and
    the planner with recovery."""
    peer_rows_of = peer_rows_of or {}
    table = []
    for (label, target), plan in zip(case.targets, planned, strict=True):
        limit = getattr(target, target.kind)
        fitting = [r for r in rows if "error" not in r and cost_of(target, r, original_bytes) is not None
                   and cost_of(target, r, original_bytes) <= limit]
        best = max(fitting, key=lambda r: r["metric"], default=None)
        entry = {"target": label, "kind": target.kind, "limit": limit,
                 "best_single": None if best is None else {
                     "method": best["method"], "cost": cost_of(target, best, original_bytes), "size": best["size"],
                     "metric": best["metric"], "heldout_error": heldout_error(best)},
                 "planner": ({"error": plan["error"]} if "error" in plan else
                             {"cost": cost_of(target, plan, original_bytes), "size": plan["size"],
                              "metric": plan["metric"], "heldout_error": heldout_error(plan),
                              "predicted_error": plan.get("predicted_error"),
                              "measured_error": plan.get("measured_error"), "seconds": plan["seconds"]})}
        if best is not None and "error" not in plan:
            entry["planner_minus_best"] = plan["metric"] - best["metric"]
        peers = [r for r in peer_rows_of.get("peers", []) if "error" not in r
                 and cost_of(target, r, original_bytes) is not None and cost_of(target, r, original_bytes) <= limit]
        best_peer = max(peers, key=lambda r: r["metric"], default=None)
        if best_peer is not None:
            entry["best_peer"] = {"method": best_peer["method"], "cost": cost_of(target, best_peer, original_bytes),
                                  "metric": best_peer["metric"]}
        again = [r for r in peer_rows_of.get("planner_recovered", []) if r.get("target") == label and "error" not in r]
        if again:
            entry["planner_recovered"] = {"cost": cost_of(target, again[0], original_bytes),
                                          "metric": again[0]["metric"], "recovery": again[0].get("recovery")}
        table.append(entry)
    return table


def rerun_planner(case: Case, result: dict, labels: list[str]) -> dict:
    """``result`` (a model's earlier run) with the planner's rows for the targets ``labels`` measured again."""
    original = float32_bytes(case.model)
    case.targets = [(label, target) for label, target in case.targets if label in labels]
    if not case.targets:
        raise SystemExit("--rerun-targets names none of this model's targets")
    planned = planner_rows(case, original)
    again = planner_rows(case, original, RECOVER) if case.recover else []
    for key, fresh in (("planner", planned), ("planner_recovered", again)):
        kept = [r for r in result.get(key, []) if r.get("target") not in labels]
        result[key] = sorted(kept + fresh, key=lambda r: [label for label, _ in BUILT_TARGETS[case.key]].index(r["target"]))
    case.targets = BUILT_TARGETS[case.key]
    result["comparison"] = compare(case, result["rows"], result["planner"], original,
                                   {"peers": result["peers"], "planner_recovered": result["planner_recovered"]})
    result.setdefault("reruns", []).append({"targets": labels, "date": time.strftime("%Y-%m-%d %H:%M:%S")})
    return result


BUILT_TARGETS: dict[str, list] = {}  # every target of each model built, whatever --rerun-targets keeps


def run_case(case: Case) -> dict:
    original = float32_bytes(case.model)
    dense = {"metric": case.metric(case.model), "bytes": saved_bytes(case.model), "float32_bytes": original}
    dense["disk_bytes"], dense["safetensors_bytes"] = on_disk(case.model, None)
    say(f"\n{case.title}: dense {case.metric_name} {format(dense['metric'], case.metric_format)}, "
        f"{dense['bytes']:,} bytes")
    rows = single_rows(case, original)
    peers, note = peer_rows(case, original)
    if note:
        say(f"  note: {note}")
    planned = planner_rows(case, original)
    recovered_plans = planner_rows(case, original, RECOVER) if case.recover else []
    notes = list(case.notes) + ([note] if note else [])
    return {"title": case.title, "metric": case.metric_name, "metric_format": case.metric_format, "dense": dense,
            "rows": rows, "peers": peers, "planner": planned, "planner_recovered": recovered_plans,
            "comparison": compare(case, rows, planned, original,
                                  {"peers": peers, "planner_recovered": recovered_plans}), "notes": notes}


# --------------------------------------------------------------------------- tables and the figure


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def cost_text(kind: str, value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f} B" if kind == "bytes" else f"{value:.4f}"


def comparison_table(result: dict) -> tuple[list[str], list[list[str]]]:
    spec = result["metric_format"]
    header = ["target", "best single (cost ≤ target)", "its cost", "its metric", "its err", "planner cost",
              "planner metric", "planner err", "Δ metric", "pred. err", "planner s"]
    extra = any("best_peer" in e or "planner_recovered" in e for e in result["comparison"])
    header += ["planner + recovery", "best peer (cost ≤ target)", "its metric"] if extra else []
    out = []
    for entry in result["comparison"]:
        best, plan = entry["best_single"], entry["planner"]
        row = [entry["target"], best["method"] if best else "none fits", cost_text(entry["kind"], best and best["cost"]),
               _fmt(best and best["metric"], spec), _fmt(best and best["heldout_error"], ".4f")]
        if "error" in plan:
            row += [f"error: {plan['error'][:80]}", "", "", "", "", ""]
        else:
            delta = entry.get("planner_minus_best")
            row += [cost_text(entry["kind"], plan["cost"]), format(plan["metric"], spec),
                    _fmt(plan["heldout_error"], ".4f"), "—" if delta is None else f"{delta:+{spec}}",
                    _fmt(plan["predicted_error"], ".4f"), f"{plan['seconds']:.1f}"]
        if extra:
            again, peer = entry.get("planner_recovered"), entry.get("best_peer")
            row += [_fmt(again and again["metric"], spec), peer["method"] if peer else "none fits",
                    _fmt(peer and peer["metric"], spec)]
        out.append(row)
    return header, out


def rows_table(result: dict) -> tuple[list[str], list[list[str]]]:
    spec = result["metric_format"]
    everything = result["rows"] + result["peers"] + result["planner"] + result.get("planner_recovered", [])
    latency = any("latency" in r for r in everything)
    header = ["method", "size", "saved bytes", "on disk", "safetensors", result["metric"]]
    header += ["latency"] if latency else []
    header += ["held-out err", "pred. err", "meas. err", "s"]
    out = []
    dense = result["dense"]
    out.append(["dense float32", "1.0000", f"{dense['bytes']:,}", f"{dense['disk_bytes']:,}",
                f"{dense['safetensors_bytes']:,}", format(dense["metric"], spec)] + (["1.000"] if latency else [])
               + ["0", "", "", ""])
    for r in everything:
        if "error" in r:
            out.append([r["method"], f"error: {r['error'][:100]}"] + [""] * (len(header) - 2))
            continue
        line = [r["method"], f"{r['size']:.4f}", f"{r['bytes']:,}", _fmt(r.get("disk_bytes"), ",d"),
                _fmt(r.get("safetensors_bytes"), ",d"), format(r["metric"], spec)]
        line += [_fmt(r.get("latency"), ".3f")] if latency else []
        line += [_fmt(heldout_error(r), ".4f"), _fmt(r.get("predicted_error"), ".4f"),
                 _fmt(r.get("measured_error"), ".4f"), f"{r['seconds']:.1f}"]
        out.append(line)
    return header, out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(results: dict) -> str:
    parts = ["# The planner against the best single method at each cost\n",
             "Written by `benchmarks/bench_targets.py` (its docstring gives the method). \"size\": saved bytes "
             "(what `nc.save` writes for the tensors) over the original's float32 bytes; \"on disk\": the whole "
             "`nc.save` directory (safetensors, manifest, report). \"err\"/\"held-out err\": the whole model's relative "
             "output error ‖Y − Ŷ‖/‖Y‖ against the dense model on the held-out calibration samples (the Report's "
             "fidelity); \"pred. err\"/\"meas. err\": what the planner predicted and measured for its plan (on at "
             "most 256 of those samples). "
             "\"Δ metric\": planner minus the best single method whose cost is within the target.\n"]
    for key in MODELS:
        if key not in results["models"]:
            continue
        result = results["models"][key]
        run = result.get("run", {})
        parts.append(f"## {result['title']}\n")
        parts.append(f"Dense {result['metric']}: {format(result['dense']['metric'], result['metric_format'])}. "
                     f"Run: `{run.get('command', '?')}` on {run.get('machine', '?')}, {run.get('seconds', 0):.0f} s.\n")
        for again in result.get("reruns", []):
            parts.append(f"The planner's rows for {', '.join(again['targets'])} were measured again by "
                         f"`{again.get('command', '?')}` ({again.get('date', '?')}, {again.get('seconds', 0):.0f} s).\n")
        parts.append("### Target → best single method vs planner\n")
        parts.append(markdown_table(*comparison_table(result)) + "\n")
        parts.append("### Every row\n")
        parts.append(markdown_table(*rows_table(result)) + "\n")
        choices = [f"* {p['target']}: {p['choice_counts']}" for p in result["planner"] if "choice_counts" in p]
        if choices:
            parts.append("Planner choices (layers per family):\n\n" + "\n".join(choices) + "\n")
        parts.append("\n".join(f"* {note}" for note in result["notes"]) + "\n")
    return "\n".join(parts)


FAMILY_STYLE = {"uniform": ("tab:gray", "s"), "gptq": ("tab:blue", "o"), "dalr": ("tab:green", "^"),
                "dalr + int8 factors": ("tab:olive", "v"), "torchao": ("tab:purple", "D"),
                "torch-pruning": ("tab:brown", "x"), "torch-pruning + recovery": ("tab:pink", "P")}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    keys = [k for k in MODELS if k in results["models"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        result = results["models"][key]
        for family, (colour, marker) in FAMILY_STYLE.items():
            points = [r for r in result["rows"] + result["peers"] if r.get("family") == family and "error" not in r]
            if points:
                ax.scatter([r["size"] for r in points], [r["metric"] for r in points], c=colour, marker=marker,
                           label=family, alpha=0.8, s=30)
        planned = sorted((p for p in result["planner"] if "error" not in p and "latency" not in p["asked"]),
                         key=lambda p: p["size"])
        if planned:
            ax.plot([p["size"] for p in planned], [p["metric"] for p in planned], "-o", c="tab:red", lw=2,
                    label="planner", zorder=5)
        again = sorted((p for p in result.get("planner_recovered", []) if "error" not in p
                        and "latency" not in p["asked"]), key=lambda p: p["size"])
        if again:
            ax.plot([p["size"] for p in again], [p["metric"] for p in again], "--o", c="tab:orange", lw=1.5,
                    label="planner + recovery", zorder=5)
        for p in result["planner"]:
            if "error" not in p and "latency" in p["asked"]:
                ax.scatter([p["size"]], [p["metric"]], c="tab:red", marker="*", s=160, zorder=6,
                           label=f"planner ({p['target']})")
        ax.axhline(result["dense"]["metric"], ls="--", c="k", lw=1, label="dense")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("size share (saved bytes / float32 bytes)")
        ax.set_ylabel(result["metric"])
        ax.set_title(result["title"], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--quick", action="store_true",
                        help="the MLP only, a few sweep points; writes results/targets_quick.json only")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--rerun-targets", default=None,
                        help="target labels separated by ';' (say 'latency 0.7 (batch 64)'): measure only the planner's "
                             "rows for them again, keeping the rest of each model's earlier results")
    args = parser.parse_args()
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODELS]
    if unknown or not chosen:
        parser.error(f"--models takes some of {', '.join(MODELS)}, got {args.models!r}")
    if args.quick and chosen != ["mlp"]:
        if args.models != ",".join(MODELS):
            say(f"--quick runs the MLP only (ignoring {', '.join(m for m in chosen if m != 'mlp') or 'nothing'})")
        chosen = ["mlp"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    os.environ.setdefault("TQDM_DISABLE", "1")
    command = f"python bench_targets.py --models {','.join(chosen)}{' --quick' if args.quick else ''} " \
              f"--threads {args.threads}"
    say(f"{machine()}; load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    output = RESULTS / ("targets_quick.json" if args.quick else "targets.json")
    results = {"models": {}}
    if not args.quick and output.exists():  # a subset of models replaces only those models
        try:
            results = json.loads(output.read_text())
        except ValueError:
            say(f"{output} is not JSON; starting afresh")
    results.setdefault("models", {})
    started = time.perf_counter()
    for key in chosen:
        begun = time.perf_counter()
        case = BUILDERS[key](args.quick) if key == "mlp" else BUILDERS[key]()
        say(f"{case.title}: built in {time.perf_counter() - begun:.0f} s")
        BUILT_TARGETS[key] = list(case.targets)
        if args.rerun_targets:
            if key not in results["models"]:
                parser.error(f"--rerun-targets needs an earlier run of {key} in {output}")
            labels = [label.strip() for label in args.rerun_targets.split(";")]
            result = rerun_planner(case, results["models"][key], labels)
        else:
            result = run_case(case)
        run = {"command": command + (f" --rerun-targets '{args.rerun_targets}'" if args.rerun_targets else ""),
               "machine": machine(), "seconds": time.perf_counter() - begun, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        if args.rerun_targets:
            result["reruns"][-1].update(run)
        else:
            result["run"] = run
        results["models"][key] = result
        header, rows = comparison_table(result)
        say(f"\n{case.title}: target → best single method vs planner ({case.metric_name})")
        print_table(header, rows)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=1, default=str))  # after each model: a crash keeps the rest
    if not args.quick:
        (RESULTS / "targets.md").write_text(markdown(results))
        figure(results, RESULTS / "targets.png")
    say(f"\n{time.perf_counter() - started:.0f} s in all; written to {output}"
        + ("" if args.quick else f", {RESULTS / 'targets.md'}, {RESULTS / 'targets.png'}"))


if __name__ == "__main__":
    main()
