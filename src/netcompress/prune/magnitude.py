"""Unstructured pruning by weight magnitude, with masks that survive fine-tuning.

``magnitude`` zeroes the smallest weights by ``|w|`` (``norm=1``) or ``w²`` (``norm=2``;
the same order for a single weight, but the choice matters once scores are compared
across layers with ``scope="global"``, where each layer's scores are normalised by its
mean). The result is a :class:`MaskedLinear` / :class:`MaskedConv2d`: an ``nn.Linear``
/ ``nn.Conv2d`` with a boolean ``mask`` buffer applied in ``forward``, so training
cannot revive a pruned weight.

Structured pruning (whole units and channels, layers physically smaller) is in
``prune_units``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from netcompress.prune.modules import PRUNABLE, masked_like
from netcompress.registry import Settings, each, register
from netcompress.stats.moments import Moments

__all__ = [
    "check_magnitude",
    "global_threshold",
    "magnitude",
    "magnitude_scores",
]








def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1) of the weights to remove, got {sparsity!r}")
    return float(sparsity)


def check_magnitude(layer: nn.Module, *, sparsity: float, norm: int = 1, threshold: float | None = None,
                    scope: str = "layer") -> None:
    """Refuse bad ``magnitude`` settings before any work."""
    _check_sparsity(sparsity)
    _check_norm(norm)


def _check_norm(norm: object) -> None:
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 (|w|) or 2 (w²), got {norm!r}")


def magnitude_scores(layer: nn.Module, norm: int = 1) -> torch.Tensor:
    """Importance of each weight, ``|w|`` or ``w²``; already pruned weights score ``-inf``."""
    _check_norm(norm)
    weight = layer.weight.detach().float()
    scores = weight.abs() if norm == 1 else weight.pow(2)
    mask = getattr(layer, "mask", None)
    return scores.masked_fill(~mask, float("-inf")) if mask is not None else scores


def _check_scope(*, sparsity: float | None = None, norm: int = 1, scope: str = "layer") -> None:
    """``scope``: one threshold per layer, or one for all layers (``"global"``, a single sparsity)."""
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if sparsity is None:
        raise ValueError("method 'magnitude' needs sparsity, the fraction of weights to remove")
    if scope == "global" and (isinstance(sparsity, Mapping) or isinstance(norm, Mapping)):
        raise ValueError("scope='global' takes one sparsity and one norm for all layers, not a dict")


def _global_scope(layers: dict[str, nn.Module], arguments: dict[str, dict]) -> None:
    """With ``scope="global"``, every layer gets the threshold that removes ``sparsity`` of all their weights."""
    scope = {args.pop("scope", "layer") for args in arguments.values()}
    if scope == {"global"} and arguments:
        first = next(iter(arguments.values()))
        threshold = global_threshold(list(layers.values()), first["sparsity"], first.get("norm", 1))
        for args in arguments.values():
            args["threshold"] = threshold


@dataclass(frozen=True, kw_only=True)
class Magnitude(Settings):
    """Magnitude pruning (Han, Pool, Tran and Dally, NeurIPS 2015): zero the ``sparsity`` smallest weights.

    ``norm``: 1 or 2, how a weight's size is measured; ``scope``: one threshold per ``"layer"``, or one
    for all selected layers (``"global"``).
    """

    sparsity: float
    norm: int = 1
    scope: str = "layer"

    def check(self) -> None:
        each(self.sparsity, _check_sparsity)
        each(self.norm, _check_norm)
        _check_scope(sparsity=self.sparsity, norm=self.norm, scope=self.scope)


@register("magnitude", Magnitude, family="layer", accepts=PRUNABLE,
          check=check_magnitude, prepare=_global_scope, example={"sparsity": 0.5})
def magnitude(layer: nn.Module, moments: Moments | None = None, *, sparsity: float, norm: int = 1,
              threshold: float | None = None) -> nn.Module:
    """Prune ``layer`` to ``sparsity`` (fraction of its weights zeroed) by weight magnitude.

    ``threshold`` (set by ``compress`` for ``scope="global"``) prunes every weight whose
    normalised score is below it instead. Already pruned weights stay pruned.
    """
    _check_sparsity(sparsity)
    scores = magnitude_scores(layer, norm)
    if threshold is not None:
        keep = scores / _score_scale(scores) > threshold
    else:
        keep = _all_but_least(scores, round(sparsity * scores.numel()))
    if not keep.any():
        raise ValueError(f"sparsity {sparsity} would remove every weight of this layer; prune less")
    module = masked_like(layer)
    with torch.no_grad():
        torch.mul(layer.weight, keep, out=module.weight)
        module.mask.copy_(keep)
        if layer.bias is not None:
            module.bias.copy_(layer.bias)
    return module


def _all_but_least(scores: torch.Tensor, drop: int) -> torch.Tensor:
    """True except at the ``drop`` least scores; of equal scores at the threshold, the first ones go.

    A selection (``kthvalue``), not a sort: a language model's 24 M-weight head needs a third of
    the memory and a sixth of the time of an ``argsort``.
    """
    if drop == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    flat = scores.reshape(-1)
    threshold = flat.kthvalue(drop).values
    keep = scores > threshold
    surplus = int((~keep).sum()) - drop  # ties at the threshold beyond the count: keep the last of them
    if surplus:
        ties = (flat == threshold).nonzero().squeeze(1)
        keep.view(-1)[ties[len(ties) - surplus:]] = True
    return keep


def _score_scale(scores: torch.Tensor) -> torch.Tensor:
    """A layer's mean live score, so that one global threshold treats layers of different scale fairly."""
    live = scores[torch.isfinite(scores)]
    return live.mean().clamp_min(1e-30) if live.numel() else torch.tensor(1.0)


def global_threshold(layers: list[nn.Module], sparsity: float, norm: int = 1) -> float:
    """The normalised score below which ``sparsity`` of all the layers' weights fall."""
    _check_sparsity(sparsity)
    scores = []
    for layer in layers:
        s = magnitude_scores(layer, norm)
        scores.append((s / _score_scale(s)).reshape(-1))
    everything = torch.cat(scores)
    drop = round(sparsity * everything.numel())
    if drop == 0:
        return float("-inf")
    return float(everything.kthvalue(drop).values)
