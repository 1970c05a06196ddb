"""Target-domain statistics of a network's layers, gathered in one streaming pass.

For every selected ``nn.Linear`` / ``nn.Conv2d`` layer we keep only what the
compression methods need, never the activations themselves:

* the input second-moment matrix ``XXᵀ`` (float64), the input sum and the
  sample count, from which DALR, SVD+BC and every output-error estimate follow;
* per output unit, how often its post-ReLU response is non-zero (the
  *activation rate* of Masana et al., ICCV 2017), and its mean and max post-ReLU response.

A Conv2d layer is seen through its im2col view: each spatial position of each
image is one sample of the patch vector (``in_channels·kh·kw`` long).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from netcompress._core import tensors as _tensors
from netcompress._core.description import replacement_types
from netcompress._core.layers import (
    DENSE,
    explicit_names,
    explicit_padding,
    progress_disabled,
    resolve_layers,
    weight_sources,
)
from netcompress._core.tensors import (
    _output_matrix,
    _take,
    batch_input,
    batch_size,
    call_model,
    input_matrix,
    model_device_dtype,
)
from netcompress._core.transaction import evaluating
from netcompress.stats.moments import Moments, OriginalInputs

__all__ = [
    "CHUNK_ELEMENTS",
    "LayerStats",
    "SYMMETRIC_BLOCKS_FROM",
    "collect",
]




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


_TENSOR_FIELDS = ("gram", "input_sum", "positive_count", "response_sum", "response_max", "norm4")






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


def _batches(data: Iterable | torch.Tensor) -> Iterable:
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError("data is a 0-d tensor; pass a batch of inputs or an iterable of batches")
        if data.shape[0] == 0:
            raise ValueError("data is an empty tensor (0 samples); pass at least one target sample")
        return (data,)
    return data














# Tensor functions that read only a weight's metadata, not its values: not a computation with it.
_METADATA = frozenset({"__get__", "__len__", "__format__", "__repr__", "size", "dim", "numel", "nelement", "stride",
                       "element_size", "data_ptr", "storage_offset", "untyped_storage", "get_device", "type",
                       "is_floating_point", "is_complex", "is_contiguous", "is_nonzero", "_is_view"})


def _function_name(func: Callable) -> str:
    import torch.nn.functional as F

    name = getattr(func, "__name__", repr(func))
    return f"F.{name}" if hasattr(F, name) else f"torch.{name}" if hasattr(torch, name) else f"Tensor.{name}"


class _DirectReads(TorchFunctionMode):
    """Which recorded layers' weights a torch function receives outside the layer's own call.

    A parent that computes ``F.linear(x, self.qkv.weight, self.qkv.bias)`` never calls ``qkv``
    as a module, so its hooks see nothing; this mode, active for the first forward call of
    :func:`collect`, sees the weight passed to ``F.linear`` and notes who passed it (the innermost
    module then running that is not the layer or inside it).
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module]):
        super().__init__()
        self.watched = {id(p): name for name, layer in layers.items() for p in weight_sources(layer)}
        self.running: list[str] = []
        self.found: dict[str, tuple[str, str]] = {}  # layer → (the module that read its weight, the function)
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):  # takes no Python hooks
                continue
            self.handles.append(module.register_forward_pre_hook(self._enter(name), prepend=True))
            self.handles.append(module.register_forward_hook(self._leave(name), always_call=True))

    def _enter(self, name: str):
        def hook(module, args) -> None:
            self.running.append(name)
        return hook

    def _leave(self, name: str):
        def hook(module, args, output) -> None:
            if self.running and self.running[-1] == name:
                self.running.pop()
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.watched and getattr(func, "__name__", "") not in _METADATA:
            for value in (*args, *kwargs.values()):
                for tensor in (value if isinstance(value, (list, tuple)) else (value,)):
                    layer = self.watched.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
                    if layer is None or layer in self.found or layer in self.running:
                        continue
                    reader = next((n for n in reversed(self.running) if not n.startswith(f"{layer}.")), "")
                    self.found[layer] = (reader, _function_name(func))
        return func(*args, **kwargs)


def _direct_reason(layer: str, reader: str, function: str, called: bool) -> str:
    who = f"its parent {reader!r}" if reader else "the model's forward"
    if called:
        return f"its weight is also read directly by {who} ({function})"
    return f"{who} computes with its weight directly ({function}), so netcompress saw no inputs"


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


def _share_inputs(follower: Moments, leader: Moments) -> None:
    """Give ``follower`` the input statistics (``XXᵀ``, ``Σx``, ``Σ||x||⁴``, count) of the layer that read the same input."""
    follower.gram, follower.input_sum, follower.norm4 = leader.gram, leader.input_sum, leader.norm4
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


def heldout_mask(start: int, size: int, holdout: float) -> torch.Tensor:
    """Which samples of a batch are held out: every sample where ``⌊(i+1)·h⌋ > ⌊i·h⌋`` (global index i).

    Under torch.distributed, sample j of process r (of W) has global index i = j·W + r, its place
    in a strided split (``data[r::W]``): the processes together hold out what one process would.
    """
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    i = torch.arange(start, start + size, dtype=torch.float64) * world + rank
    return torch.floor((i + 1) * holdout) > torch.floor(i * holdout)


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

