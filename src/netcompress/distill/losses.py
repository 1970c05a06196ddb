"""Knowledge distillation losses (seeds 002 and 003), usable with any pair of ``nn.Module``s.

Each loss is a small module called with a :class:`Batch` that holds the student's and
teacher's outputs, the labels, and the intermediate features the loss asked for by
layer name (``student_layers`` / ``teacher_layers``); :func:`netcompress.finetune` taps
those features with forward hooks, so no model's ``forward`` needs rewriting.

* :class:`Logits`: Hinton's softened logits, ``α·H(y, σ(z_s)) + β·H(σ(z_t/T), σ(z_s/T))``; with
  several teachers the soft target is their weighted mean probability (:func:`ensemble_probabilities`).
* :class:`Hint`: FitNets hints, a learned regressor maps a student feature to a teacher feature.
* :class:`AttentionTransfer`: Zagoruyko & Komodakis, normalised channel-energy maps.
* :class:`SelfAttention`: self attention distillation (SAD, Hou et al. 2019): each shallower
  block's attention map mimics the next deeper block's, in the same network.
* :class:`InterRegionAffinity`: IntRA-KD (Hou et al. 2020): affinity graphs between regions.
* :func:`codistillation_losses`: N models teaching each other (Anil et al., ICLR 2018, Algorithm 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionTransfer",
    "Batch",
    "FeatureTaps",
    "Hint",
    "InterRegionAffinity",
    "Logits",
    "SelfAttention",
    "attention_map",
    "codistillation_losses",
    "ensemble_probabilities",
    "ensemble_weights",
    "soft_cross_entropy",
]


@dataclass
class Batch:
    """What a distillation loss sees for one mini-batch.

    ``teacher`` is one teacher's output, or a tuple of an ensemble's outputs, one per teacher,
    weighted by ``teacher_weights`` (equal when ``None``). ``teacher_features`` are tapped from
    a single teacher only.
    """

    student: torch.Tensor
    labels: torch.Tensor | None = None
    teacher: torch.Tensor | tuple[torch.Tensor, ...] | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_weights: tuple[float, ...] | None = None


class FeatureTaps:
    """Forward hooks that keep the outputs of the named layers of ``model`` while active."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str = "model"):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules or n == ""]
        if missing:
            raise ValueError(f"{role} has no layer named {', '.join(map(repr, missing))}; use names from named_modules()")
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._keeper(n)) for n in dict.fromkeys(names)]

    def _keeper(self, name: str):
        def keep(module, args, output):
            self.features[name] = output

        return keep

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def ensemble_weights(weights: Sequence[float] | None, count: int) -> tuple[float, ...]:
    """``weights`` checked (one positive finite number per teacher) and normalised to sum 1; equal when ``None``."""
    if weights is None:
        return (1.0 / count,) * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"teacher_weights has {len(weights)} entries for {count} teachers; give one weight per teacher")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"teacher_weights must all be positive finite numbers, got {weights}")
    total = sum(weights)
    return tuple(w / total for w in weights)


def ensemble_probabilities(teachers: torch.Tensor | Sequence[torch.Tensor], temperature: float,
                           weights: Sequence[float] | None = None) -> torch.Tensor:
    """The ensemble's soft target ``Σ_k w_k·σ(z_k/T)`` with ``Σ_k w_k = 1`` (Hinton, Vinyals and Dean, 2015, section 1).

    Teachers are averaged as probabilities, not as logits: the target is the mixture of their
    predictive distributions. ``teachers`` is one logits tensor or a sequence of them with the
    same shape; ``weights`` default to equal and are normalised.
    """
    temperature = _check_temperature(temperature)
    if isinstance(teachers, torch.Tensor):
        teachers = (teachers,)
    weights = ensemble_weights(weights, len(teachers))
    if len(teachers) == 1:
        return F.softmax(teachers[0] / temperature, dim=-1)
    shapes = {tuple(z.shape) for z in teachers}
    if len(shapes) != 1:
        raise ValueError(f"ensemble teachers must have the same outputs, got shapes {sorted(shapes)}")
    return sum(w * F.softmax(z / temperature, dim=-1) for w, z in zip(weights, teachers, strict=True))


def soft_cross_entropy(target_probabilities: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``H(p, σ(z)) = −Σ p log σ(z)``, averaged over the batch."""
    return -(target_probabilities * F.log_softmax(logits, dim=-1)).sum(-1).mean()


class Logits(nn.Module):
    """Hinton et al.'s distillation: ``α·H(y, σ(z_s)) + β·H(σ(z_t/T), σ(z_s/T))`` (Hinton, Vinyals and Dean, "Distilling the knowledge in a neural network", 2015).

    The seed's formula is taken as written; Hinton et al. scale the soft term by ``T²`` to keep
    its gradients comparable across temperatures, which here is a choice of ``β``.
    ``alpha=0`` distils without labels. With an ensemble (``Batch.teacher`` a tuple), the soft
    target ``σ(z_t/T)`` becomes :func:`ensemble_probabilities`, ``Σ_k w_k·σ(z_k/T)``.
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, beta: float = 0.5):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.teacher is None:
            raise ValueError("Logits distillation needs a teacher; pass teacher= to finetune")
        teachers = (batch.teacher,) if isinstance(batch.teacher, torch.Tensor) else tuple(batch.teacher)
        for output in teachers:
            if output.shape != batch.student.shape:
                raise ValueError(f"teacher outputs {tuple(output.shape)} and student outputs "
                                 f"{tuple(batch.student.shape)} differ; distil between models with the same outputs")
        soft = ensemble_probabilities(teachers, self.temperature, batch.teacher_weights)
        loss = self.beta * soft_cross_entropy(soft, batch.student / self.temperature)
        if self.alpha:
            if batch.labels is None:
                raise ValueError("Logits with alpha > 0 needs labels; set alpha=0 to distil without labels")
            loss = loss + self.alpha * F.cross_entropy(batch.student, batch.labels)
        return loss


class Hint(nn.Module):
    """FitNets: ``||r(F_s) − F_t||²`` with ``r`` a learned 1×1 convolution (``spatial``) or linear map."""

    def __init__(self, student_layer: str, teacher_layer: str, student_channels: int, teacher_channels: int,
                 *, spatial: bool = True, weight: float = 1.0):
        super().__init__()
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.weight = float(weight)
        self.regressor = (nn.Conv2d(student_channels, teacher_channels, 1) if spatial
                          else nn.Linear(student_channels, teacher_channels))

    def forward(self, batch: Batch) -> torch.Tensor:
        student = batch.student_features[self.student_layers[0]]
        teacher = batch.teacher_features[self.teacher_layers[0]]
        mapped = self.regressor(student)
        if mapped.dim() == 4 and mapped.shape[-2:] != teacher.shape[-2:]:
            mapped = F.interpolate(mapped, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        if mapped.shape != teacher.shape:
            raise ValueError(f"hint: student feature maps to {tuple(mapped.shape)} but the teacher's is "
                             f"{tuple(teacher.shape)}; check the channel counts")
        return self.weight * F.mse_loss(mapped, teacher)


def attention_map(feature: torch.Tensor, power: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: ``Σ_c |F_c|^p`` per position, flattened and L2-normalised."""
    if feature.dim() != 4:
        raise ValueError(f"attention maps need (N, C, H, W) features, got shape {tuple(feature.shape)}")
    return F.normalize(feature.abs().pow(power).mean(1).flatten(1), dim=1)


def _resized_map(feature: torch.Tensor, size: tuple[int, int], power: int) -> torch.Tensor:
    energy = feature.abs().pow(power).mean(1, keepdim=True)
    if energy.shape[-2:] != size:
        energy = F.interpolate(energy, size=size, mode="bilinear", align_corners=False)
    return energy


class AttentionTransfer(nn.Module):
    """``Σ_j mean((Q_s^j − Q_t^j)²)`` over pairs of (student layer, teacher layer) attention maps."""

    def __init__(self, pairs: Sequence[tuple[str, str]], weight: float = 1.0, power: int = 2):
        super().__init__()
        self.pairs = list(pairs)
        self.student_layers = tuple(s for s, _ in self.pairs)
        self.teacher_layers = tuple(t for _, t in self.pairs)
        self.weight, self.power = float(weight), power

    def forward(self, batch: Batch) -> torch.Tensor:
        loss = 0.0
        for s, t in self.pairs:
            teacher = batch.teacher_features[t]
            student = _resized_map(batch.student_features[s], teacher.shape[-2:], self.power)
            loss = loss + (attention_map(student, 1) - attention_map(teacher, self.power)).pow(2).mean()
        return self.weight * loss


class SelfAttention(nn.Module):
    """SAD: block ``m``'s attention map (spatial softmax, resized) mimics block ``m+1``'s, which is not updated by it."""

    teacher_layers: tuple[str, ...] = ()

    def __init__(self, layers: Sequence[str], weight: float = 1.0, power: int = 2):
        super().__init__()
        if len(layers) < 2:
            raise ValueError("self attention distillation needs at least two layers, shallow to deep")
        self.student_layers = tuple(layers)
        self.weight, self.power = float(weight), power

    def _map(self, feature: torch.Tensor, size) -> torch.Tensor:
        return F.softmax(_resized_map(feature, size, self.power).flatten(1), dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        features = [batch.student_features[n] for n in self.student_layers]
        size = features[0].shape[-2:]
        loss = 0.0
        for shallow, deep in zip(features, features[1:], strict=False):
            loss = loss + F.mse_loss(self._map(shallow, size), self._map(deep, size).detach(), reduction="sum") / len(shallow)
        return self.weight * loss


def affinity_graph(feature: torch.Tensor, regions: int) -> torch.Tensor:
    """Cosine similarity between the ``regions × regions`` grid cells' (mean, std) feature moments: (N, R², R²)."""
    if feature.dim() != 4:
        raise ValueError(f"affinity graphs need (N, C, H, W) features, got shape {tuple(feature.shape)}")
    mean = F.adaptive_avg_pool2d(feature, regions)
    second = F.adaptive_avg_pool2d(feature.pow(2), regions)
    std = (second - mean.pow(2)).clamp_min(0).add(1e-8).sqrt()
    nodes = F.normalize(torch.cat([mean, std], 1).flatten(2).transpose(1, 2), dim=2)  # (N, R², 2C)
    return nodes @ nodes.transpose(1, 2)


class InterRegionAffinity(nn.Module):
    """IntRA-KD: ``mean((A_s − A_t)²)`` between the student's and teacher's inter-region affinity graphs."""

    def __init__(self, student_layer: str, teacher_layer: str, regions: int = 4, weight: float = 1.0):
        super().__init__()
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.regions, self.weight = regions, float(weight)

    def forward(self, batch: Batch) -> torch.Tensor:
        student = affinity_graph(batch.student_features[self.student_layers[0]], self.regions)
        teacher = affinity_graph(batch.teacher_features[self.teacher_layers[0]], self.regions)
        return self.weight * (student - teacher).pow(2).mean()


def codistillation_losses(logits: Sequence[torch.Tensor], labels: torch.Tensor | None, *,
                          weight: float = 1.0, temperature: float = 1.0) -> list[torch.Tensor]:
    """Per model ``i``: ``φ(y, z_i) + weight·ψ(mean_{j≠i} σ(z_j/T), z_i/T)`` (Anil et al., ICLR 2018, Algorithm 1).

    ``φ`` is cross-entropy with the labels (skipped when ``labels`` is None), ``ψ`` the soft
    cross-entropy; the other models' predictions are constants for model ``i``.
    """
    _check_temperature(temperature)
    if len(logits) < 2:
        raise ValueError("codistillation needs at least two models")
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"codistilled models must have the same outputs, got shapes {sorted(shapes)}")
    probabilities = [F.softmax(z.detach() / temperature, dim=-1) for z in logits]
    losses = []
    for i, z in enumerate(logits):
        others = torch.stack([p for j, p in enumerate(probabilities) if j != i]).mean(0)
        loss = weight * soft_cross_entropy(others, z / temperature)
        if labels is not None:
            loss = loss + F.cross_entropy(z, labels)
        losses.append(loss)
    return losses
