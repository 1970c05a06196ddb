"""Choosing one candidate per layer: least predicted whole-model error within a cost budget.

Each layer ``l`` offers candidates ``(cost c, error e)``. The whole model's squared relative
output error is predicted as ``Σ_l s_l² e_l²`` (``s_l``: the layer's measured sensitivity, see
:mod:`.sensitivity`): independent errors add in the output's energy. Minimising that sum under
``Σ c ≤ budget`` is a multiple-choice knapsack; its Lagrangian relaxation picks, for each
multiplier λ, each layer's ``argmin s² e² + λ c``, which is always a vertex of the layer's lower
convex hull in the (cost, weighted error) plane. Walking down λ is the same as taking hull steps
in the order of error removed per unit of cost, which is what :func:`allocate` does (greedy on
the hulls, exact at every breakpoint of λ); the budget left over at the last breakpoint is then
spent on any candidate (on the hull or not) that lowers the error and still fits.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

__all__ = ["Choice", "allocate", "lower_hull", "smallest_budget"]

Choice = tuple[float, float]  # (cost, weighted squared error) of one candidate


def lower_hull(points: Sequence[Choice]) -> list[int]:
    """Indices of the lower convex hull of ``points`` from the cheapest to the one of least error.

    Points that cost more and remove no error are dropped; among equal costs the least error is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    hull: list[int] = []
    for i in order:
        c, e = points[i]
        if hull and e >= points[hull[-1]][1]:  # no better than a cheaper point
            continue
        while len(hull) >= 2:
            (c1, e1), (c2, e2) = points[hull[-2]], points[hull[-1]]
            # drop the middle point if it lies on or above the segment from hull[-2] to i
            if (e2 - e1) * (c - c1) >= (e - e1) * (c2 - c1):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def allocate(options: Mapping[str, Sequence[Choice]], budget: float) -> dict[str, int] | None:
    """Each layer's chosen candidate (an index into its options) within ``budget``; ``None`` if even the
    cheapest candidates of every layer exceed it."""
    hulls = {name: lower_hull(points) for name, points in options.items()}
    chosen = {name: 0 for name in options}  # a position on each hull
    spent = sum(options[name][hull[0]][0] for name, hull in hulls.items())
    if spent > budget + 1e-9 * max(abs(budget), 1.0):
        return None
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        hull, at = hulls[name], chosen[name]
        if at + 1 < len(hull):
            (c0, e0), (c1, e1) = options[name][hull[at]], options[name][hull[at + 1]]
            heapq.heappush(heap, (-(e0 - e1) / max(c1 - c0, 1e-300), name))

    for name in options:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        hull, at = hulls[name], chosen[name]
        step = options[name][hull[at + 1]][0] - options[name][hull[at]][0]
        if spent + step > budget:
            continue  # this layer's next step does not fit; a cheaper step elsewhere may
        spent += step
        chosen[name] = at + 1
        push(name)
    picks = {name: hulls[name][at] for name, at in chosen.items()}
    return _spend_rest(options, picks, budget - spent)


def _spend_rest(options: Mapping[str, Sequence[Choice]], picks: dict[str, int], left: float) -> dict[str, int]:
    """Spend what the hull steps left on the swaps that remove the most error per unit of cost and fit."""
    while True:
        best: tuple[float, str, int] | None = None
        for name, points in options.items():
            c0, e0 = points[picks[name]]
            for i, (c, e) in enumerate(points):
                if e < e0 and c - c0 <= left:
                    gain = (e0 - e) / max(c - c0, 1e-300)
                    if best is None or gain > best[0]:
                        best = (gain, name, i)
        if best is None:
            return picks
        _, name, i = best
        left -= options[name][i][0] - options[name][picks[name]][0]
        picks[name] = i


def smallest_budget(options: Mapping[str, Sequence[Choice]], max_error: float, *, steps: int = 40
                    ) -> dict[str, int] | None:
    """The cheapest allocation whose predicted squared error is at most ``max_error²`` (bisection on the budget)."""
    low = sum(min(c for c, _ in points) for points in options.values())
    high = sum(max(c for c, _ in points) for points in options.values())

    def error(picks: dict[str, int]) -> float:
        return sum(options[name][i][1] for name, i in picks.items())

    best = allocate(options, high)
    if best is None or error(best) > max_error ** 2:
        return None
    for _ in range(steps):
        middle = (low + high) / 2
        picks = allocate(options, middle)
        if picks is not None and error(picks) <= max_error ** 2:
            best, high = picks, middle
        else:
            low = middle
    return best
