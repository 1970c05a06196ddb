"""Choosing each layer's rank: from a kept fraction, an energy target or a global budget.

All three work from the curves of a :class:`~netcompress.lowrank.Factorization`
(output error for every rank, measured on the target statistics), so no extra
pass over data is needed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from netcompress.registry import Settings

__all__ = ["SIZING", "LayerCurve", "LowRankSettings", "allocate_budget", "check_fraction", "rank_for_energy", "rank_for_keep", "useful_rank_limit"]


@dataclass(frozen=True)
class LayerCurve:
    """What the planner needs of one layer.

    ``relative_error[k]`` is ``Σ||y − ŷ_k||² / Σ||y||²`` for ``k = 0 … max_rank``;
    a rank costs ``params_per_rank`` parameters on top of ``fixed_params`` (the bias).
    """

    relative_error: torch.Tensor
    params_per_rank: int
    fixed_params: int
    params_before: int

    @property
    def max_rank(self) -> int:
        return len(self.relative_error) - 1

    def params(self, rank: int) -> int:
        return rank * self.params_per_rank + self.fixed_params


def check_fraction(name: str, value: object) -> float:
    """``value`` as a float, refused unless it is a fraction in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")
    return float(value)


SIZING = ("rank", "keep", "energy", "budget")


@dataclass(frozen=True, kw_only=True)
class LowRankSettings(Settings):
    """What every low-rank method is sized by: exactly one of these four.

    * ``rank``: the rank of each layer (an int, or layer name → int);
    * ``keep``: the fraction of each layer's parameters kept;
    * ``energy``: the fraction of each layer's target output energy kept (on held-out samples);
    * ``budget``: the fraction of the selected layers' parameters kept, spread where it lowers the
      target output error most per parameter (a layer is left dense where factoring saves too little).

    ``factor_bits`` (2 to 8) then quantizes every factor to that many bits (uniform, one scale per
    output channel): low rank times a quarter of the bytes at 8 bits, the composition Deep
    Compression-style pipelines reach in two steps.
    """

    sizing: ClassVar[tuple[str, ...]] = (*SIZING, "factor_bits")
    rank: int | None = None
    keep: float | None = None
    energy: float | None = None
    budget: float | None = None
    factor_bits: int | None = None

    def check(self) -> None:
        given = [k for k in SIZING if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"{self.method or 'a low-rank method'} needs exactly one of rank, keep, energy or "
                             f"budget (got {', '.join(given) or 'none'}), e.g. budget=0.5")
        for key in ("keep", "energy", "budget"):
            if getattr(self, key) is not None:
                check_fraction(key, getattr(self, key))
        if self.factor_bits is not None and not 2 <= self.factor_bits <= 8:
            raise ValueError(f"factor_bits must be an integer from 2 to 8, got {self.factor_bits}")

    def size(self) -> dict[str, object]:
        """The one sizing field given, as ``{name: value}``."""
        return {k: v for k, v in self.values(SIZING).items() if v is not None}


def useful_rank_limit(out_features: int, in_features: int, per_rank: int | None = None,
                      largest: int | None = None) -> int:
    """The largest rank whose factors hold fewer weights than the dense ``out × in`` matrix (at least 1).

    By default the factors are two matrices (``out + in`` weights per rank, rank at most
    ``min(out, in)``); a decomposition with other factors gives its ``per_rank`` and ``largest`` rank.
    """
    per_rank = out_features + in_features if per_rank is None else per_rank
    largest = min(out_features, in_features) if largest is None else largest
    return max(1, min(largest, (out_features * in_features - 1) // per_rank))


def rank_for_keep(keep: float, params_before: int, params_per_rank: int, fixed_params: int) -> int:
    """The largest rank whose parameters are at most ``keep`` × the layer's (at least 1)."""
    check_fraction("keep", keep)
    return max(1, math.floor((keep * params_before - fixed_params) / params_per_rank))


def rank_for_energy(relative_error: torch.Tensor, energy: float) -> int:
    """The smallest rank keeping at least ``energy`` of the target output energy.

    Returns ``len(relative_error)`` when no computed rank reaches it (the layer is then best left dense).
    """
    check_fraction("energy", energy)
    kept = 1 - relative_error
    reached = torch.nonzero(kept[1:] >= energy - 1e-12)
    return int(reached[0]) + 1 if len(reached) else len(relative_error)


def allocate_budget(curves: Mapping[str, LayerCurve], budget: float) -> dict[str, int]:
    """Ranks that fit ``budget`` × the layers' parameters and minimise the summed relative output error.

    Every layer starts at rank 1; each further step is then given, greedily, to the layer
    whose relative error falls most per parameter spent, until the budget is used up. A
    layer's last step is to stay dense (error 0, all its parameters): it is taken only
    where that buys more error per parameter than factoring elsewhere. A layer left dense
    gets rank ``max_rank + 1``.
    """
    check_fraction("budget", budget)
    allowed = budget * sum(c.params_before for c in curves.values())
    ranks = {name: 1 for name in curves}
    spent = sum(c.params(1) for c in curves.values())
    if spent > allowed:
        floor = spent / sum(c.params_before for c in curves.values())
        raise ValueError(f"budget {budget} is below {floor:.4f}, the share that rank 1 in every selected layer needs")
    heap: list[tuple[float, str]] = []

    def step(name: str) -> tuple[float, int] | None:
        """(error removed, parameters spent) by the layer's next step, or None at the end."""
        curve, k = curves[name], ranks[name]
        if k < curve.max_rank:
            return float(curve.relative_error[k] - curve.relative_error[k + 1]), curve.params_per_rank
        if k == curve.max_rank and curve.params_before > curve.params(k):
            return float(curve.relative_error[k]), curve.params_before - curve.params(k)
        return None

    def push(name: str) -> None:
        nxt = step(name)
        if nxt is not None:
            heapq.heappush(heap, (-nxt[0] / nxt[1], name))

    for name in curves:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        cost = step(name)[1]
        if spent + cost > allowed:
            continue  # a cheaper layer may still fit
        spent += cost
        ranks[name] += 1
        push(name)
    return ranks
