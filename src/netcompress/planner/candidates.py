"""Every candidate of every family for one layer, priced from the target statistics.

A candidate is a settings object (``nc.GPTQ(bits=3, group_size=128)``, ``nc.DALR(rank=24,
factor_bits=8)``, ...) applied to one layer, with what it costs and what it breaks:

* **bytes**: what ``save`` writes for the replacement's tensors (codes packed to their width),
  measured on the replacement module itself (:func:`~netcompress._core.sizes.saved_bytes`);
* **MACs**: the layer's multiply-accumulates per sample, from the dense count the model's own
  forward pass gives (:func:`~netcompress.stats.flops.layer_flops`) scaled by the replacement's
  share of the products (a rank-``k`` pair computes ``k·(in + out)`` per position, not ``in·out``);
* **error**: the held-out relative output error ``‖Y − Ŷ‖/‖Y‖`` on target samples the method did
  not fit (in-sample only where the statistics keep no held-out part); for w8a8 (``uniform`` with
  ``activations=8``, the candidate whose integer products make a layer faster) the input grid's
  noise is added as the Report adds it.

Low rank is priced from one factorization per layer: the errors of every rank come from its
cumulative sums (:meth:`~netcompress.lowrank.Factorization.relative_error_on`), so a layer's eight
ranks cost one decomposition. Quantizers are priced by applying them: GPTQ and uniform rounding
of one layer take milliseconds. Each replacement module is kept, so that a whole plan can be
tried end to end by swapping them in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from netcompress._core.layers import plain_layer
from netcompress._core.sizes import saved_bytes
from netcompress.apply import output_errors
from netcompress.lowrank.budget import useful_rank_limit
from netcompress.lowrank.dalr import DALR
from netcompress.quantize.gptq import GPTQ
from netcompress.quantize.uniform import Uniform, quantize_factors
from netcompress.registry import Settings, method
from netcompress.stats.collect import LayerStats

__all__ = ["DEFAULT_CANDIDATES", "FAMILIES", "Candidate", "price_layer"]

# The families a plan chooses among by default; "sparsegpt" is offered on request: unstructured
# sparsity is stored dense with its mask by save and computed dense, so it lowers no cost priced here.
DEFAULT_CANDIDATES = ("uniform", "gptq", "dalr")
FAMILIES = ("uniform", "gptq", "dalr", "sparsegpt")

KEEPS = (0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05)  # low-rank sizes tried, as shares of the layer's weights
GPTQ_GRID = tuple((bits, group) for bits in (4, 3, 2) for group in (None, 128, 64, 32))
SPARSITIES = (0.5, 0.75)


@dataclass
class Candidate:
    """One way to store one layer: its settings (``None``: dense), replacement and prices."""

    settings: Settings | None
    module: nn.Module
    bytes: int
    macs: int
    error: float
    latency: float | None = None  # seconds per call at the planner's batch, where measured

    @property
    def label(self) -> str:
        if self.settings is None:
            return "dense"
        values = ", ".join(f"{k}={v}" for k, v in self.settings.given().items())
        return f"{self.settings.method}({values})"


def _heldout_first(in_sample: float | None, held: float | None) -> float:
    return float(held if held is not None else in_sample)


def _error(layer: nn.Module, new: nn.Module, stats: LayerStats, name: str) -> float:
    return _heldout_first(*output_errors(layer, new, stats, name))


def _quantized(name: str, layer: nn.Module, stats: LayerStats, families: Iterable[str], dense_macs: int
               ) -> list[Candidate]:
    plain, moments = plain_layer(layer), stats[name]
    grouped = getattr(plain, "groups", 1) != 1
    per_row = plain.weight[0].numel()
    settings: list[Settings] = []
    if "uniform" in families:
        settings.append(Uniform(bits=8))
        if not isinstance(plain, nn.Embedding):  # w8a8: integer products, the candidate that makes a layer faster
            settings.append(Uniform(bits=8, activations=8))
    if "gptq" in families and not grouped:  # a depthwise filter of 9 weights has no columns to feed errors to
        settings += [GPTQ(bits=b, group_size=g, symmetric=False) for b, g in GPTQ_GRID
                     if g is None or (per_row % g == 0 and g < per_row)]
    if "sparsegpt" in families and not grouped:
        from netcompress.prune.sparsegpt import SparseGPT

        settings += [SparseGPT(sparsity=s) for s in SPARSITIES]
    found = []
    for chosen in settings:
        registered = method(chosen.method)
        inputs = chosen.values(tuple(registered.inputs.keys)) if registered.inputs else {}
        try:
            new = registered.fn(plain, moments, **chosen.values(registered.settings))
            grid = registered.inputs.calibrate(name, new, stats, inputs) if inputs.get("activations") else None
        except ValueError:  # a setting this layer does not take (or an input range never seen) is not a candidate
            continue
        errors = output_errors(layer, new, stats, name)
        if grid is not None:  # the input grid's rounding noise on top of the weights' error, as the Report adds it
            errors = registered.inputs.errors(layer, new, stats, name, grid, *errors)
        found.append(Candidate(chosen, new, saved_bytes(new), dense_macs, _heldout_first(*errors)))
    return found


def _low_rank(name: str, layer: nn.Module, stats: LayerStats, dense_macs: int) -> list[Candidate]:
    """Ranks at :data:`KEEPS` of the layer's weights, in float and with 8-bit factors, from one factorization."""
    plain = plain_layer(layer)
    if getattr(plain, "groups", 1) != 1:
        return []
    out, per_row = plain.weight.shape[0], plain.weight[0].numel()
    limit = useful_rank_limit(out, per_row)
    ranks = sorted({max(1, min(limit, int(keep * out * per_row / (out + per_row)))) for keep in KEEPS})
    ranks = [r for r in ranks if r < limit or r * (out + per_row) < out * per_row]
    if not ranks:
        return []
    moments = stats[name]
    factorization = method("dalr").fn(plain, moments, max(ranks))
    heldout = stats.heldout.layers.get(name) if stats.heldout is not None else None
    if heldout is not None and heldout.count:
        squared = factorization.relative_error_on(heldout)
    else:
        energy = factorization.output_energy
        squared = factorization.output_error() / energy if energy > 0 else torch.zeros(max(ranks) + 1)
    found = []
    for rank in ranks:
        macs = dense_macs * rank * (out + per_row) // (out * per_row)
        new = factorization.module(rank)
        found.append(Candidate(DALR(rank=rank), new, saved_bytes(new), macs, float(squared[rank].clamp_min(0).sqrt())))
        quantized = quantize_factors(factorization.module(rank), 8)
        found.append(Candidate(DALR(rank=rank, factor_bits=8), quantized, saved_bytes(quantized), macs,
                               _error(layer, quantized, stats, name)))
    return found


def price_layer(name: str, layer: nn.Module, stats: LayerStats, dense_macs: int,
                families: Iterable[str] = DEFAULT_CANDIDATES) -> list[Candidate]:
    """The layer as it is (first) and every candidate of ``families`` that fits it, priced."""
    families = tuple(families)
    candidates = [Candidate(None, layer, saved_bytes(layer), dense_macs, 0.0)]
    candidates += _quantized(name, layer, stats, families, dense_macs)
    if "dalr" in families:
        candidates += _low_rank(name, layer, stats, dense_macs)
    return candidates
