"""Sequential compression: block after block, each on the inputs the already compressed blocks before it give.

As in GPTQ and SparseGPT (Frantar and Alistarh, ICML 2023): the statistics of a block's layers
are collected on the model as compressed so far, so each block corrects for the errors of those
before it. Each batch also runs through the original network (the compressed layers swapped
back), so that every layer knows its original inputs too: the Report's errors are against the
original network's outputs, and DALR regresses those outputs on the compressed prefix's inputs.
Nothing but one block's statistics is kept between passes. Every claim of a mix runs in the
same passes: a block's layers are compressed by whichever method claimed each of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from netcompress._core.blocks import find_blocks
from netcompress._core.layers import replace_module
from netcompress._core.transaction import all_or_nothing
from netcompress.apply import Plan, check_runs, check_samples, first_batch, swap_in
from netcompress.report import LayerRow
from netcompress.stats.collect import layers_called_once

if TYPE_CHECKING:  # the claims come from compress; sequential mode only runs their families' steps
    from netcompress.family import Request, Selection
    from netcompress.stats.collect import LayerStats

__all__ = ["compress_sequentially", "original_layers"]


def compress_sequentially(claims: list[tuple[Request, Selection]],
                          statistics: Callable[..., LayerStats | None]) -> dict[str, LayerRow]:
    """Compress every claim's layers block by block, in the model, all or nothing; returns the rows.

    ``statistics(claims, reference)`` is the one shared pass of :func:`~netcompress.compress.compress`,
    here over one block's layers at a time.
    """
    request = claims[0][0]
    model = request.model
    for claim, _ in claims:
        if not claim.family.sequential:
            raise ValueError(f"sequential=True runs quantization, pruning masks and low-rank methods block by block; "
                             f"method {claim.method.name!r} is a {claim.family.name} method, which changes "
                             "several layers together")
    if request.data is None or request.stats is not None:
        raise ValueError("sequential=True collects statistics block by block from the data; pass data, not stats")
    modules = dict(model.named_modules())
    data = request.data if isinstance(request.data, torch.Tensor) else list(request.data)
    everything = {name: layer for _, selection in claims for name, layer in selection.selected.items()}
    # One whole pass checks no layer runs twice, so that every block's passes stop at the block
    # (a whole pass of a language model also makes its logits, a vocabulary-wide tensor).
    once = layers_called_once(model, first_batch(data), list(everything))
    claims = [(dataclasses.replace(r, data=data, called_once=once), s) for r, s in claims]
    # each claim's arguments once, on the original weights of all its layers (a global threshold sees them all)
    arguments = [r.family.arguments(r, s.selected) for r, s in claims]
    rows: dict[str, LayerRow] = {}
    originals: dict[str, nn.Module] = {}
    with all_or_nothing(model, values=False):  # only modules are swapped: nothing to copy
        for names in find_blocks(model, everything, request.blocks):
            parts = [(r, dataclasses.replace(s, selected={n: s.selected[n] for n in names if n in s.selected}))
                     for r, s in claims]
            reference = (lambda: original_layers(model, originals)) if originals else None
            stats = statistics([(r, p) for r, p in parts if p.selected], reference)
            plan = Plan()
            for (r, part), given in zip(parts, arguments, strict=True):
                if not part.selected:
                    continue
                r.family.settle(r, part, stats)  # part shares whole's skipped: what it leaves dense is recorded there
                plan.merge(r.family.plan(r, part, stats, {n: given[n] for n in part.selected}))
            if stats is not None:
                check_samples(stats, [n for _, p in parts for n in p.selected], plan.rows)
            originals.update({name: modules[name] for name in plan.replacements})
            swap_in(model, plan)
            rows.update(plan.rows)
            del stats, plan  # one block's statistics at a time: freed before the next block's pass
        check_runs(model, first_batch(data))
    return rows


@contextmanager
def original_layers(model: nn.Module, originals: Mapping[str, nn.Module]) -> Iterator[None]:
    """The model as the original network for the time of the context: the compressed layers swapped back."""
    modules = dict(model.named_modules())
    compressed = {name: modules[name] for name in originals}
    for name, layer in originals.items():
        replace_module(model, name, layer)
    try:
        yield
    finally:
        for name, layer in compressed.items():
            replace_module(model, name, layer)
