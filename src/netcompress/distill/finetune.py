"""Fine-tuning after compression: a seeded, resumable supervised loop, with or without a teacher.

Pruned layers multiply their weights by a mask in ``forward`` and quantized layers
compute their weights from fixed codes, so ordinary training keeps pruned weights at
zero and codes on their grid; it only moves the surviving weights, the shared code words
(their gradients summed over the weights that share them) and the biases.

With a ``teacher`` the loss is a distillation loss (:mod:`netcompress.distill`); the
teacher is frozen (no gradients, eval mode) and the features the loss asks for are tapped
from both models by layer name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._checkpoint import read_checkpoint, write_checkpoint
from netcompress._layers import progress_disabled
from netcompress.distill.losses import Batch, FeatureTaps, Logits, codistillation_losses

__all__ = ["accuracy", "batches", "codistill", "finetune"]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled (inputs, labels) mini-batches for one epoch; the order depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(x), generator=generator)
    return [(x[i], y[i]) for i in order.split(batch_size)]


class _CrossEntropy(nn.Module):
    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.labels is None:
            raise ValueError("training without a teacher needs labels")
        return F.cross_entropy(batch.student, batch.labels)


def _epochs_of(data, batch_size: int, seed: int, epoch: int) -> Iterable:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"finetune needs as many labels as inputs (got {len(x)} inputs, {len(y)} labels)")
        return batches(x, y, batch_size, seed=seed, epoch=epoch)
    return data


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError("each batch must be an input tensor or an (inputs, labels) pair")


def _save_checkpoint(path: Path, student, losses, optimizer, decay, epoch: int) -> None:
    state = {"epoch": epoch, "student": student.state_dict(), "losses": losses.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
    if decay is not None:
        state["decay"] = decay.state_dict()
    write_checkpoint(path, state)


def finetune(
    student: nn.Module,
    data,
    *,
    epochs: int,
    lr: float,
    teacher: nn.Module | None = None,
    loss: nn.Module | Sequence[nn.Module] | None = None,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    freeze_batchnorm: bool = False,
    progress: bool | None = None,
) -> nn.Module:
    """Train ``student`` for ``epochs`` with Adam; returns it in eval mode.

    Args:
        data: ``(inputs, labels)`` tensors, shuffled each epoch by ``(seed, epoch)``, or a
            re-iterable collection (a list, a DataLoader) of ``(inputs, labels)`` batches
            (labels may be ``None`` when distilling).
        teacher: a frozen network to distil from; with no ``loss``, :class:`distill.Logits` is used.
        loss: a distillation loss module or a list of them (summed); default cross-entropy.
        schedule: ``"constant"`` or ``"cosine"`` (decays the learning rate to zero over the run).
        checkpoint: a file written atomically after every epoch; if it exists, training resumes
            from it, and the result equals an uninterrupted run.
        freeze_batchnorm: keep every BatchNorm layer in eval mode, so its running statistics
            (estimated on the large source data set) are not overwritten by the few target
            batches; its affine parameters still train.
    """
    from tqdm.auto import tqdm

    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if epochs < 0 or not lr > 0:
        raise ValueError(f"finetune needs epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
    terms = [loss] if isinstance(loss, nn.Module) else list(loss or [])
    if not terms:
        terms = [Logits()] if teacher is not None else [_CrossEntropy()]
    losses = nn.ModuleList(terms)
    needs_teacher = any(getattr(t, "teacher_layers", ()) for t in terms) or any(isinstance(t, Logits) for t in terms)
    if needs_teacher and teacher is None:
        raise ValueError("this loss distils from a teacher; pass teacher=")
    student_taps = FeatureTaps(student, [n for t in terms for n in getattr(t, "student_layers", ())], "student")
    teacher_taps = FeatureTaps(teacher, [n for t in terms for n in getattr(t, "teacher_layers", ())], "teacher") \
        if teacher is not None else None
    params = [p for p in student.parameters() if p.requires_grad] + list(losses.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        steps = epochs * -(-len(data[0]) // batch_size)
    else:
        steps = epochs * max(1, len(data)) if hasattr(data, "__len__") else epochs
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) if schedule == "cosine" else None
    first = 0
    path = Path(checkpoint) if checkpoint is not None else None
    state = read_checkpoint(path)
    if state is not None:
        student.load_state_dict(state["student"])
        losses.load_state_dict(state["losses"])
        optimizer.load_state_dict(state["optimizer"])
        if decay is not None:
            decay.load_state_dict(state["decay"])
        torch.set_rng_state(state["rng"])
        first = int(state["epoch"]) + 1
    frozen = []
    if teacher is not None:
        teacher_mode = teacher.training
        teacher.eval()
        frozen = [p for p in teacher.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
    try:
        student.train()
        if freeze_batchnorm:
            for module in student.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        for epoch in tqdm(range(first, epochs), desc="finetune", unit="epoch", disable=progress_disabled(progress)):
            for batch in _epochs_of(data, batch_size, seed, epoch):
                x, y = _unpack(batch)
                optimizer.zero_grad()
                out = student(x)
                teacher_out = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_out = teacher(x)
                context = Batch(out, y, teacher_out, student_taps.features,
                                teacher_taps.features if teacher_taps else {})
                total = sum(term(context) for term in terms)
                total.backward()
                optimizer.step()
                if decay is not None:
                    decay.step()
            if path is not None:
                _save_checkpoint(path, student, losses, optimizer, decay, epoch)
    finally:
        student_taps.close()
        if teacher_taps is not None:
            teacher_taps.close()
        for p in frozen:
            p.requires_grad_(True)
        if teacher is not None:
            teacher.train(teacher_mode)
    student.eval()
    return student


def codistill(models: Sequence[nn.Module], data: tuple[torch.Tensor, torch.Tensor], *, epochs: int, lr: float,
              burn_in_epochs: int = 1, weight: float = 1.0, temperature: float = 1.0, batch_size: int = 128,
              seed: int = 0, progress: bool | None = None) -> list[nn.Module]:
    """Train ``models`` together, each also matching the others' mean prediction (Anil et al., "Large scale distributed neural network training through
    online distillation", ICLR 2018, Algorithm 1).

    The first ``burn_in_epochs`` use only the labels; afterwards each model's loss adds
    ``weight · H(mean_{j≠i} σ(z_j/T), σ(z_i/T))``. All models see the same mini-batches.
    """
    from tqdm.auto import tqdm

    if len(models) < 2:
        raise ValueError("codistillation needs at least two models")
    optimizers = [torch.optim.Adam(m.parameters(), lr=lr) for m in models]
    x, y = data
    for model in models:
        model.train()
    for epoch in tqdm(range(epochs), desc="codistill", unit="epoch", disable=progress_disabled(progress)):
        for xb, yb in batches(x, y, batch_size, seed=seed, epoch=epoch):
            logits = [m(xb) for m in models]
            if epoch < burn_in_epochs:
                losses = [F.cross_entropy(z, yb) for z in logits]
            else:
                losses = codistillation_losses(logits, yb, weight=weight, temperature=temperature)
            for optimizer in optimizers:
                optimizer.zero_grad()
            sum(losses).backward()  # each loss depends on its own model only: the others enter as constants
            for optimizer in optimizers:
                optimizer.step()
    for model in models:
        model.eval()
    return list(models)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum())
                  for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True))
    return 100.0 * correct / len(y)
