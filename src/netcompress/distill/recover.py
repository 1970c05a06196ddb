"""Recovery after compression: distillation from the original on the same target sample, best epoch kept.

The compressed network (the student) learns the original's softened outputs (Hinton, Vinyals
and Dean, 2015) on the samples the statistics were fitted on; labels are not needed. BatchNorm
statistics stay frozen by default (the few target batches would overwrite estimates made on far
more data). After every epoch the whole model is measured on the held-out samples, and the
weights of the best epoch (the compressed model itself counting as epoch 0) are kept: recovery
never leaves a model worse on held-out data than it found it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from netcompress._core.sizes import half_exact
from netcompress._core.tensors import batch_input
from netcompress.distill.finetune import finetune
from netcompress.distill.losses import Logits
from netcompress.stats.fidelity import Fidelity, References, heldout_part, measure

__all__ = ["Recover", "recover"]


@dataclass(frozen=True, kw_only=True)
class Recover:
    """How to recover: ``epochs`` of distillation with Adam at ``lr`` on batches of ``batch_size``."""

    epochs: int
    lr: float = 1e-4
    batch_size: int = 64
    freeze_batchnorm: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"recover epochs must be a positive whole number, got {self.epochs!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"recover lr must be a positive learning rate, got {self.lr!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"recover batch_size must be a positive whole number, got {self.batch_size!r}")


def _score(fidelity: Fidelity) -> tuple[float, float]:
    """Higher is better: the threshold's measure (agreement or cosine), then the lower relative error."""
    return fidelity.measure[1], -fidelity.relative_error


def _inputs(data: Iterable | torch.Tensor, holdout: float) -> torch.Tensor:
    parts = [batch_input(b) for b in heldout_part(data, holdout, heldout=False)]
    if not all(isinstance(p, torch.Tensor) for p in parts):
        raise ValueError("recovery trains on tensor inputs; a model fed dicts of inputs (a Hugging Face model) "
                         "is recovered with netcompress.finetune and its own loss")
    return torch.cat(parts)


def half_scales(model: nn.Module) -> list[torch.Tensor]:
    """The scales of quantized layers that ``save`` writes in float16 (every value a float16 number)."""
    return [module.scale for module in model.modules()
            if isinstance(getattr(module, "codes", None), torch.Tensor) and isinstance(getattr(module, "scale", None),
                                                                                    torch.Tensor)
            and half_exact(module.scale)]


def snap_scales(scales: list[torch.Tensor]) -> None:
    """Round trained scales back to float16 numbers (kept within float16's normal range), in place.

    ``save`` writes a quantized layer's scales in float16 only where that is exact
    (:func:`~netcompress._core.sizes.half_scale`); a scale moved by training would be written in
    float32 and the file would outgrow the size the plan was chosen for. Each epoch ends with the
    scales that were float16 numbers rounded back (a scale trained below the smallest normal float16,
    or below zero, is held at it), and is measured so.
    """
    with torch.no_grad():
        for scale in scales:
            scale.copy_(scale.clamp(2.0 ** -14, 65504.0).to(torch.float16).to(scale.dtype))


def recover(student: nn.Module, teacher: nn.Module, data, holdout: float, references: References,
            settings: Recover, progress: bool | None = None) -> dict[str, object]:
    """Distil ``teacher`` into ``student`` in place, keep the best epoch on ``references``; what happened, as JSON."""
    inputs = _inputs(data, holdout)
    halves = half_scales(student)
    best, best_state, best_epoch = measure(student, references), copy.deepcopy(student.state_dict()), 0
    before, history = best, []
    for epoch in range(1, settings.epochs + 1):
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        order = torch.randperm(len(inputs), generator=generator)
        batches = [inputs[i] for i in order.split(settings.batch_size)]  # no labels: the teacher's outputs teach
        finetune(student, batches, epochs=1, lr=settings.lr, teacher=teacher, loss=Logits(temperature=2.0, alpha=0.0, beta=1.0),
                 freeze_batchnorm=settings.freeze_batchnorm, seed=settings.seed, progress=progress)
        snap_scales(halves)
        now = measure(student, references)
        history.append(now.measure[1])
        if _score(now) > _score(best):
            best, best_state, best_epoch = now, copy.deepcopy(student.state_dict()), epoch
    student.load_state_dict(best_state)
    student.eval()
    name = before.measure[0]
    return {"epochs": settings.epochs, "best_epoch": best_epoch, "measure": name,
            "before": before.measure[1], "after": best.measure[1], "history": history}
