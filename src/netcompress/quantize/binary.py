"""Binary and ternary weights: ``±α`` (BinaryConnect) and ``{−α, 0, +α}`` (ternary weight networks), per output channel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from netcompress.quantize.modules import QUANTIZABLE
from netcompress.quantize.uniform import _check_layer, _codebook_module, _weight_and_mask
from netcompress.registry import Settings, register
from netcompress.stats.moments import Moments

__all__ = ["Binary", "Ternary", "binary", "check_binary", "check_ternary", "ternary"]


def check_binary(layer: nn.Module, stochastic: bool = False, seed: int = 0) -> None:
    """Raise ``ValueError`` if :func:`binary` cannot quantize ``layer`` with these settings."""
    if not isinstance(stochastic, bool):
        raise ValueError(f"stochastic must be True or False, got {stochastic!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    _check_layer(layer)


def check_ternary(layer: nn.Module) -> None:
    """Raise ``ValueError`` if :func:`ternary` cannot quantize ``layer``."""
    _check_layer(layer)


@dataclass(frozen=True, kw_only=True)
class Binary(Settings):
    """1-bit weights ``±α`` per output channel (``stochastic``: BinaryConnect's stochastic sign, ``seed``-ed)."""

    stochastic: bool = False
    seed: int = 0


@register("binary", Binary, family="layer", accepts=QUANTIZABLE, check=check_binary)
def binary(layer: nn.Module, moments: Moments | None = None, *, stochastic: bool = False, seed: int = 0) -> nn.Module:
    """1-bit weights ``±α`` per output channel, ``α`` the channel's mean ``|w|``.

    Deterministic sign binarisation with a mean-magnitude scale (Rastegari et al., "XNOR-Net",
    ECCV 2016). ``stochastic=True`` draws ``+α`` with probability ``clip((x + 1)/2, 0, 1)``,
    ``x = w / max|w|`` of the channel, the hard-sigmoid rule of Courbariaux, Bengio and David,
    "BinaryConnect", NeurIPS 2015, seeded by ``seed``.
    """
    check_binary(layer, stochastic, seed)
    matrix, mask = _weight_and_mask(layer)
    live = mask if mask is not None else torch.ones_like(matrix, dtype=torch.bool)
    magnitude = torch.where(live, matrix.abs(), 0.0)
    alpha = magnitude.sum(1) / live.sum(1).clamp_min(1)
    if stochastic:
        x = matrix / magnitude.amax(1, keepdim=True).clamp_min(1e-12)
        generator = torch.Generator(device=matrix.device).manual_seed(seed)
        positive = torch.rand(matrix.shape, generator=generator, dtype=matrix.dtype, device=matrix.device) < ((x + 1) / 2).clamp(0, 1)
    else:
        positive = matrix >= 0
    return _codebook_module(layer, torch.stack([-alpha, alpha], 1), positive.to(torch.uint8), 1, mask)


@dataclass(frozen=True, kw_only=True)
class Ternary(Settings):
    """Weights in ``{−α, 0, +α}`` per output channel (Li, Zhang and Liu, "Ternary weight networks", 2016)."""


@register("ternary", Ternary, family="layer", accepts=QUANTIZABLE, check=check_ternary)
def ternary(layer: nn.Module, moments: Moments | None = None) -> nn.Module:
    """Weights in ``{−α, 0, +α}`` per output channel: threshold ``Δ = 0.7·mean|w|``, ``α`` the mean ``|w|`` above it.

    Li, Zhang and Liu, "Ternary Weight Networks", 2016 (their approximate optimal threshold).
    """
    _check_layer(layer)
    matrix, mask = _weight_and_mask(layer)
    live = mask if mask is not None else torch.ones_like(matrix, dtype=torch.bool)
    magnitude = torch.where(live, matrix.abs(), 0.0)
    delta = 0.7 * magnitude.sum(1, keepdim=True) / live.sum(1, keepdim=True).clamp_min(1)
    kept = (magnitude > delta) & live
    alpha = (magnitude * kept).sum(1) / kept.sum(1).clamp_min(1)
    codes = torch.where(kept, torch.where(matrix > 0, 2, 0), 1)
    codebook = torch.stack([-alpha, torch.zeros_like(alpha), alpha], 1)
    return _codebook_module(layer, codebook, codes.to(torch.uint8), 1, mask)
