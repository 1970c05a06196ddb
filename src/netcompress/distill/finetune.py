"""Fine-tuning after compression: a seeded, resumable supervised loop, with or without a teacher.

Pruned layers multiply their weights by a mask in ``forward`` and quantized layers
compute their weights from fixed codes, so ordinary training keeps pruned weights at
zero and codes on their grid; it only moves the surviving weights, the shared code words
(their gradients summed over the weights that share them) and the biases.

With a ``teacher`` the loss is a distillation loss (:mod:`netcompress.distill`); the
teacher is frozen (no gradients, eval mode) and the features the loss asks for are tapped
from both models by layer name. Several teachers form an ensemble whose soft targets are
averaged (Hinton, Vinyals and Dean, 2015). ``regularize=NuclearNorm(...)`` adds a proximal
low-rank step after each optimizer step (:mod:`netcompress.distill.regularize`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._core.checkpoint import (
    checkpoint_header,
    data_identity,
    length_of,
    module_digest,
    read_checkpoint,
    settings_of,
    verify_checkpoint,
    write_checkpoint,
)
from netcompress._core.layers import progress_disabled
from netcompress._core.transaction import evaluating
from netcompress.distill.losses import Batch, FeatureTaps, Logits, codistillation_losses, ensemble_weights
from netcompress.distill.regularize import NuclearNorm

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


def _loader_generator(data) -> torch.Generator | None:
    """The generator a DataLoader shuffles with, whose state a checkpoint keeps (else a resume reshuffles)."""
    from torch.utils.data import DataLoader

    generator = getattr(data, "generator", None) if isinstance(data, DataLoader) else None
    return generator if isinstance(generator, torch.Generator) else None


def _generators(data) -> dict[str, torch.Tensor]:
    """The random states a run draws from: torch's global one, and its DataLoader's own generator if it has one."""
    loader = _loader_generator(data)
    return {"rng": torch.get_rng_state(), **({"loader_rng": loader.get_state()} if loader is not None else {})}


def _save_checkpoint(path: Path, header: dict, data, student, losses, optimizer, decay, regularize,
                     epoch: int) -> None:
    state = {**header, "epoch": epoch, "student": student.state_dict(), "losses": losses.state_dict(),
             "optimizer": optimizer.state_dict(), **_generators(data)}
    if decay is not None:
        state["decay"] = decay.state_dict()
    if regularize is not None:
        state["regularize"] = regularize.state_dict()
    write_checkpoint(path, state)


def _fingerprint(data, *, epochs, lr, batch_size, weight_decay, schedule, seed, freeze_batchnorm, terms, teachers,
                 teacher_weights, regularize) -> dict:
    """What makes one finetune run: every setting that changes its path, and the identity of its data and teachers."""
    return {"epochs": epochs, "lr": float(lr), "batch_size": batch_size, "weight_decay": float(weight_decay),
            "schedule": schedule, "seed": seed, "freeze_batchnorm": bool(freeze_batchnorm),
            "loss": {str(i): settings_of(term) for i, term in enumerate(terms)},
            "teachers": [module_digest(t) for t in teachers],
            "teacher_weights": None if teacher_weights is None else [float(w) for w in teacher_weights],
            "regularize": None if regularize is None else settings_of(regularize),
            "data": data_identity(data)}


def _resume(path: Path, state: dict, run: dict, epochs: int, data, student, losses, optimizer, decay,
            regularize) -> int:
    """Verify all of ``state`` against this run, then (only then) load it; the first epoch still to train."""
    state_dicts = {"decay": decay.state_dict()} if decay is not None else {}
    if regularize is not None:
        state_dicts["regularize"] = {"ranks_before": {}}
    verify_checkpoint(path, state, run=run, models={"student": student.state_dict(), "losses": losses.state_dict()},
                      optimizers={"optimizer": optimizer}, generators=_generators(data),
                      counters={"epoch": (0, max(epochs - 1, 0))}, state_dicts=state_dicts)
    if regularize is not None:
        ranks = state["regularize"]["ranks_before"]
        if not isinstance(ranks, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in ranks.items()):
            raise ValueError(f"checkpoint {path} is malformed: 'regularize' does not map layers to ranks; delete it "
                             "or pass another checkpoint path")
    student.load_state_dict(state["student"])
    losses.load_state_dict(state["losses"])
    optimizer.load_state_dict(state["optimizer"])
    if decay is not None:
        decay.load_state_dict(state["decay"])
    torch.set_rng_state(state["rng"])
    if _loader_generator(data) is not None:
        _loader_generator(data).set_state(state["loader_rng"])
    if regularize is not None:
        regularize.load_state_dict(state["regularize"])
    return int(state["epoch"]) + 1


def _teachers(teacher) -> list[nn.Module]:
    """``teacher`` as a list: none, one module, or a sequence (or ``nn.ModuleList``) of modules."""
    if teacher is None:
        return []
    if isinstance(teacher, nn.Module) and not isinstance(teacher, nn.ModuleList):
        return [teacher]
    if not isinstance(teacher, (Sequence, nn.ModuleList)) or isinstance(teacher, str) or len(teacher) == 0 \
            or not all(isinstance(t, nn.Module) for t in teacher):
        raise TypeError(f"teacher must be an nn.Module or a non-empty sequence of them, got {teacher!r}")
    return list(teacher)


@contextmanager
def _frozen(models: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode and no gradients for ``models`` while active; each module's mode and each flag put back after."""
    trainable = list({id(p): p for model in models for p in model.parameters() if p.requires_grad}.values())
    with ExitStack() as modes:
        for model in models:
            modes.enter_context(evaluating(model))
        for p in trainable:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in trainable:
                p.requires_grad_(True)


def finetune(
    student: nn.Module,
    data,
    *,
    epochs: int,
    lr: float,
    teacher: nn.Module | Sequence[nn.Module] | None = None,
    teacher_weights: Sequence[float] | None = None,
    loss: nn.Module | Sequence[nn.Module] | None = None,
    regularize: NuclearNorm | None = None,
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
        teacher: a network to distil from, or a sequence of them (an ensemble); with no ``loss``,
            :class:`distill.Logits` is used. Teachers are frozen while training (eval mode, no
            gradients) and put back as they were. An ensemble's soft target is the weighted mean
            of the teachers' softened probabilities ``Σ_k w_k·σ(z_k/T)`` (Hinton, Vinyals and Dean,
            "Distilling the knowledge in a neural network", 2015); losses that read teacher
            features (Hint, AttentionTransfer, InterRegionAffinity) take one teacher only.
        teacher_weights: one positive weight per teacher, normalised to sum 1; equal by default.
        loss: a distillation loss module or a list of them (summed); default cross-entropy.
        regularize: a :class:`NuclearNorm`, applied as a proximal step after every optimizer
            step with the learning rate of that step; it records effective ranks before and after.
        schedule: ``"constant"`` or ``"cosine"`` (decays the learning rate to zero over the run).
        checkpoint: a file written atomically after every epoch; if it exists, training resumes
            from it, and the result equals an uninterrupted run. The file records the run's
            fingerprint (every setting above that changes the path, the loss terms' types and, for
            netcompress's own, their settings, the teachers' weights, and the data: a SHA-256 over
            all tensors of ``(inputs, labels)`` data or of a list of batches; a DataLoader's batch
            size and dataset, see :func:`netcompress._core.checkpoint.data_identity`), the random
            states (torch's, and a DataLoader's own shuffling generator), the architecture
            (state-dict keys, shapes, dtypes) and the optimizer's
            structure; a checkpoint that differs in any of them, or is malformed, raises one
            ``ValueError`` naming the file and the first difference before anything is loaded,
            so ``student`` is left untouched.
        freeze_batchnorm: keep every BatchNorm layer in eval mode, so its running statistics
            (estimated on the large source data set) are not overwritten by the few target
            batches; its affine parameters still train.
    """
    from tqdm.auto import tqdm

    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if epochs < 0 or not lr > 0:
        raise ValueError(f"finetune needs epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
    teachers = _teachers(teacher)
    if teacher_weights is not None and not teachers:
        raise ValueError("teacher_weights weighs teachers; pass teacher= as well, or leave teacher_weights out")
    weights = ensemble_weights(teacher_weights, len(teachers)) if teachers else None
    if regularize is not None and not all(callable(getattr(regularize, f, None)) for f in ("begin", "step", "end")):
        raise TypeError(f"regularize must be a regularizer such as NuclearNorm, got {regularize!r}")
    terms = [loss] if isinstance(loss, nn.Module) else list(loss or [])
    if not terms:
        terms = [Logits()] if teachers else [_CrossEntropy()]
    losses = nn.ModuleList(terms)
    teacher_layers = [n for t in terms for n in getattr(t, "teacher_layers", ())]
    needs_teacher = bool(teacher_layers) or any(isinstance(t, Logits) for t in terms)
    if needs_teacher and not teachers:
        raise ValueError("this loss distils from a teacher; pass teacher=")
    if teacher_layers and len(teachers) > 1:
        # Several teachers' features have no common space to match (their widths and depths differ).
        raise ValueError(f"a loss that reads teacher features takes one teacher, got {len(teachers)}; "
                         "distil an ensemble with Logits")
    if regularize is not None:
        regularize.begin(student)
    student_taps = FeatureTaps(student, [n for t in terms for n in getattr(t, "student_layers", ())], "student")
    teacher_taps = FeatureTaps(teachers[0], teacher_layers, "teacher") if teachers else None
    params = [p for p in student.parameters() if p.requires_grad] + list(losses.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        steps = epochs * -(-len(data[0]) // batch_size)
    else:
        steps = epochs * max(1, length_of(data) or 1)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) if schedule == "cosine" else None
    first, header = 0, {}
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        run = _fingerprint(data, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                           schedule=schedule, seed=seed, freeze_batchnorm=freeze_batchnorm, terms=terms,
                           teachers=teachers, teacher_weights=teacher_weights, regularize=regularize)
        header = checkpoint_header(run, {"student": student.state_dict(), "losses": losses.state_dict()},
                                   {"optimizer": optimizer})
        state = read_checkpoint(path)
        if state is not None:
            first = _resume(path, state, run, epochs, data, student, losses, optimizer, decay, regularize)
    with _frozen(teachers):
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
                    context = Batch(out, y, _teacher_outputs(teachers, x), student_taps.features,
                                    teacher_taps.features if teacher_taps else {},
                                    weights if len(teachers) > 1 else None)
                    total = sum(term(context) for term in terms)
                    total.backward()
                    optimizer.step()
                    if regularize is not None:
                        # The proximal step uses the step size the optimizer just took, before the schedule moves it.
                        regularize.step(student, optimizer.param_groups[0]["lr"])
                    if decay is not None:
                        decay.step()
                if path is not None:
                    _save_checkpoint(path, header, data, student, losses, optimizer, decay, regularize, epoch)
        finally:
            student_taps.close()
            if teacher_taps is not None:
                teacher_taps.close()
    if regularize is not None:
        regularize.end(student)
    student.eval()
    return student


@torch.no_grad()
def _teacher_outputs(teachers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
    """No teacher: ``None``; one: its output; an ensemble: a tuple of outputs (see :class:`Batch`)."""
    if not teachers:
        return None
    outputs = tuple(t(x) for t in teachers)
    return outputs[0] if len(outputs) == 1 else outputs


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
