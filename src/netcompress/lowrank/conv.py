"""Low rank of convolutions as separable stages (seed 003, "Low Rank - Convolution").

* ``jaderberg``: Jaderberg, Vedaldi and Zisserman, "Speeding up convolutional neural networks
  with low rank expansions" (BMVC 2014), scheme 2: a vertical ``kh×1`` convolution to ``r``
  channels, then a horizontal ``1×kw`` convolution to the outputs. Its closed form is the
  truncated SVD of the kernel reshaped to ``(C·kh) × (N·kw)``.
* ``cp``: Lebedev, Ganin, Rakhuba, Oseledets and Lempitsky, "Speeding-up convolutional neural
  networks using fine-tuned CP-decomposition" (ICLR 2015): a ``1×1`` convolution to ``R``
  channels, depthwise ``kh×1`` and ``1×kw`` convolutions, a ``1×1`` back to the outputs; the
  rank-``R`` CP decomposition of the 4-way kernel by alternating least squares (seeded).
* ``jaderberg-dalr``, ``cp-dalr``: the same first stages, and the last factor fitted by least
  squares to the layer's outputs on the target statistics, as DALR (Masana et al., ICCV 2017)
  fits its second factor.

Every scheme computes ``ŷ = A·(P x) + b`` on the layer's im2col patch ``x``: ``P`` (``M × C·kh·kw``,
``per_rank`` rows per rank) is what the first stages compute, ``A`` (``N × M``) the last factor.
Rank ``k`` keeps the first ``k·per_rank`` rows of ``P``. The least-squares last factor of rank
``k`` is ``A_k = W Q P_kᵀ (P_k Q P_kᵀ + ρI)⁻¹``; with the Cholesky factor ``L`` of the whole
``P Q Pᵀ + ρI``, ``A_k P_k = Z_kᵀ (L⁻¹P)_k`` where ``Z = L⁻¹ P Q Wᵀ``: the refitted
approximations of every rank are prefixes of one sum of rank-one terms, like the data-free
ones, so one factorization gives the output error of every rank in closed form.

Here: :class:`ConvDecomposition` and what builds it; the layers are in :mod:`.conv_modules`, the
first stages in :mod:`.conv_stages`, the methods in :mod:`.jaderberg` and :mod:`.cp`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from netcompress.lowrank.conv_modules import CPConv2d, JaderbergConv2d
from netcompress.lowrank.conv_stages import _cp_factors, _cp_first, _jaderberg_first, _jaderberg_stages, _whitening
from netcompress.lowrank.ridge import DEFAULT_LAM, _check_dalr, check_lam, shrunk_second_moment
from netcompress.stats.moments import Moments, output_energy

__all__ = ["ConvDecomposition", "check_conv", "rank_cost"]


def _params_per_rank(kind: str, layer: nn.Conv2d) -> int:
    (kh, kw), c, n = layer.kernel_size, layer.in_channels, layer.out_channels
    return c * kh + n * kw if kind == "jaderberg" else c + kh + kw + n


def _largest_rank(kind: str, layer: nn.Conv2d) -> int:
    """The rank at which the decomposition can be exact: the reshaped kernel's (Jaderberg), a CP rank that always suffices."""
    (kh, kw), c, n = layer.kernel_size, layer.in_channels, layer.out_channels
    if kind == "jaderberg":
        return min(c * kh, n * kw)
    return math.prod(sorted((n, c, kh, kw))[:3])


def rank_cost(kind: str):
    """``(parameters per rank, largest rank)`` of a Conv2d for the family's sizing."""
    return lambda layer: (_params_per_rank(kind, layer), _largest_rank(kind, layer))


@dataclass
class ConvDecomposition:
    """Nested rank-``k`` separable approximations of one convolution, and their output errors.

    ``first`` (``M × C·kh·kw``) holds the first stages' map, ``per_rank`` rows per rank;
    ``stages`` their own weights, rank-major; ``last`` (``N × M``) the last factor at the
    largest rank (data-free), or ``None`` when it is refitted for each rank from ``cholesky``
    and ``projected`` (see the module docstring).
    """

    kind: str  # "jaderberg" or "cp"
    layer: nn.Conv2d
    weight: torch.Tensor  # (N, C·kh·kw) float64
    bias: torch.Tensor | None
    moments: Moments
    first: torch.Tensor
    stages: tuple[torch.Tensor, ...]
    per_rank: int
    last: torch.Tensor | None = None
    cholesky: torch.Tensor | None = None
    projected: torch.Tensor | None = None
    seed: int = 0
    refit: tuple[float | None, float | str] | None = None  # (lam, shrinkage) of a data-aware last factor
    whitened: bool = False  # first stages from the kernel seen through the target inputs' second moment
    _errors: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def max_rank(self) -> int:
        return self.first.shape[0] // self.per_rank

    def params_before(self) -> int:
        return self.layer.weight.numel() + (self.layer.out_channels if self.layer.bias is not None else 0)

    def params_after(self, rank: int) -> int:
        bias = self.layer.out_channels if self.layer.bias is not None else 0
        return rank * _params_per_rank(self.kind, self.layer) + bias

    def last_factor(self, rank: int) -> torch.Tensor:
        """``A_k`` (``N × k·per_rank``): given, or the least-squares fit for the first ``k`` ranks."""
        m = rank * self.per_rank
        if self.cholesky is None:
            return self.last[:, :m]
        L = self.cholesky[:m, :m]
        return torch.linalg.solve_triangular(L.T, self.projected[:m], upper=True).T

    def _nested(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, P)`` whose prefixes of ``k·per_rank`` columns / rows give rank ``k``'s approximation ``A_k P_k``."""
        if self.cholesky is None:
            return self.last, self.first
        return self.projected.T, torch.linalg.solve_triangular(self.cholesky, self.first, upper=False)

    def module(self, rank: int) -> nn.Module:
        """The rank-``rank`` replacement layer, in the original layer's dtype and device.

        Jaderberg's ranks are nested (a truncated SVD). CP components are not: a smaller rank
        is decomposed again at that rank (the curves that size ranks come from truncating the
        largest one, an estimate; the Report measures the layer that is built).
        """
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"rank {rank} is outside 1 … {self.max_rank}, the ranks this decomposition computed")
        if self.kind == "cp" and rank < self.max_rank:
            again = _decompose("cp", self.layer, self.moments, rank, self.seed,
                               self.refit[1] if self.whitened else None)
            return (again if self.refit is None else _refit(again, *self.refit)).module(rank)
        layer, A = self.layer, self.last_factor(rank)
        cls = JaderbergConv2d if self.kind == "jaderberg" else CPConv2d
        module = cls(layer.in_channels, layer.out_channels, layer.kernel_size, rank, layer.stride, layer.padding,
                     layer.dilation, bias=layer.bias is not None).to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            if self.kind == "jaderberg":
                module.vertical.weight.copy_(self.stages[0][:rank].unsqueeze(-1))
                module.up.weight.copy_(A.reshape(layer.out_channels, rank, 1, -1))
            else:
                pointwise, vertical, horizontal = (s[:rank] for s in self.stages)
                module.pointwise.weight.copy_(pointwise[:, :, None, None])
                module.vertical.weight.copy_(vertical[:, None, :, None])
                module.horizontal.weight.copy_(horizontal[:, None, None, :])
                module.up.weight.copy_(A[:, :, None, None])
            if layer.bias is not None:
                module.up.bias.copy_(layer.bias)
        return module

    def _errors_on(self, moments: Moments) -> torch.Tensor:
        """``Σ‖y − ŷ_k‖²`` for ``k = 0 … max_rank`` on ``moments`` (the bias is unchanged and cancels).

        With the nested ``(A, P)``: ``tr(WGWᵀ) − 2 Σ_{a<m} aₐᵀ W G pₐ + Σ_{a,b<m} (aₐᵀa_b)(pₐᵀ G p_b)``.
        """
        A, P = self._nested()
        W = self.weight
        G = moments.gram.to(W.dtype)
        PG = P @ G
        total = ((W @ G) * W).sum()
        linear = (A * (PG @ W.T).T).sum(0)  # aₐᵀ W G pₐ, per term a
        quadratic = (A.T @ A) * (PG @ P.T)
        added = 2 * torch.tril(quadratic, -1).sum(1) + quadratic.diagonal()  # what term a adds to Σ_{a,b<m}
        per_term = torch.cat([torch.zeros(1, dtype=W.dtype, device=W.device), (added - 2 * linear).cumsum(0)])
        return (total + per_term[:: self.per_rank]).clamp_min(0)

    @property
    def output_energy(self) -> float:
        """``Σ ||W x + b||²`` over the target samples."""
        return output_energy(self.weight, self.bias, self.moments)

    def output_error(self) -> torch.Tensor:
        """``Σ ||y − ŷ_k||²`` over the target samples for ``k = 0 … max_rank`` (float64)."""
        if self._errors is None:
            self._errors = self._errors_on(self.moments)
        return self._errors

    def relative_error_on(self, moments: Moments) -> torch.Tensor:
        """``||Y − Ŷ_k||² / ||Y||²`` for ``k = 0 … max_rank`` on other samples (held-out ones); nothing is refitted."""
        moments = _checked(self.weight, moments)
        energy = output_energy(self.weight, self.bias, moments)
        errors = self._errors_on(moments)
        return errors / energy if energy > 0 else torch.zeros_like(errors)

    def relative_error(self, rank: int) -> float:
        """``||Y − Ŷ||_F / ||Y||_F`` of rank ``rank`` on the target statistics."""
        energy = self.output_energy
        return (float(self.output_error()[rank]) / energy) ** 0.5 if energy > 0 else 0.0


def _checked(weight: torch.Tensor, moments: Moments) -> Moments:
    if moments.reference is not None:
        raise ValueError("separable convolution decompositions fit the layer's own inputs; "
                         "compress without sequential=True")
    if moments.gram.dim() != 2 or moments.gram.shape[0] != weight.shape[1]:
        raise ValueError(f"the statistics have {moments.gram.shape[-1]} input features but the layer has "
                         f"{weight.shape[1]}; collect them on this layer")
    return moments.to(weight.device)


def check_conv(layer: nn.Module, **_settings) -> None:
    """A decomposition takes an ungrouped Conv2d with zero padding given as numbers."""
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"a {type(layer).__name__} is not a convolution; these methods decompose nn.Conv2d only")
    if layer.groups != 1:
        raise ValueError(f"a grouped convolution (groups={layer.groups}) is already separable; it stays dense")
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise ValueError("only zero padding given as numbers splits into vertical and horizontal stages "
                         f"(this layer: padding={layer.padding!r}, padding_mode={layer.padding_mode!r})")


def _kernel(layer: nn.Conv2d) -> torch.Tensor:
    weight = layer.weight.detach().to(torch.float64)
    if not torch.isfinite(weight).all():
        raise ValueError("the layer has NaN or Inf weights; fix the model before compressing it")
    return weight


def _decompose(kind: str, layer: nn.Module, moments: Moments, rank: int, seed: int,
               shrinkage: float | str | None = None) -> ConvDecomposition:
    check_conv(layer)
    weight = _kernel(layer)
    _, c, kh, _ = weight.shape
    largest = _largest_rank(kind, layer)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= largest:
        raise ValueError(f"rank {rank!r} must be an integer in 1 … {largest} for this {tuple(weight.shape)} kernel")
    matrix = weight.reshape(weight.shape[0], -1)
    moments = _checked(matrix, moments)
    bias = None if layer.bias is None else layer.bias.detach().to(torch.float64)
    if kind == "jaderberg":
        whitening = None if shrinkage is None else _whitening(moments, shrinkage, c * kh)
        vertical, horizontal = _jaderberg_stages(weight, rank, whitening)
        first, stages, per_rank = _jaderberg_first(vertical, weight.shape[3]), (vertical,), weight.shape[3]
        last = horizontal.reshape(weight.shape[0], -1)
    else:
        whitening = None if shrinkage is None else _whitening(moments, shrinkage, c)
        if whitening is not None:  # the CP of the kernel seen through whitened input channels, mapped back
            weight = torch.einsum("ncij,cd->ndij", weight, whitening)
        last, *stages = _cp_factors(weight, rank, seed)
        if whitening is not None:
            stages[0] = torch.linalg.solve_triangular(whitening.T, stages[0].T, upper=True).T
        first, stages, per_rank = _cp_first(*stages), tuple(stages), 1
    return ConvDecomposition(kind, layer, matrix, bias, moments, first, stages, per_rank, last=last, seed=seed,
                             whitened=shrinkage is not None)


def _refit(decomposition: ConvDecomposition, lam: float | None, shrinkage: float | str) -> ConvDecomposition:
    """The same first stages, the last factor of every rank by ridge least squares on the target statistics."""
    lam = check_lam(DEFAULT_LAM if lam is None else lam)
    Q = shrunk_second_moment(decomposition.moments, shrinkage=shrinkage).to(decomposition.weight)
    P, W = decomposition.first, decomposition.weight
    PQ = P @ Q
    B = PQ @ P.T
    ridge = lam * float(B.diagonal().sum()) / B.shape[0]
    B.diagonal().add_(max(ridge, torch.finfo(B.dtype).tiny))
    L = torch.linalg.cholesky(B)
    decomposition.cholesky = L
    decomposition.projected = torch.linalg.solve_triangular(L, PQ @ W.T, upper=False)
    decomposition.last = None
    decomposition.refit = (lam, shrinkage)
    return decomposition


def _fitted(kind: str, layer: nn.Module, moments: Moments, rank: int, seed: int, lam: float | None,
            shrinkage: float | str) -> ConvDecomposition:
    """The data-aware decomposition: first stages from the whitened kernel or the plain one, whichever fits the
    target outputs better at ``rank`` once the last factor is refitted (whitening approximates the
    second moment by a product over the patch's indices, and can lose where that is far off)."""
    _check_dalr(lam=lam, shrinkage=shrinkage)
    candidates = [_refit(_decompose(kind, layer, moments, rank, seed, whiten), lam, shrinkage)
                  for whiten in (shrinkage, None)]
    return min(candidates, key=lambda d: float(d.output_error()[d.max_rank]))


# What every convolution decomposition registers with (see :mod:`.jaderberg`, :mod:`.cp`).
_CONV = {"family": "lowrank", "accepts": (nn.Conv2d,), "check": check_conv, "example": {"rank": 2}}
