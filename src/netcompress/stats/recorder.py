"""The forward hooks of :func:`~netcompress.stats.collect.collect`, and what runs its passes.

* :class:`_Recorder`: folds one layer's inputs (``XXᵀ``, ``Σx``, ``Σ||x||⁴``, the count, and with
  ``paired`` the original inputs' statistics and ``Σ x x̃ᵀ``) and its post-ReLU responses, chunk by
  chunk; wide inputs accumulate only the lower blocks of ``XXᵀ`` (:data:`SYMMETRIC_BLOCKS_FROM`);
* :class:`_SharedInputs`: layers that read the very same input tensor share one ``XXᵀ``;
* :class:`_Stopper`: ends a forward pass once every recorded layer has run;
* :func:`_run` (one forward call) and :func:`_all_reduce` (the sums across processes under
  torch.distributed).
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from netcompress._core import tensors as _tensors
from netcompress._core.layers import explicit_padding
from netcompress._core.tensors import _output_matrix, call_model, input_matrix, model_device_dtype
from netcompress._core.transaction import evaluating
from netcompress.stats.moments import Moments, OriginalInputs
from netcompress.stats.ranges import empty_histogram, fold_values

if TYPE_CHECKING:
    from netcompress.stats.collect import LayerStats
    from netcompress.stats.direct_reads import _DirectReads

__all__ = ["CHUNK_ELEMENTS", "SYMMETRIC_BLOCKS_FROM"]


# Inputs are folded in chunks of about this many float64 values, so the im2col view of a
# large feature map is never held whole.
CHUNK_ELEMENTS = 1 << 23


class _SharedInputs:
    """Which recorded layers read the very same input tensor within one forward call.

    Layers fed one tensor (a transformer's query, key and value; a gated MLP's gate and up
    projections; parallel 1×1 convolutions) have identical input statistics: only the first
    of them folds ``XXᵀ``, the others share it. A tensor is the same one while it is alive at
    the same address, with the same view and no in-place change since (its version counter).
    """

    def __init__(self, positions: int | None):
        self.positions = positions
        self.seen: dict[tuple, tuple[weakref.ref, _Recorder]] = {}

    def new_call(self) -> None:
        self.seen.clear()

    def reader(self, recorder: _Recorder, module: nn.Module, x: object) -> _Recorder | None:
        """The layer that already read ``x`` in this call (``None`` if none), after noting that ``recorder`` reads it."""
        if not isinstance(x, torch.Tensor):
            return None
        if isinstance(module, nn.Conv2d):
            if self.positions is not None:  # sampled positions differ per layer
                return None
            view = repr((module.kernel_size, module.stride, module.padding, module.dilation, module.groups,
                         module.padding_mode, explicit_padding(module)))  # hashable, whatever the padding's type
        else:
            view = ()
        try:
            version = x._version
        except RuntimeError:  # an inference-mode tensor keeps no version counter: nothing to share safely
            return None
        key = (type(module), view, x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, version)
        entry = self.seen.get(key)
        if entry is not None and entry[0]() is not None:
            return entry[1] if entry[1] is not recorder else None
        self.seen[key] = (weakref.ref(x), recorder)
        return None


class _Recorder:
    """Forward hook that folds one layer's inputs and outputs into its Moments.

    With ``paired`` the model runs twice on each batch: first as the original network, where
    the recorder only keeps the layer's input (``capturing``), then as it is, where it folds
    its own input ``x̃`` together with that original input ``x`` of the same samples into the
    reference statistics and ``Σ x x̃ᵀ``. One batch's inputs of the recorded layers are held
    at a time.
    """

    def __init__(self, name: str, layer: nn.Module, positions: int | None, generator: torch.Generator,
                 shared: _SharedInputs, paired: bool = False):
        self.name = name
        self.layer = layer
        self.positions = positions
        self.generator = generator
        groups = 1
        if isinstance(layer, nn.Conv2d):
            in_features = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            out_features, groups = layer.out_channels, layer.groups
        else:
            in_features, out_features = layer.in_features, layer.out_features
        # XXᵀ (and Σ x x̃ᵀ) are allocated at the first fold: a layer that reads the same input as an
        # earlier one (key and value after query) shares that layer's and never needs its own.
        per_group = in_features // groups
        self.gram_shape = (per_group, per_group) if groups == 1 else (groups, per_group, per_group)
        self.moments, self.heldout = (_without_grams(in_features, out_features, groups) for _ in range(2))
        self.paired = paired and groups == 1  # a grouped convolution keeps its own inputs' statistics only
        if self.paired:
            for m in (self.moments, self.heldout):
                m.reference = OriginalInputs.empty(in_features)
        self.weight_gram: torch.Tensor | None = None  # WᵀW of a wide-output layer, for Σ‖W x‖² (see _original_energy)
        self.target = self.moments
        self.shared = shared
        self.leader: _Recorder | None = None  # the layer whose input statistics this one shares
        self.calls = 0
        self.capturing = False
        self.captured: list[torch.Tensor] = []  # this batch's original inputs, in call order

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        reader = self.shared.reader(self, module, args[0])
        if self.calls == 0 and reader is not None:
            self.leader = reader
        elif self.leader is not None and reader is not self.leader:
            raise ValueError(f"layers {self.leader.name!r} and {self.name!r} read the same input on the first batch "
                             "but not on a later one; collect them in separate passes (layers=[...])")
        self.calls += 1
        x, y = args[0].detach(), output.detach()
        if self.leader is None and not torch.isfinite(x).all():
            raise ValueError(
                f"layer {self.name!r} received NaN or Inf inputs; check the data and the layers before it"
            )
        if self.capturing:
            if self.paired:  # a layer sharing its input keeps the same tensor: nothing is copied
                self.captured.append(x)
            return
        if self.leader is None:  # the spread of the values, for static activation quantization
            m = self.target
            if m.input_histogram.numel() == 0:
                m.input_histogram, m.input_peaks = empty_histogram(x.device)
            fold_values(m.input_histogram, m.input_peaks, x)
        original = None
        if self.paired:
            if not self.captured or self.captured[0].shape != x.shape:
                raise ValueError(f"layer {self.name!r} ran with other inputs in the compressed model than in the "
                                 "original one; compress it without sequential=True")
            original = self.captured.pop(0)
        images = x.shape[0] if isinstance(module, nn.Conv2d) and x.dim() == 4 else 1
        if images == 1:
            self._fold(module, x, y, 1, original)
            return
        per_image = y.shape[-2] * y.shape[-1] * self.moments.features  # im2col values of one image
        step = max(1, CHUNK_ELEMENTS // max(per_image, 1))
        for i in range(0, images, step):
            chunk = None if original is None else original[i:i + step]
            self._fold(module, x[i:i + step], y[i:i + step], min(step, images - i), chunk)

    def _fold(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, images: int,
              original: torch.Tensor | None) -> None:
        out = _output_matrix(module, y)  # in the model's dtype: a wide output (a 32,000-word head) is large
        m = self.target
        if m.positive_count.device != out.device:
            _move(m, out.device)
        reference = None if original is None else input_matrix(module, original).to(torch.float64)
        if self.leader is None:  # a layer sharing its input with an earlier one learns nothing more from it
            rows = input_matrix(module, x).to(torch.float64)
            index = self._positions(rows.shape[0], images) if isinstance(module, nn.Conv2d) else None
            if index is not None:
                index = index.to(rows.device)
                rows, out = rows[index], out[index]
                reference = None if reference is None else reference[index]
            if rows.shape[0] == 0:
                return
            self._allocate(m)
            _fold_inputs(m, rows)
            if reference is not None:
                m.reference.input_sum += reference.sum(0)
                m.cross.addmm_(reference.T, rows)
        if reference is not None:  # every layer's own Σ‖W x‖², a follower's too
            m.reference.energy += self._original_energy(module, reference)
        step = max(1, _tensors.ROW_BLOCK_ELEMENTS // max(out.shape[1], 1))
        for start in range(0, out.shape[0], step):  # float64 responses, a few MB of samples at a time
            block = out[start:start + step].to(torch.float64)
            response = block.clamp_min(0)
            m.positive_count += (block > 0).sum(0)
            m.response_sum += response.sum(0)
            torch.maximum(m.response_max, response.amax(0), out=m.response_max)
        m.output_count += out.shape[0]

    def _allocate(self, m: Moments) -> None:
        """``XXᵀ`` (and ``Σ x x̃ᵀ``) of ``m`` at its first fold, on the device of its other statistics."""
        if m.gram.numel() == 0:
            m.gram = torch.zeros(self.gram_shape, dtype=torch.float64, device=m.input_sum.device)
            if self.paired:
                m.cross = torch.zeros(self.gram_shape, dtype=torch.float64, device=m.input_sum.device)

    def _original_energy(self, module: nn.Module, reference: torch.Tensor) -> torch.Tensor:
        """``Σ‖W x‖²`` over the float64 rows ``x`` of the original inputs, ``W`` this layer's weight.

        The cheaper side of the product: ``‖X Wᵀ‖²`` a block of output rows at a time, or for a
        layer with more outputs than inputs (a vocabulary head) ``Σ xᵀ(WᵀW)x`` with ``WᵀW`` built once.
        """
        out, per_row = _tensors.WeightRows(module).shape
        blocks = _tensors.row_blocks(out, per_row)
        if out <= per_row:
            return sum((reference @ _tensors.weight_rows(module, rows).to(reference).T).pow(2).sum() for rows in blocks)
        if self.weight_gram is None or self.weight_gram.device != reference.device:
            self.weight_gram = torch.zeros(per_row, per_row, dtype=torch.float64, device=reference.device)
            for rows in blocks:
                block = _tensors.weight_rows(module, rows).to(reference)
                self.weight_gram.addmm_(block.T, block)
        return ((reference @ self.weight_gram) * reference).sum()

    def _positions(self, samples: int, images: int) -> torch.Tensor | None:
        """The sampled im2col rows of a chunk of ``images`` (``None``: all of them)."""
        per_image = samples // images
        if self.positions is None or per_image <= self.positions:
            return None
        pick = torch.stack([torch.randperm(per_image, generator=self.generator)[: self.positions] for _ in range(images)])
        return (pick + torch.arange(images).unsqueeze(1) * per_image).reshape(-1)


def _without_grams(in_features: int, out_features: int, groups: int) -> Moments:
    """Empty statistics whose ``XXᵀ`` is not allocated yet (an empty tensor until :meth:`_Recorder._allocate`)."""
    m = Moments.empty(0, out_features, groups)
    m.input_sum = torch.zeros(in_features, dtype=torch.float64)
    return m


def _fold_inputs(m: Moments, rows: torch.Tensor) -> None:
    """Add the (samples, features) input rows to ``XXᵀ``, ``Σx``, ``Σ||x||⁴`` and the count."""
    _add_gram(m.gram, rows, m.groups)
    m.input_sum += rows.sum(0)
    m.norm4 += rows.pow(2).sum(1).pow(2).sum()
    m.count += rows.shape[0]


def _move(m: Moments, device: torch.device) -> None:
    """Put the statistics on the device the layer runs on (the first call decides), in place."""
    vars(m).update(vars(m.to(device)))


# XXᵀ is symmetric: from this width on, only its lower block triangle is accumulated
# (4 × 4 blocks: 10 of 16 block products) and mirrored once at the end of the pass.
SYMMETRIC_BLOCKS_FROM = 1024
_BLOCKS = 4


def _block_edges(n: int) -> list[int]:
    return [round(i * n / _BLOCKS) for i in range(_BLOCKS + 1)]


def _add_gram(gram: torch.Tensor, rows: torch.Tensor, groups: int) -> None:
    """``gram += rowsᵀ rows`` (per group when grouped); for wide inputs only the lower blocks are updated."""
    if groups > 1:
        per_group = rows.reshape(rows.shape[0], groups, -1).transpose(0, 1)  # (groups, samples, f)
        gram.baddbmm_(per_group.transpose(1, 2), per_group)
        return
    n = rows.shape[1]
    if n < SYMMETRIC_BLOCKS_FROM:
        gram.addmm_(rows.T, rows)
        return
    edges = _block_edges(n)
    for i in range(_BLOCKS):
        r0, r1 = edges[i], edges[i + 1]
        for j in range(i + 1):
            c0, c1 = edges[j], edges[j + 1]
            gram[r0:r1, c0:c1].addmm_(rows[:, r0:r1].T, rows[:, c0:c1])


def _mirror_lower(gram: torch.Tensor) -> None:
    """Complete a gram matrix accumulated by :func:`_add_gram` (copy the lower blocks up)."""
    if gram.dim() != 2:
        return
    n = gram.shape[0]
    if n < SYMMETRIC_BLOCKS_FROM:
        return
    edges = _block_edges(n)
    for i in range(_BLOCKS):
        for j in range(i):
            lower = gram[edges[i]:edges[i + 1], edges[j]:edges[j + 1]]
            gram[edges[j]:edges[j + 1], edges[i]:edges[i + 1]].copy_(lower.T)


def _share_inputs(follower: Moments, leader: Moments) -> None:
    """Give ``follower`` the input statistics (``XXᵀ``, ``Σx``, ``Σ||x||⁴``, count) of the layer that read the same input."""
    follower.gram, follower.input_sum, follower.norm4 = leader.gram, leader.input_sum, leader.norm4
    follower.input_histogram, follower.input_peaks = leader.input_histogram, leader.input_peaks
    follower.count = leader.count
    follower.cross = leader.cross
    if leader.reference is not None:  # the original inputs' sum is shared, Σ‖W x‖² is each layer's own
        follower.reference = OriginalInputs(leader.reference.input_sum, follower.reference.energy)


def _all_reduce(stats: LayerStats) -> None:
    """Sum (and max) every statistic across processes when torch.distributed is running."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    reduced: set[int] = set()  # a shared XXᵀ is one tensor: summed once
    for m in stats.values():
        for tensor, how in m._tensors():
            if id(tensor) in reduced:
                continue
            reduced.add(id(tensor))
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if how == "sum" else dist.ReduceOp.MAX)
        counts = torch.tensor([m.count, m.output_count], dtype=torch.float64, device=m.gram.device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        m.count, m.output_count = int(counts[0].item()), int(counts[1].item())


class _Reached(Exception):
    """Every recorded layer has run: the rest of the forward pass is not needed."""


class _Stopper:
    """Ends a forward pass once each layer has been called, after a first whole pass showed none is called twice."""

    def __init__(self, names: list[str], armed: bool = False):
        self.calls = dict.fromkeys(names, 0)
        self.armed = armed
        self.first = not armed

    def hook(self, name: str):
        def called(module, args, output) -> None:
            self.calls[name] += 1
            if self.armed and all(self.calls.values()):
                raise _Reached
        return called

    def pass_done(self) -> None:
        if self.first:
            self.first, self.armed = False, max(self.calls.values(), default=0) <= 1
        self.calls = dict.fromkeys(self.calls, 0)


def _run(model: nn.Module, part, batch: int, shared: _SharedInputs, stopper: _Stopper | None,
         watch: _DirectReads | None = None) -> None:
    """One forward call of the model on a part of a batch, for the recorders' hooks (under ``watch``, if given)."""
    device, dtype = model_device_dtype(model)
    shared.new_call()
    try:
        with evaluating(model), (watch if watch is not None else nullcontext()):
            call_model(model, part, device, dtype)
    except _Reached:
        pass
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"the model failed on batch {batch} of the data ({reason}); "
            "check that the data's shape and type match the model's input"
        ) from None
    if stopper is not None:
        stopper.pass_done()
