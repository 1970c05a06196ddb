"""The registry of compression methods: name → family, function and accepted settings.

Families differ in what ``compress`` does around the function:

* ``"lowrank"``: ``fn(layer, moments, rank, **settings) -> Factorization``; ranks come from
  ``rank``/``keep``/``energy``/``budget``; needs target statistics.
* ``"layer"``: ``fn(layer, moments_or_None, **settings) -> module``; one layer at a time
  (pruning masks, quantization); statistics optional (used for calibration and the error column).
* ``"structural"``: ``fn(model, names, stats, **settings) -> {name: new module}``; removes
  whole units/channels, so it also resizes the layers that consume them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from netcompress.lowrank.methods import dalr, dalr_bc, svd, svd_bc
from netcompress.prune.modules import MaskedConv2d, MaskedLinear
from netcompress.prune.structured import activation, channel, check_activation, check_channel
from netcompress.prune.unstructured import check_magnitude, magnitude
from netcompress.quantize.methods import (
    binary,
    check_binary,
    check_kmeans,
    check_ternary,
    check_uniform,
    kmeans,
    ternary,
    uniform,
)

__all__ = ["METHODS", "Method", "register", "method"]

DENSE = (nn.Linear, nn.Conv2d)
PRUNABLE = (nn.Linear, nn.Conv2d, MaskedLinear, MaskedConv2d)
QUANTIZABLE = (*PRUNABLE, nn.Embedding)  # an embedding table quantizes row by row (QuantizedEmbedding)


@dataclass(frozen=True)
class Method:
    """A registered method: its family, function, accepted settings and the layer types it takes."""

    name: str
    family: str
    fn: Callable
    settings: tuple[str, ...] = ()
    accepts: tuple[type[nn.Module], ...] = DENSE
    needs_stats: bool = False
    # Validates the settings cheaply before any pass over data: check(layer, **settings) for
    # layer methods (raising ValueError/TypeError), check(**settings) for structural ones.
    check: Callable | None = None


METHODS: dict[str, Method] = {}


def register(m: Method) -> Method:
    METHODS[m.name] = m
    return m


for _m in (
    Method("svd", "lowrank", svd, needs_stats=True),
    Method("svd-bc", "lowrank", svd_bc, needs_stats=True),
    Method("dalr", "lowrank", dalr, ("lam", "bias_compensation", "shrinkage"), needs_stats=True),
    Method("dalr-bc", "lowrank", dalr_bc, ("lam", "shrinkage"), needs_stats=True),
    Method("magnitude", "layer", magnitude, ("sparsity", "norm", "scope"), PRUNABLE, check=check_magnitude),
    Method("uniform", "layer", uniform, ("bits", "granularity", "group_size", "symmetric"), QUANTIZABLE,
           check=check_uniform),
    Method("binary", "layer", binary, ("stochastic", "seed"), QUANTIZABLE, check=check_binary),
    Method("ternary", "layer", ternary, (), QUANTIZABLE, check=check_ternary),
    Method("kmeans", "layer", kmeans, ("bits", "init", "seed"), QUANTIZABLE, check=check_kmeans),
    Method("activation", "structural", activation, ("sparsity", "criterion"), (nn.Linear, MaskedLinear), True,
           check=check_activation),
    Method("channel", "structural", channel, ("sparsity", "criterion", "refit"), PRUNABLE, True,
           check=check_channel),
):
    register(_m)


def method(name: str, settings: Mapping[str, object]) -> Method:
    """The registered method ``name``, after checking that it takes every given setting."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    chosen = METHODS[name]
    unknown = sorted(set(settings) - set(chosen.settings))
    if unknown:
        accepted = ", ".join(chosen.settings) or "none"
        raise TypeError(f"method {name!r} does not take {', '.join(unknown)} (its settings: {accepted})")
    return chosen
