"""PEEL against uniform channel pruning at equal FLOPs, with and without distillation (seed 002, "Network Pruning
via Resource Reallocation": its FLOPs–accuracy spectra).

The network is the LeNet-5 of :mod:`.decompositions` (trained on MNIST, fine-tuned on UCI digits); pruning
and distillation see the UCI digits training split, accuracy is on its test split. At each FLOPs target:

* ``uniform (L1)``: every layer keeps the same share of its channels, ranked by the filters' L1 norm, no
  re-fit (the usual baseline, Li et al. 2017; Liu et al. 2019);
* ``channel``: the same uniform share, ranked by output energy on the target data, readers re-fitted
  by least squares (netcompress's ``channel`` method);
* ``PEEL``: channels reallocated by layer importance (:func:`netcompress.prune_reallocate`).

Each is then distilled from the unpruned network for a few epochs (``+ KD``).
"""

from __future__ import annotations

import copy
import time

import netcompress as nc
from netcompress.distill.finetune import accuracy, finetune
from netcompress.distill.losses import Logits
from netcompress.report import text_table

__all__ = ["FLOPS", "peel_spectrum", "plot_peel"]

FLOPS = (0.5, 0.3, 0.15)
KD = {"temperature": 4.0, "alpha": 0.1, "beta": 0.9 * 4.0 ** 2}
_UNIFORM = {"uniform (L1)": {"criterion": "l1", "refit": False}, "channel": {}}


def uniform_within(model, batches, target_macs: float, example, *, steps: int, **settings):
    """The network every prunable layer of which keeps one share of its channels (``channel`` method with
    ``settings``), the largest share within ``target_macs`` found by ``steps`` halvings; ``None`` if none fits."""
    best, lo, hi = None, 0.0, 1.0
    for _ in range(steps):
        share = (lo + hi) / 2
        pruned = copy.deepcopy(model)
        nc.compress(pruned, batches, method="channel", sparsity=1 - share, progress=False, **settings)
        if nc.count_flops(pruned, example) <= target_macs:
            best, lo = pruned, share
        else:
            hi = share
    return best


def _distilled(student, teacher, split, epochs: int, seed: int):
    student = copy.deepcopy(student)
    return finetune(student, (split.train_x, split.train_y), epochs=epochs, lr=1e-3, teacher=teacher,
                    loss=Logits(**KD), seed=seed, progress=False)


def peel_spectrum(seed: int = 0, *, flops: tuple[float, ...] = FLOPS, kd_epochs: int = 3, model=None,
                  echo=print) -> dict:
    """Target accuracy (%) of uniform L1, ``channel`` and PEEL pruning at each FLOPs target, before and after KD."""
    from experiments.decompositions import digits_lenet5

    start = time.perf_counter()
    model, split, _ = digits_lenet5(seed) if model is None else model
    example = split.train_x[:1]
    dense = nc.count_flops(model, example)
    batches = list(zip(split.train_x.split(250), split.train_y.split(250), strict=True))
    rows = []
    for target in flops:
        students = {name: uniform_within(model, [x for x, _ in batches], target * dense, example, steps=7, **settings)
                    for name, settings in _UNIFORM.items()}
        peel = copy.deepcopy(model)
        nc.prune_reallocate(peel, batches, flops=target, seed=seed, progress=False)
        students["PEEL"] = peel
        for name, student in students.items():
            tuned = _distilled(student, model, split, kd_epochs, seed)
            rows.append({"flops": target, "method": name,
                         "reached": nc.count_flops(student, example) / dense,
                         "accuracy": accuracy(student, split.test_x, split.test_y),
                         "kd_accuracy": accuracy(tuned, split.test_x, split.test_y)})
    echo(f"LeNet-5 on UCI digits ({dense:,} MACs, {accuracy(model, split.test_x, split.test_y):.2f} %): "
         f"target accuracy at equal FLOPs, then + {kd_epochs} epochs of distillation from the unpruned network")
    echo(text_table(["FLOPs", "method", "reached", "accuracy", "+ KD"],
                    [[f"{r['flops']:g}", r["method"], f"{r['reached']:.3f}", f"{r['accuracy']:.2f}",
                      f"{r['kd_accuracy']:.2f}"] for r in rows]))
    return {"dense_flops": dense, "dense_accuracy": accuracy(model, split.test_x, split.test_y), "rows": rows,
            "kd_epochs": kd_epochs, "seconds": time.perf_counter() - start}


def plot_peel(result: dict, path) -> None:
    """Accuracy against the FLOPs reached, one line per method, dashed before and solid after KD."""
    from experiments.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    methods = dict.fromkeys(r["method"] for r in result["rows"])
    for i, method in enumerate(methods):
        rows = [r for r in result["rows"] if r["method"] == method]
        colour = f"C{i}"
        axis.plot([r["reached"] for r in rows], [r["accuracy"] for r in rows], "--o", color=colour, alpha=0.6,
                  label=f"{method}")
        axis.plot([r["reached"] for r in rows], [r["kd_accuracy"] for r in rows], "-o", color=colour,
                  label=f"{method} + KD")
    axis.axhline(result["dense_accuracy"], color="grey", linewidth=0.8, label="unpruned")
    axis.set_xlabel("FLOPs (fraction of the unpruned network's)")
    axis.set_ylabel("target accuracy (%)")
    axis.set_title("LeNet-5 on UCI digits: FLOPs–accuracy")
    axis.legend(fontsize=7)
    _save(figure, path)
