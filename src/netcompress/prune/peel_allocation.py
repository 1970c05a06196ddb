"""PEEL's reallocation: channel counts per layer that meet a FLOPs target, shared out by importance.

Step 3 of :func:`~netcompress.prune.peel.prune_reallocate`: layer ``g`` keeps the share
``backbone_g + t · importance_g / max importance`` of its channels (at most all of them), ``t``
bisected so that the network's multiply-accumulates meet the target; the rounding remainder is
spent one channel at a time where a layer is furthest below its share, and a target that coarse
channels step over is met within ``TOLERANCE`` by giving back the finest channels of the least
important layers.
"""

from __future__ import annotations

import math

from netcompress.stats.flops import ChannelCosts

__all__ = ["TOLERANCE"]

TOLERANCE = 0.02  # the reallocated network's FLOPs lie within 2 % (relative) of the target
_BISECTION_STEPS = 60  # halvings of the reallocation scale t: far below one channel of any layer


def _uniform(sizes, share: float) -> list[int]:
    return [max(1, min(n, round(share * n))) for n in sizes]


def _largest_share_within(costs: ChannelCosts, target: float) -> float:
    """The largest uniform share whose network costs at most ``target`` MACs (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if costs(_uniform(costs.sizes, mid)) <= target else (lo, mid)
    return lo


def _reallocate(costs: ChannelCosts, backbone: list[int], importance: list[float], target: float) -> list[int]:
    """Channel counts whose cost meets ``target``: extra share in proportion to importance, then the remainder."""
    sizes = costs.sizes
    top = max(importance)
    weights = [v / top for v in importance] if top > 0 else [1.0] * len(sizes)  # nothing helps: grow evenly
    base = [b / n for b, n in zip(backbone, sizes, strict=True)]

    def shares(t: float) -> list[float]:
        return [min(1.0, s + t * w) for s, w in zip(base, weights, strict=True)]

    def counts(t: float) -> list[int]:
        return [max(b, min(n, math.floor(s * n + 1e-9))) for b, n, s in zip(backbone, sizes, shares(t), strict=True)]

    lo = 0.0
    hi = max((1 - s) / w for s, w in zip(base, weights, strict=True) if w > 0)
    if costs(counts(hi)) <= target:
        lo = hi
    else:
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if costs(counts(mid)) <= target else (lo, mid)
    chosen = _fill(costs, counts(lo), shares(hi), weights, target)
    if costs(chosen) < target * (1 - TOLERANCE):
        chosen = _land(costs, chosen, backbone, weights, target)
    return chosen


def _grown(counts: list[int], g: int, step: int = 1) -> list[int]:
    return [c + step * (i == g) for i, c in enumerate(counts)]


def _fill(costs: ChannelCosts, chosen: list[int], ideal: list[float], weights: list[float], target: float) -> list[int]:
    """Spend what rounding left, one channel at a time, where a layer is furthest below its share."""
    while True:
        options = [(ideal[g] - c / n, weights[g], g) for g, (c, n) in enumerate(zip(chosen, costs.sizes, strict=True))
                   if c < n and costs(_grown(chosen, g)) <= target]
        if not options:
            return chosen
        chosen = _grown(chosen, max(options)[2])


def _land(costs: ChannelCosts, chosen: list[int], backbone: list[int], weights: list[float], target: float) -> list[int]:
    """Within tolerance of a target that coarse channels step over: one more channel of some layer, then
    (if that overshoots) the finest channels of the others given back until the cost fits again."""
    best = None
    for g, size in enumerate(costs.sizes):
        if chosen[g] == size:
            continue
        trial = _grown(chosen, g)
        while costs(trial) > target:
            cuts = [(costs(_grown(trial, h, -1)), -weights[h], h) for h in range(len(trial))
                    if h != g and trial[h] > backbone[h]]
            if not cuts:
                break
            trial = _grown(trial, max(cuts)[2], -1)  # the cut that costs the least, from the least important layer
        if abs(costs(trial) - target) <= TOLERANCE * target:
            # of the networks that land, the one keeping the most importance-weighted share of channels
            score = sum(w * c / n for w, c, n in zip(weights, trial, costs.sizes, strict=True))
            best = max(best or (score, trial), (score, trial))
    return best[1] if best is not None else chosen
