"""Low-rank regularization during fine-tuning: a nuclear-norm penalty applied as a proximal step.

Training with ``λ·Σ_l ||W_l||_*`` (the nuclear norm, the sum of singular values, is the convex
surrogate of the rank) drives each weight matrix towards low rank, so that a later truncation
(``compress(method="dalr", energy=...)``) needs a lower rank for the same output error. The
penalty is not differentiable where singular values are zero, so it is applied through its
proximal operator, singular-value soft-thresholding (Cai, Candès and Shen, "A singular value
thresholding algorithm for matrix completion", SIAM J. Optim. 2010): after each optimizer step
of size ``η``, ``W ← U·max(Σ − η·λ, 0)·Vᵀ``. Small singular values become exactly zero, which a
subgradient step would never do.

A convolution's weight is taken as its ``(out, in·kh·kw)`` im2col matrix, the matrix the
project's low-rank methods factor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["NuclearNorm", "effective_rank", "effective_ranks", "singular_value_threshold"]


def _check_energy(energy: float) -> float:
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    return float(energy)


def effective_rank(matrix: torch.Tensor, energy: float = 0.99) -> int:
    """The smallest ``k`` whose top ``k`` singular values keep ``energy`` of ``Σ σ_i²``.

    ``matrix`` is 2-D, or a convolution weight ``(out, in, kh, kw)`` taken as ``(out, in·kh·kw)``.
    A zero matrix has effective rank 0. The singular values are computed in float64.
    """
    energy = _check_energy(energy)
    if matrix.dim() < 2:
        raise ValueError(f"effective_rank needs a matrix or a convolution weight, got shape {tuple(matrix.shape)}")
    squared = torch.linalg.svdvals(matrix.detach().reshape(len(matrix), -1).to(torch.float64)).pow(2)
    kept = squared.cumsum(0)
    if kept[-1] <= 0:
        return 0
    return min(int(torch.searchsorted(kept, energy * kept[-1])) + 1, len(squared))


def _applied_weight(layer: nn.Module) -> torch.Tensor:
    """The weight the layer multiplies by: a pruned layer's weight times its mask."""
    mask = getattr(layer, "mask", None)
    return layer.weight * mask if isinstance(mask, torch.Tensor) else layer.weight


def _why_not(layer: nn.Module) -> str | None:
    """Why soft-thresholding cannot act on this layer's weight (``None`` when it can)."""
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        return "not a Linear or Conv2d layer"
    if not isinstance(getattr(layer, "weight", None), nn.Parameter):
        return "its weight is not a plain Parameter (a quantized layer computes it from codes)"
    if not layer.weight.requires_grad:
        return "its weight is frozen (requires_grad=False), so training does not move it"
    if isinstance(getattr(layer, "mask", None), torch.Tensor):
        # Thresholding W would refill the pruned entries; the layer applies W·mask, whose SVD differs.
        return "a pruned layer multiplies its weight by a mask, so thresholding the weight is not a proximal step"
    if getattr(layer, "groups", 1) != 1:
        return f"a grouped convolution (groups={layer.groups}) is not one matrix"
    return None


def effective_ranks(model: nn.Module, energy: float = 0.99) -> dict[str, int]:
    """Layer name → :func:`effective_rank` of every ``nn.Linear`` and ungrouped ``nn.Conv2d`` in ``model``.

    A pruned layer is measured on the weight it applies (weight × mask); layers whose weight is
    not a tensor attribute (quantized replacements) and grouped convolutions are left out.
    """
    energy = _check_energy(energy)
    ranks = {}
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and isinstance(getattr(layer, "weight", None), torch.Tensor) \
                and getattr(layer, "groups", 1) == 1:
            ranks[name] = effective_rank(_applied_weight(layer), energy)
    return ranks


def singular_value_threshold(matrix: torch.Tensor, threshold: float) -> torch.Tensor:
    """``U·max(Σ − threshold, 0)·Vᵀ`` of ``matrix`` (2-D, or a conv weight taken as ``(out, in·kh·kw)``).

    The proximal operator of ``threshold·||·||_*`` (Cai, Candès and Shen, SIAM J. Optim. 2010).
    The SVD is computed in float64; the result has ``matrix``'s shape and dtype.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    flat = matrix.detach().reshape(len(matrix), -1).to(torch.float64)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    shrunk = (u * (s - threshold).clamp_min(0)) @ vh
    return shrunk.reshape(matrix.shape).to(matrix.dtype)


class NuclearNorm:
    """Low-rank regularization ``weight·Σ_l ||W_l||_*`` for :func:`netcompress.finetune` (``regularize=``).

    After every optimizer step, each selected layer's weight is replaced by its singular-value
    soft-thresholding with threshold ``η·weight``, ``η`` being the learning rate of that step:
    the proximal-gradient step for the penalised loss. With plain SGD this is exact proximal
    gradient descent; with Adam (what ``finetune`` uses) the gradient step is Adam's, but the
    proximal step stays on the plain-SGD scale ``η·weight``, not Adam's per-coordinate scale
    (the penalty is decoupled from the adaptive step, as AdamW decouples weight decay).

    Args:
        weight: ``λ > 0``, the penalty's strength.
        layers: names of the layers to regularize (from ``named_modules()``); ``None`` takes every
            ``nn.Linear`` and ungrouped ``nn.Conv2d`` with a plain, trainable weight Parameter.
            Pruned layers (with a mask), quantized layers and frozen weights are then skipped,
            with the reason in ``skipped``; naming one of them in ``layers`` is an error.
        energy: the energy level of the effective ranks recorded in ``ranks_before`` / ``ranks_after``.

    After ``finetune``, ``ranks_before`` and ``ranks_after`` map each regularized layer to its
    :func:`effective_rank` at the start and the end of training; :meth:`table` prints them.
    """

    def __init__(self, weight: float, layers: Iterable[str] | None = None, energy: float = 0.99):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"NuclearNorm weight must be a positive number, got {weight!r}")
        if isinstance(layers, str):
            layers = [layers]
        self.weight = float(weight)
        self.layers = None if layers is None else list(dict.fromkeys(layers))
        self.energy = _check_energy(energy)
        self.ranks_before: dict[str, int] = {}
        self.ranks_after: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self._selected: dict[str, nn.Module] | None = None  # what begin() selected, for every step after it

    def select(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers of ``model`` this regularizer acts on; raises ``ValueError`` for a named layer it cannot take."""
        modules = dict(model.named_modules())
        if self.layers is None:
            self.skipped = {n: why for n, m in modules.items()
                            if isinstance(m, (nn.Linear, nn.Conv2d)) and (why := _why_not(m)) is not None}
            return {n: m for n, m in modules.items()
                    if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in self.skipped}
        missing = [n for n in self.layers if n not in modules or n == ""]
        if missing:
            raise ValueError(f"NuclearNorm layers: the model has no layer named {', '.join(map(repr, missing))}; "
                             "use names from named_modules()")
        for name in self.layers:
            why = _why_not(modules[name])
            if why is not None:
                raise ValueError(f"NuclearNorm cannot regularize layer {name!r}: {why}")
        self.skipped = {}
        return {n: modules[n] for n in self.layers}

    def _ranks(self, model: nn.Module) -> dict[str, int]:
        return {n: effective_rank(m.weight, self.energy) for n, m in self._layers(model).items()}

    def _layers(self, model: nn.Module) -> dict[str, nn.Module]:
        return self._selected if self._selected is not None else self.select(model)

    def begin(self, model: nn.Module) -> None:
        """Select the layers and record ``ranks_before`` (``finetune`` calls this before training)."""
        self._selected = self.select(model)  # once: every optimizer step acts on these
        self.ranks_before, self.ranks_after = self._ranks(model), {}

    @torch.no_grad()
    def step(self, model: nn.Module, lr: float) -> None:
        """The proximal step ``W ← U·max(Σ − lr·weight, 0)·Vᵀ`` on every selected layer, in place.

        The layers :meth:`begin` selected, without walking the model again; before ``begin``, selected now.
        """
        for layer in self._layers(model).values():
            layer.weight.copy_(singular_value_threshold(layer.weight, lr * self.weight))

    def end(self, model: nn.Module) -> None:
        """Record ``ranks_after`` (``finetune`` calls this after training)."""
        self.ranks_after = self._ranks(model)
        self._selected = None

    def state_dict(self) -> dict:
        """What a checkpoint keeps so that a resumed run reports the ranks of the run's start."""
        return {"ranks_before": dict(self.ranks_before)}

    def load_state_dict(self, state: dict) -> None:
        self.ranks_before = {str(k): int(v) for k, v in state["ranks_before"].items()}

    def table(self) -> str:
        """Effective ranks before and after training, one row per regularized layer."""
        from netcompress.report import text_table

        rows = [[name, str(before), str(self.ranks_after.get(name, ""))] for name, before in self.ranks_before.items()]
        return text_table(["layer", f"rank ({self.energy:g} energy) before", "after"], rows, right=True)

    def __repr__(self) -> str:
        return f"NuclearNorm(weight={self.weight:g}, layers={self.layers!r}, energy={self.energy:g})"
