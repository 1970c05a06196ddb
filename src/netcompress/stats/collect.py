"""Target-domain statistics of a network's layers, gathered in one streaming pass.

For every selected ``nn.Linear`` / ``nn.Conv2d`` layer we keep only what the
compression methods need, never the activations themselves:

* the input second-moment matrix ``XXᵀ`` (float64), the input sum and the
  sample count, from which DALR, SVD+BC and every output-error estimate follow;
* per output unit, how often its post-ReLU response is non-zero (the
  *activation rate* of Masana et al., ICCV 2017), and its mean and max post-ReLU response.

A Conv2d layer is seen through its im2col view: each spatial position of each
image is one sample of the patch vector (``in_channels·kh·kw`` long).

The forward hooks that fold them, and what runs the passes, are in :mod:`.recorder`; the layers
whose weight a parent computes with directly are found by :mod:`.direct_reads`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn

from netcompress._core.description import replacement_types
from netcompress._core.layers import DENSE, explicit_names, progress_disabled, resolve_layers
from netcompress._core.tensors import _take, batch_input, batch_size
from netcompress.stats.direct_reads import _direct_reason, _DirectReads
from netcompress.stats.moments import Moments
from netcompress.stats.recorder import (
    _all_reduce,
    _mirror_lower,
    _Recorder,
    _run,
    _share_inputs,
    _SharedInputs,
    _Stopper,
)
from netcompress.stats.split import heldout_mask

__all__ = ["LayerStats", "collect", "heldout_mask", "layers_called_once", "observable_types"]


@dataclass
class LayerStats(Mapping[str, Moments]):
    """The statistics of every observed layer, by the layer's name in ``model.named_modules()``.

    ``heldout`` holds the same statistics of the held-out part of the data (``collect(...,
    holdout=…)``), for honest error estimates; ``skipped`` names the layers that were not
    observed and why (e.g. a layer the data never reached); ``shared`` maps each layer that
    read the very same input as an earlier one (query/key/value) to that layer, whose input
    statistics it shares (the same tensors, computed once); ``read_directly`` names the layers
    whose weight another module computes with directly (a parent's ``F.linear(x, self.qkv.weight)``,
    as torchvision's Swin does), with who and how: replacing such a layer changes what that
    module computes only if the replacement keeps an equivalent ``weight``.
    """

    layers: dict[str, Moments] = field(default_factory=dict)
    heldout: LayerStats | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    read_directly: dict[str, str] = field(default_factory=dict)

    @property
    def grams(self) -> int:
        """How many distinct ``XXᵀ`` matrices the statistics hold (layers reading one input share one)."""
        return len({id(m.gram) for m in self.layers.values()})

    def __getitem__(self, name: str) -> Moments:
        try:
            return self.layers[name]
        except KeyError:
            known = ", ".join(self.layers) or "none"
            raise KeyError(
                f"no statistics for layer {name!r} (collected: {known}); "
                "collect them with netcompress.collect(model, data, layers=[...])"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def save(self, path) -> None:
        """Write the statistics (held-out part included) as one safetensors file, to reuse a pass over data."""
        import json

        from safetensors.torch import save_file

        tensors = {}
        for part, stats in (("fit", self), ("heldout", self.heldout)):
            for name, m in (stats.layers.items() if stats is not None else ()):
                for field_name in _TENSOR_FIELDS:
                    # safetensors stores no tensor twice: a shared XXᵀ is written as a copy per layer
                    tensors[f"{part}/{name}/{field_name}"] = getattr(m, field_name).detach().cpu().clone()
                tensors[f"{part}/{name}/counts"] = torch.tensor([m.count, m.output_count, m.groups])
        save_file(tensors, str(path), metadata={"format": "netcompress.stats.collect", "skipped": json.dumps(self.skipped),
                                                "shared": json.dumps(self.shared),
                                                "read_directly": json.dumps(self.read_directly)})

    @classmethod
    def load(cls, path) -> LayerStats:
        """Statistics written by :meth:`save` (safetensors: nothing is unpickled)."""
        import json

        from safetensors import SafetensorError, safe_open

        from netcompress._core.files import require_regular

        path = require_regular(path, "statistics file")
        parts: dict[str, dict[str, dict[str, torch.Tensor]]] = {"fit": {}, "heldout": {}}
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != "netcompress.stats.collect":
                    raise ValueError(f"{path} is not a statistics file written by LayerStats.save")
                for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    part, _, rest = key.partition("/")
                    name, _, field_name = rest.rpartition("/")
                    if part not in parts or not name:
                        raise ValueError(f"{path} is corrupt: tensor {key!r} is not 'fit|heldout/<layer>/<field>'")
                    parts[part].setdefault(name, {})[field_name] = handle.get_tensor(key)
            documents = {key: json.loads(metadata.get(key, "{}")) for key in ("shared", "skipped", "read_directly")}
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} cannot be read as a statistics file ({error})") from None
        except (json.JSONDecodeError, RecursionError):
            raise ValueError(f"{path} is corrupt: its metadata is not JSON") from None
        if not all(isinstance(d, dict) and all(isinstance(k, str) for k in d) for d in documents.values()):
            raise ValueError(f"{path} is corrupt: its 'shared', 'skipped' and 'read_directly' must be objects")

        def moments(part: str) -> dict[str, Moments]:
            return {name: Moments.from_saved(f, f"{path}, layer {name!r} ({part})") for name, f in parts[part].items()}

        shared = {k: v for k, v in documents["shared"].items() if isinstance(v, str)}
        stats = cls(moments("fit"), skipped=documents["skipped"], read_directly=documents["read_directly"])
        if parts["heldout"]:
            stats.heldout = cls(moments("heldout"))
        for part in (stats, stats.heldout):
            if part is None:
                continue
            part.shared = {f: lead for f, lead in shared.items() if f in part.layers and lead in part.layers}
            for follower, leader in part.shared.items():
                _share_inputs(part.layers[follower], part.layers[leader])
        return stats


_TENSOR_FIELDS = ("gram", "input_sum", "positive_count", "response_sum", "response_max", "norm4", "input_histogram",
                  "input_peaks")


def _batches(data: Iterable | torch.Tensor) -> Iterable:
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError("data is a 0-d tensor; pass a batch of inputs or an iterable of batches")
        if data.shape[0] == 0:
            raise ValueError("data is an empty tensor (0 samples); pass at least one target sample")
        return (data,)
    return data


@torch.no_grad()
def layers_called_once(model: nn.Module, batch, names: Iterable[str]) -> bool:
    """Whether each of the layers ``names`` runs at most once in a forward pass of ``model`` on ``batch``.

    What lets every pass of sequential compression stop as soon as its block has run: a layer
    called twice (shared weights, a loop) would have its later calls cut off.
    """
    modules = dict(model.named_modules())
    stopper = _Stopper(list(names))  # unarmed: it counts every call of a whole pass, and arms if none ran twice
    handles = [modules[name].register_forward_hook(stopper.hook(name)) for name in stopper.calls]
    try:
        _run(model, batch, 0, _SharedInputs(None), stopper)
    finally:
        for handle in handles:
            handle.remove()
    return stopper.armed


@torch.no_grad()
def observable_types() -> tuple[type[nn.Module], ...]:
    """The layers whose inputs the pass records: Linear and Conv2d, and those plain but for a mask (pruned)."""
    return (*DENSE, *(t for t in replacement_types() if getattr(t, "masked", False)))


def collect(
    model: nn.Module,
    data: Iterable | torch.Tensor,
    layers: Iterable[str] | str | None = None,
    *,
    positions: int | None = None,
    holdout: float = 0.0,
    seed: int = 0,
    progress: bool | None = None,
    stop_early: bool = False,
    reference: Callable[[], AbstractContextManager] | None = None,
    called_once: bool = False,
    required: Iterable[str] | None = None,
) -> LayerStats:
    """Gather the target-domain statistics of ``layers`` in one pass over ``data``.

    Args:
        model: any ``nn.Module``; it is run in eval mode and left as it was.
        data: a tensor (one batch) or an iterable of batches; a batch is a tensor,
            a tuple/list whose first item is the input, or a dict of keyword inputs.
        layers: names of ``nn.Linear``/``nn.Conv2d`` modules (as in ``model.named_modules()``),
            ``"re:<regex>"`` patterns, or ``None`` for every layer netcompress understands
            (layers it does not, or that the data never reaches, are listed in ``stats.skipped``).
        positions: for Conv2d layers, the number of spatial positions sampled per image
            (``None`` keeps all), which bounds the cost on large feature maps.
        holdout: fraction of the samples (spread evenly over the batches) kept apart in
            ``stats.heldout``, so that errors can be measured on data the methods did not fit.
            Under torch.distributed, process r's samples count as ``r, r+W, r+2W, …`` of the whole.
        seed: seed of the position sampling.
        progress: show a progress bar (``None``: only on a terminal).
        stop_early: end each forward pass as soon as every layer has been recorded (the
            model's output is not needed), which sequential compression uses so that a block
            near the input costs a fraction of a pass. The first pass runs whole; if a layer is
            called more than once in it, every pass runs whole. ``called_once=True`` (the caller
            checked that with :func:`layers_called_once`) stops the first pass early too.
        reference: a context in which ``model`` is the original network (sequential
            compression swaps the original layers back in). Each batch then runs twice, first
            there and then as ``model`` is, and every Linear (and ungrouped Conv2d) also gets
            the statistics of its original inputs ``x`` (``moments.reference``) and ``Σ x x̃ᵀ``
            with its own inputs ``x̃`` (``moments.cross``), so that a method can aim at the
            original network's outputs.
        required: the layers that must see samples (default: those ``layers`` names exactly);
            ``compress`` passes the layers the user named, not every layer it selected.

    Returns:
        :class:`LayerStats`, float64 throughout. When ``torch.distributed`` is
        initialised the sums are all-reduced, so every process gets the statistics
        of the union of their data. A layer in ``required`` that saw no sample raises;
        any other goes to ``stats.skipped`` with the reason: the data never reached it, or its
        parent computes with its weight directly (``F.linear(x, self.qkv.weight)``), which
        ``stats.read_directly`` also records (see :class:`LayerStats`).
    """
    from tqdm.auto import tqdm

    required = explicit_names(layers) if required is None else required

    if positions is not None and (isinstance(positions, bool) or not isinstance(positions, int) or positions <= 0):
        raise ValueError(f"positions must be a positive number of spatial samples per image, got {positions!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ValueError(f"holdout must be a fraction in [0, 1) of the samples to keep apart, got {holdout!r}")
    selected, skipped = resolve_layers(model, layers, observable_types())
    generator = torch.Generator().manual_seed(seed)
    shared = _SharedInputs(positions)
    recorders = {name: _Recorder(name, layer, positions, generator, shared, reference is not None)
                 for name, layer in selected.items()}
    handles = [layer.register_forward_hook(recorders[name]) for name, layer in selected.items()]
    stopper = _Stopper(list(selected), armed=called_once) if stop_early else None
    if stopper is not None:  # registered after the recorders: a layer is recorded before the pass stops
        handles += [layer.register_forward_hook(stopper.hook(name)) for name, layer in selected.items()]
    batches = samples = 0
    watch: _DirectReads | None = _DirectReads(model, selected)  # for the first forward call only
    found: dict[str, tuple[str, str]] = {}
    try:
        for batch in tqdm(_batches(data), desc="statistics", unit="batch", disable=progress_disabled(progress)):
            if not isinstance(batch, (torch.Tensor, Mapping, tuple, list)):
                batch_input(batch)  # raises the sentence for an unsupported batch type
            size = batch_size(batch)
            held = heldout_mask(samples, size, holdout) if holdout else torch.zeros(size, dtype=torch.bool)
            parts = [(batch, False)] if not held.any() else [
                (p, h) for p, h in ((_take(batch, (~held).nonzero().squeeze(1)), False),
                                    (_take(batch, held.nonzero().squeeze(1)), True)) if batch_size(p) > 0]
            for part, is_heldout in parts:
                for rec in recorders.values():
                    rec.target = rec.heldout if is_heldout else rec.moments
                if reference is not None:  # the original network first: each layer keeps its input
                    for rec in recorders.values():
                        rec.capturing = True
                    with reference():
                        _run(model, part, batches, shared, stopper)
                    for rec in recorders.values():
                        rec.capturing = False
                try:
                    _run(model, part, batches, shared, stopper, watch)
                finally:
                    if watch is not None:
                        watch.remove()
                found, watch = (watch.found if watch is not None else found), None
                unpaired = [rec.name for rec in recorders.values() if rec.captured]
                if unpaired:
                    raise ValueError(f"layer {unpaired[0]!r} ran more often in the original network than in the "
                                     "compressed one; compress it without sequential=True")
            batches += 1
            samples += size
    finally:
        if watch is not None:
            watch.remove()
        for handle in handles:
            handle.remove()
        shared.new_call()  # its entries point back at the recorders: a cycle that would keep every Moments alive
    if samples == 0:
        raise ValueError("data yielded no samples; pass at least one batch of target data")
    for rec in recorders.values():
        if rec.leader is None:  # a part the layer never saw gets zeros
            rec._allocate(rec.moments)
            rec._allocate(rec.heldout)
    for rec in recorders.values():
        if rec.leader is not None:
            _share_inputs(rec.moments, rec.leader.moments)
            _share_inputs(rec.heldout, rec.leader.heldout)
    sharing = {name: rec.leader.name for name, rec in recorders.items() if rec.leader is not None}
    stats = LayerStats({name: rec.moments for name, rec in recorders.items()}, skipped=dict(skipped), shared=sharing)
    heldout = LayerStats({name: rec.heldout for name, rec in recorders.items()}, shared=sharing) if holdout else None
    for part in (stats, heldout):
        if part is not None:
            for moments in part.values():
                _mirror_lower(moments.gram)
            _all_reduce(part)
    required = set(required)
    for name in list(stats.layers):
        called = stats.layers[name].count > 0
        if name in found:
            stats.read_directly[name] = _direct_reason(name, *found[name], called=called)
        if not called:
            reason = stats.read_directly.get(name, "the target data never reached it")
            if name in required:
                raise ValueError(
                    f"layer {name!r} saw no samples ({batches} batches of data): {reason}; "
                    + ("compress the module that calls F.linear, or leave this layer out" if name in found
                       else "pass non-empty target data that reaches this layer")
                )
            del stats.layers[name]
            stats.shared.pop(name, None)
            stats.skipped[name] = reason
            if heldout is not None:
                heldout.layers.pop(name, None)
    stats.heldout = heldout
    return stats
