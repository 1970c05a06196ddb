"""Target-domain statistics of a network's layers, gathered in one streaming pass.

For every selected ``nn.Linear`` / ``nn.Conv2d`` layer we keep only what the
compression methods need, never the activations themselves:

* the input second-moment matrix ``XXᵀ`` (float64), the input sum and the
  sample count, from which DALR, SVD+BC and every output-error estimate follow;
* per output unit, how often its post-ReLU response is non-zero (the
  *activation rate* of seed 000), and its mean and max post-ReLU response.

A Conv2d layer is seen through its im2col view: each spatial position of each
image is one sample of the patch vector (``in_channels·kh·kw`` long).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import explicit_names, explicit_padding, progress_disabled, resolve_layers
from ._transaction import evaluating

__all__ = [
    "LayerStats",
    "Moments",
    "batch_input",
    "batch_size",
    "call_model",
    "collect",
    "input_columns",
    "input_matrix",
    "model_device_dtype",
    "model_input",
    "relative_output_error",
]


@dataclass
class Moments:
    """Streaming statistics of one layer on the target data.

    ``gram`` is ``Σ x xᵀ`` over all samples (float64), ``input_sum`` is ``Σ x``
    and ``count`` the number of samples; ``norm4`` is ``Σ ||x||⁴``, which gives the
    Ledoit–Wolf shrinkage of ``XXᵀ`` when samples are few. A grouped convolution
    (``groups > 1``) reads only its group's inputs, so its ``gram`` holds one block per
    group, shape ``(groups, f, f)``, never a dense matrix across groups.
    Output statistics are taken after a ReLU: ``positive_count[j]`` counts samples
    where unit ``j`` responds, ``response_sum``/``response_max`` are the sum and max of
    ``relu(y_j)``.
    """

    gram: torch.Tensor
    input_sum: torch.Tensor
    count: int
    positive_count: torch.Tensor
    response_sum: torch.Tensor
    response_max: torch.Tensor
    output_count: int = 0
    norm4: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    groups: int = 1

    @classmethod
    def empty(cls, in_features: int, out_features: int, groups: int = 1) -> Moments:
        f64 = torch.float64
        per_group = in_features // groups
        shape = (per_group, per_group) if groups == 1 else (groups, per_group, per_group)
        return cls(
            gram=torch.zeros(shape, dtype=f64),
            input_sum=torch.zeros(in_features, dtype=f64),
            count=0,
            positive_count=torch.zeros(out_features, dtype=f64),
            response_sum=torch.zeros(out_features, dtype=f64),
            response_max=torch.zeros(out_features, dtype=f64),
            groups=groups,
        )

    @property
    def features(self) -> int:
        """The length of one input sample (all groups together)."""
        return self.input_sum.shape[0]

    @property
    def mean_input(self) -> torch.Tensor:
        """``x̄``, the mean input (used by bias compensation)."""
        return self.input_sum / max(self.count, 1)

    @property
    def centered_gram(self) -> torch.Tensor:
        """``Σ (x - x̄)(x - x̄)ᵀ``: the scatter matrix around the mean input (per group when grouped)."""
        mean = self.mean_input.reshape(self.groups, -1)
        outer = mean[:, :, None] * mean[:, None, :]
        return self.gram - self.count * (outer[0] if self.groups == 1 else outer)

    @property
    def input_energy(self) -> torch.Tensor:
        """``Σ x_i²`` per input feature, a flat vector over the layer's whole (im2col) input."""
        return self.gram.diagonal(dim1=-2, dim2=-1).reshape(-1)

    @property
    def activation_rate(self) -> torch.Tensor:
        """Fraction of samples in which each output unit has a non-zero ReLU response."""
        return self.positive_count / max(self.output_count, 1)

    @property
    def mean_response(self) -> torch.Tensor:
        return self.response_sum / max(self.output_count, 1)

    @property
    def max_response(self) -> torch.Tensor:
        return self.response_max

    def times_gram(self, matrix: torch.Tensor) -> torch.Tensor:
        """``M · XXᵀ`` for an (out, features-per-row) weight-like matrix, group by group when grouped."""
        if self.groups == 1:
            return matrix @ self.gram
        out = matrix.shape[0]
        return (matrix.reshape(self.groups, out // self.groups, -1) @ self.gram).reshape(out, -1)

    def times_sum(self, matrix: torch.Tensor) -> torch.Tensor:
        """``M · Σx`` per row, each row reading its own group's inputs."""
        if self.groups == 1:
            return matrix @ self.input_sum
        out = matrix.shape[0]
        sums = self.input_sum.reshape(self.groups, -1, 1)
        return (matrix.reshape(self.groups, out // self.groups, -1) @ sums).reshape(out)

    def _tensors(self) -> list[tuple[torch.Tensor, str]]:
        return [
            (self.gram, "sum"),
            (self.input_sum, "sum"),
            (self.positive_count, "sum"),
            (self.response_sum, "sum"),
            (self.response_max, "max"),
            (self.norm4, "sum"),
        ]


@dataclass
class LayerStats(Mapping[str, Moments]):
    """The statistics of every observed layer, by the layer's name in ``model.named_modules()``.

    ``heldout`` holds the same statistics of the held-out part of the data (``collect(...,
    holdout=…)``), for honest error estimates; ``skipped`` names the layers that were not
    observed and why (e.g. a layer the data never reached).
    """

    layers: dict[str, Moments] = field(default_factory=dict)
    heldout: LayerStats | None = None
    skipped: dict[str, str] = field(default_factory=dict)

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
                    tensors[f"{part}/{name}/{field_name}"] = getattr(m, field_name).detach().cpu().contiguous()
                tensors[f"{part}/{name}/counts"] = torch.tensor([m.count, m.output_count, m.groups])
        save_file(tensors, str(path), metadata={"format": "netcompress.stats", "skipped": json.dumps(self.skipped)})

    @classmethod
    def load(cls, path) -> LayerStats:
        """Statistics written by :meth:`save` (safetensors: nothing is unpickled)."""
        import json

        from safetensors import safe_open

        parts: dict[str, dict[str, dict[str, torch.Tensor]]] = {"fit": {}, "heldout": {}}
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != "netcompress.stats":
                raise ValueError(f"{path} is not a statistics file written by LayerStats.save")
            for key in handle.keys():
                part, rest = key.split("/", 1)
                name, field_name = rest.rsplit("/", 1)
                parts.setdefault(part, {}).setdefault(name, {})[field_name] = handle.get_tensor(key)

        def moments(fields: dict[str, torch.Tensor]) -> Moments:
            count, output_count, groups = (int(v) for v in fields.pop("counts"))
            return Moments(**fields, count=count, output_count=output_count, groups=groups)

        stats = cls({name: moments(f) for name, f in parts["fit"].items()},
                    skipped=json.loads(metadata.get("skipped", "{}")))
        if parts["heldout"]:
            stats.heldout = cls({name: moments(f) for name, f in parts["heldout"].items()})
        return stats


_TENSOR_FIELDS = ("gram", "input_sum", "positive_count", "response_sum", "response_max", "norm4")


def input_matrix(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as a (samples, features) matrix: rows of a Linear, im2col patches of a Conv2d.

    A convolution whose padding comes before the product (``"same"``, circular/reflect, a
    static same-padding wrapper) is padded explicitly first, exactly as its forward does.
    """
    if isinstance(layer, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        padding = layer.padding
        explicit = explicit_padding(layer)
        if explicit is not None:
            pad, mode = explicit
            x = F.pad(x, pad) if mode == "constant" else F.pad(x, pad, mode)
            padding = 0
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def _output_matrix(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        if y.dim() == 3:
            y = y.unsqueeze(0)
        return y.transpose(0, 1).reshape(y.shape[1], -1).T
    return y.reshape(-1, y.shape[-1])


# Inputs are folded in chunks of about this many float64 values, so the im2col view of a
# large feature map is never held whole.
CHUNK_ELEMENTS = 1 << 23


class _Recorder:
    """Forward hook that folds one layer's inputs and outputs into its Moments."""

    def __init__(self, name: str, layer: nn.Module, positions: int | None, generator: torch.Generator):
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
        self.moments = Moments.empty(in_features, out_features, groups)
        self.heldout = Moments.empty(in_features, out_features, groups)
        self.target = self.moments

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        x, y = args[0].detach(), output.detach()
        if not torch.isfinite(x).all():
            raise ValueError(
                f"layer {self.name!r} received NaN or Inf inputs; check the data and the layers before it"
            )
        images = x.shape[0] if isinstance(module, nn.Conv2d) and x.dim() == 4 else 1
        if images == 1:
            self._fold(module, x, y, 1)
            return
        per_image = y.shape[-2] * y.shape[-1] * self.moments.features  # im2col values of one image
        step = max(1, CHUNK_ELEMENTS // max(per_image, 1))
        for i in range(0, images, step):
            self._fold(module, x[i:i + step], y[i:i + step], min(step, images - i))

    def _fold(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, images: int) -> None:
        rows = input_matrix(module, x).to(torch.float64)
        out = _output_matrix(module, y).to(torch.float64)
        if self.positions is not None and isinstance(module, nn.Conv2d):
            rows, out = self._subsample(rows, out, images)
        if rows.shape[0] == 0:
            return
        m = self.target
        device = rows.device
        if m.gram.device != device:
            for attr in _TENSOR_FIELDS:
                setattr(m, attr, getattr(m, attr).to(device))
        _add_gram(m.gram, rows, m.groups)
        m.input_sum += rows.sum(0)
        m.norm4 += rows.pow(2).sum(1).pow(2).sum()
        m.count += rows.shape[0]
        response = out.clamp_min(0)
        m.positive_count += (out > 0).sum(0)
        m.response_sum += response.sum(0)
        torch.maximum(m.response_max, response.amax(0), out=m.response_max)
        m.output_count += out.shape[0]

    def _subsample(self, rows: torch.Tensor, out: torch.Tensor, images: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_image = rows.shape[0] // images
        if per_image <= self.positions:
            return rows, out
        pick = torch.stack([torch.randperm(per_image, generator=self.generator)[: self.positions] for _ in range(images)])
        index = (pick + torch.arange(images).unsqueeze(1) * per_image).reshape(-1).to(rows.device)
        return rows[index], out[index]


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


def batch_size(batch) -> int:
    """The number of samples in a batch (its leading dimension)."""
    first = batch_input(batch)
    if isinstance(first, Mapping):
        sizes = [v.shape[0] for v in first.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
        return sizes[0] if sizes else 1
    return first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else 1


def batch_input(batch):
    """The model input of a batch: the tensor, the first item of a tuple/list, or the dict of keyword inputs."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("data yielded an empty tuple/list; each batch must hold the input as its first item")
        batch = batch[0]
    if not isinstance(batch, (torch.Tensor, Mapping)):
        raise TypeError(
            f"a batch of type {type(batch).__name__} is not supported; yield a tensor, "
            "a tuple/list whose first item is the input, or a dict of keyword inputs"
        )
    return batch


def _take(batch, index: torch.Tensor):
    """The samples ``index`` of a batch's input (every tensor of a dict sliced along its leading dimension)."""
    first = batch_input(batch)
    size = batch_size(batch)
    if isinstance(first, Mapping):
        return {k: v.index_select(0, index.to(v.device)) if isinstance(v, torch.Tensor) and v.dim() > 0
                and v.shape[0] == size else v for k, v in first.items()}
    return first.index_select(0, index.to(first.device))


def model_input(batch, device: torch.device, dtype: torch.dtype):
    """A batch's input moved to the model's device, floating tensors cast to its dtype (every value of a dict)."""
    def move(t):
        if isinstance(t, torch.Tensor):
            t = t.to(device)
            return t.to(dtype) if t.is_floating_point() else t
        return t

    batch = batch_input(batch)
    return {k: move(v) for k, v in batch.items()} if isinstance(batch, Mapping) else move(batch)


def call_model(model: nn.Module, batch, device: torch.device, dtype: torch.dtype):
    """Run ``model`` on a batch's input, moved to the model's device and float dtype."""
    inputs = model_input(batch, device, dtype)
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device of the model's first parameter and its floating dtype (float32 if it has none)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return device, dtype


def _all_reduce(stats: LayerStats) -> None:
    """Sum (and max) every statistic across processes when torch.distributed is running."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    for m in stats.values():
        for tensor, how in m._tensors():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if how == "sum" else dist.ReduceOp.MAX)
        counts = torch.tensor([m.count, m.output_count], dtype=torch.float64, device=m.gram.device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        m.count, m.output_count = int(counts[0].item()), int(counts[1].item())


def _heldout_index(start: int, size: int, holdout: float) -> torch.Tensor:
    """Which samples of a batch are held out: every sample where ``⌊(i+1)·h⌋ > ⌊i·h⌋`` (global index i)."""
    i = torch.arange(start, start + size, dtype=torch.float64)
    return torch.floor((i + 1) * holdout) > torch.floor(i * holdout)


@torch.no_grad()
def collect(
    model: nn.Module,
    data: Iterable | torch.Tensor,
    layers: Iterable[str] | str | None = None,
    *,
    positions: int | None = None,
    holdout: float = 0.0,
    seed: int = 0,
    progress: bool | None = None,
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
        seed: seed of the position sampling.
        progress: show a progress bar (``None``: only on a terminal).

    Returns:
        :class:`LayerStats`, float64 throughout. When ``torch.distributed`` is
        initialised the sums are all-reduced, so every process gets the statistics
        of the union of their data.
    """
    from tqdm.auto import tqdm

    from .prune import MaskedConv2d, MaskedLinear

    if positions is not None and (isinstance(positions, bool) or not isinstance(positions, int) or positions <= 0):
        raise ValueError(f"positions must be a positive number of spatial samples per image, got {positions!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ValueError(f"holdout must be a fraction in [0, 1) of the samples to keep apart, got {holdout!r}")
    selected, skipped = resolve_layers(model, layers, (nn.Linear, nn.Conv2d, MaskedLinear, MaskedConv2d))
    device, dtype = model_device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    recorders = {name: _Recorder(name, layer, positions, generator) for name, layer in selected.items()}
    handles = [layer.register_forward_hook(recorders[name]) for name, layer in selected.items()]
    batches = samples = 0
    try:
        for batch in tqdm(_batches(data), desc="statistics", unit="batch", disable=progress_disabled(progress)):
            if not isinstance(batch, (torch.Tensor, Mapping, tuple, list)):
                batch_input(batch)  # raises the sentence for an unsupported batch type
            size = batch_size(batch)
            held = _heldout_index(samples, size, holdout) if holdout else torch.zeros(size, dtype=torch.bool)
            parts = [(batch, False)] if not held.any() else [
                (p, h) for p, h in ((_take(batch, (~held).nonzero().squeeze(1)), False),
                                    (_take(batch, held.nonzero().squeeze(1)), True)) if batch_size(p) > 0]
            for part, is_heldout in parts:
                for rec in recorders.values():
                    rec.target = rec.heldout if is_heldout else rec.moments
                try:
                    with evaluating(model):
                        call_model(model, part, device, dtype)
                except RuntimeError as error:
                    reason = str(error).strip().splitlines()[0]
                    raise ValueError(
                        f"the model failed on batch {batches} of the data ({reason}); "
                        "check that the data's shape and type match the model's input"
                    ) from None
            batches += 1
            samples += size
    finally:
        for handle in handles:
            handle.remove()
    if samples == 0:
        raise ValueError("data yielded no samples; pass at least one batch of target data")
    stats = LayerStats({name: rec.moments for name, rec in recorders.items()}, skipped=dict(skipped))
    heldout = LayerStats({name: rec.heldout for name, rec in recorders.items()}) if holdout else None
    for part in (stats, heldout):
        if part is not None:
            for moments in part.values():
                _mirror_lower(moments.gram)
            _all_reduce(part)
    explicit = explicit_names(layers)
    for name in list(stats.layers):
        if stats.layers[name].count == 0:
            if name in explicit:
                raise ValueError(
                    f"layer {name!r} saw no samples ({batches} batches of data); "
                    "pass non-empty target data that reaches this layer"
                )
            del stats.layers[name]
            stats.skipped[name] = "the target data never reached it"
            if heldout is not None:
                heldout.layers.pop(name, None)
    stats.heldout = heldout
    return stats


def input_columns(out_features: int, per_row: int, groups: int) -> torch.Tensor:
    """For each (row, column) of a weight matrix, its input feature in the layer's im2col vector.

    With ``groups > 1`` (a grouped or depthwise Conv2d) row ``r`` reads only the inputs of its
    group, the ``per_row`` features starting at ``(r // (out / groups)) · per_row``.
    """
    offsets = (torch.arange(out_features) // max(out_features // groups, 1)) * per_row
    return offsets[:, None] + torch.arange(per_row)[None, :]


def relative_output_error(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    new_weight: torch.Tensor,
    new_bias: torch.Tensor | None,
    moments: Moments,
    groups: int = 1,
) -> float:
    """``||Y − Ŷ||_F / ||Y||_F`` of a layer on the target statistics, for any new weights and bias.

    With ``D = W − Ŵ`` and ``d = b − b̂``: ``Σ||Dx + d||² = tr(D XXᵀ Dᵀ) + 2 dᵀ D Σx + n||d||²``.
    Weights are (out, ...) tensors, compared through their (out, in) im2col matrix view; a
    grouped convolution's rows read their own group's block of the statistics.
    """
    f64 = torch.float64
    device = moments.gram.device
    W = weight.detach().reshape(weight.shape[0], -1).to(device, f64)
    D = W - new_weight.detach().reshape(weight.shape[0], -1).to(device, f64)
    b = torch.zeros(W.shape[0], dtype=f64, device=device) if bias is None else bias.detach().to(device, f64)
    b_new = torch.zeros_like(b) if new_bias is None else new_bias.detach().to(device, f64)
    d = b - b_new
    n = moments.count
    error = float((moments.times_gram(D) * D).sum() + 2 * d @ moments.times_sum(D) + n * d @ d)
    energy = float((moments.times_gram(W) * W).sum() + 2 * b @ moments.times_sum(W) + n * b @ b)
    if not (math.isfinite(error) and math.isfinite(energy)):
        raise ValueError("the compressed layer has NaN or Inf weights")
    return (max(error, 0.0) / energy) ** 0.5 if energy > 0 else 0.0
