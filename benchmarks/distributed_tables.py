"""The tables of ``bench_distributed.py``, from its measurements alone (no torch): the benchmark prints and
writes them, and ``docs/render.py`` renders them from ``results/distributed.json``."""

from __future__ import annotations

import statistics

__all__ = ["CODISTILL_HEADER", "TERNGRAD_HEADER", "codistill_rows", "paired", "terngrad_rows"]

TERNGRAD_HEADER = ["gradients", "test accuracy %", "per seed", "bytes sent per rank", "fewer than float32",
                   "max weight diff. between ranks", "s per run"]
CODISTILL_HEADER = ["training", "each model's test accuracy %", "worse model, per seed", "averaged predictions %",
                    "bytes sent per rank", "s per run"]


def _mean(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _per_seed(values: list[float]) -> str:
    return " / ".join(f"{100 * v:.2f}" for v in values)


def terngrad_rows(raw: dict) -> list[list[str]]:
    rows = []
    for name, runs in raw["terngrad"].items():
        accuracies = [r["test_accuracy"] for r in runs]
        sent, float32 = runs[0]["bytes_sent"], runs[0]["float32_bytes"]
        rows.append([name, _mean(accuracies), _per_seed(accuracies), f"{sent:,}", f"{float32 / sent:.1f}×",
                     f"{max(r['max_weight_difference'] for r in runs):.3g}",
                     f"{statistics.mean(r['seconds'] for r in runs):.1f}"])
    return rows


def codistill_rows(raw: dict) -> list[list[str]]:
    rows = []
    for name, runs in raw["codistill"].items():
        each = [a for r in runs for a in r["test_accuracy"]]
        worst = [min(r["test_accuracy"]) for r in runs]
        ensemble = [r["ensemble_accuracy"] for r in runs] if runs[0]["world"] > 1 else []
        rows.append([name, _mean(each), _per_seed(worst) if ensemble else "", _mean(ensemble) if ensemble else "",
                     f"{runs[0]['bytes_sent']:,}" if runs[0]["mode"] == "codistill" else "0",
                     f"{statistics.mean(r['seconds'] for r in runs):.1f}"])
    return rows


def paired(raw: dict) -> str | None:
    """Codistilled against independent, rank by rank: the same initial weights and the same shard."""
    independent = raw["codistill"].get("2 independent models, half each")
    codistilled = raw["codistill"].get("2 codistilled models, half each")
    if not (independent and codistilled):
        return None
    gains = [100 * (c - i) for a, b in zip(codistilled, independent, strict=True)
             for c, i in zip(a["test_accuracy"], b["test_accuracy"], strict=True)]
    return (f"Paired by rank and seed (the same initial weights, the same shard): the codistilled model is at least "
            f"as accurate as the independent one in {sum(g >= 0 for g in gains)} of {len(gains)} pairs; "
            f"mean gain {statistics.mean(gains):+.2f} points (from {min(gains):+.2f} to {max(gains):+.2f}).")
