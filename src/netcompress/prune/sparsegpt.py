"""SparseGPT: magnitude-like pruning whose removed weights are compensated on the weights that stay.

Frantar and Alistarh, "SparseGPT: Massive language models can be accurately pruned in
one-shot", ICML 2023 (Optimal Brain Surgeon, Hassibi and Stork 1993, one input column at a
time). A block of columns at a time, each row's weights with the least saliency ``w² / [H⁻¹]_ii``
(``H = XXᵀ`` of the target data, damped; ``[H⁻¹]_ii`` of the columns still to come) are
chosen, the same share in every row as in the authors' implementation (which keeps rows
independent, so a block of rows is swept at a time); then column by column the removed weights' error is spread over the later columns
through the upper Cholesky factor of ``H⁻¹`` (:mod:`netcompress.stats.hessian`), so that the layer's
outputs on the target data stay close.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from netcompress._core.layers import DENSE
from netcompress.prune.magnitude import _check_sparsity
from netcompress.prune.modules import masked_like
from netcompress.registry import Settings, each, register
from netcompress.stats.hessian import DEFAULT_DAMP, check_damp, check_hessian_layer, sweep_columns
from netcompress.stats.moments import Moments

__all__ = ["check_sparsegpt", "sparsegpt"]

BLOCK = 128  # columns whose mask is chosen together, as in SparseGPT


def check_sparsegpt(layer: nn.Module, *, sparsity: float | None = None, damp: float = DEFAULT_DAMP) -> None:
    """Refuse settings or a layer SparseGPT cannot take, before any pass over data."""
    if sparsity is None:
        raise TypeError("method 'sparsegpt' needs sparsity, the fraction of weights to remove")
    _check_sparsity(sparsity)
    check_hessian_layer(layer, "sparsegpt", damp)


@dataclass(frozen=True, kw_only=True)
class SparseGPT(Settings):
    """SparseGPT (Frantar and Alistarh, ICML 2023): remove ``sparsity`` of the weights, compensating each removal."""

    sparsity: float
    damp: float = DEFAULT_DAMP

    def check(self) -> None:  # what needs no layer; check_sparsegpt fits the rest to each layer
        each(self.sparsity, _check_sparsity)
        each(self.damp, check_damp)


@register("sparsegpt", SparseGPT, family="layer", accepts=DENSE, needs_stats=True, check=check_sparsegpt,
          example={"sparsity": 0.5})
def sparsegpt(layer: nn.Module, moments: Moments, *, sparsity: float, damp: float = DEFAULT_DAMP) -> nn.Module:
    """Remove ``sparsity`` of ``layer``'s weights, compensating each removal on the columns after it.

    Args:
        moments: the layer's target statistics (``XXᵀ`` is the Hessian of the output error).
        sparsity: the fraction removed from each row in every block of 128 columns (so in the layer).
        damp: ``λ`` added to the diagonal of ``XXᵀ``, as a fraction of its mean.

    Returns:
        A :class:`~netcompress.prune.MaskedLinear` / ``MaskedConv2d`` whose kept weights are updated.
    """
    check_sparsegpt(layer, sparsity=sparsity, damp=damp)
    module = masked_like(layer)
    pruned = torch.zeros(layer.weight.shape[0], layer.weight[0].numel(), dtype=torch.bool,
                         device=layer.weight.device)

    def choose(rows: slice, start: int, end: int, W: torch.Tensor, U: torch.Tensor) -> None:
        """Each row's removals in the block: its least saliency w²/[H⁻¹]_ii on the weights as updated so far."""
        saliency = W[:, start:end].square() / U.diagonal()[start:end].square()[None, :]
        remove = int((end - start) * sparsity)
        if remove:
            least = saliency.argsort(dim=1, stable=True)[:, :remove]
            pruned[rows, start:end] = torch.zeros_like(saliency, dtype=torch.bool).scatter_(1, least, True)

    def finish(rows: slice, W: torch.Tensor) -> None:
        module.weight.view(module.weight.shape[0], -1)[rows] = W.masked_fill_(pruned[rows], 0.0)

    with torch.no_grad():
        sweep_columns(layer, moments, damp, lambda rows, i, W: W[:, i].masked_fill(pruned[rows, i], 0.0),
                      choose, finish, BLOCK)
        module.mask.copy_(~pruned.reshape(module.mask.shape))
        if layer.bias is not None:
            module.bias.copy_(layer.bias)
    return module
