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

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import progress_disabled, resolve_layers

__all__ = ["LayerStats", "Moments", "collect", "input_columns", "input_matrix", "relative_output_error"]


@dataclass
class Moments:
    """Streaming statistics of one layer on the target data.

    ``gram`` is ``Σ x xᵀ`` over all samples (float64), ``input_sum`` is ``Σ x``
    and ``count`` the number of samples. Output statistics are taken after a
    ReLU: ``positive_count[j]`` counts samples where unit ``j`` responds,
    ``response_sum``/``response_max`` are the sum and max of ``relu(y_j)``.
    """

    gram: torch.Tensor
    input_sum: torch.Tensor
    count: int
    positive_count: torch.Tensor
    response_sum: torch.Tensor
    response_max: torch.Tensor
    output_count: int = 0

    @classmethod
    def empty(cls, in_features: int, out_features: int) -> Moments:
        f64 = torch.float64
        return cls(
            gram=torch.zeros(in_features, in_features, dtype=f64),
            input_sum=torch.zeros(in_features, dtype=f64),
            count=0,
            positive_count=torch.zeros(out_features, dtype=f64),
            response_sum=torch.zeros(out_features, dtype=f64),
            response_max=torch.zeros(out_features, dtype=f64),
        )

    @property
    def mean_input(self) -> torch.Tensor:
        """``x̄``, the mean input (used by bias compensation)."""
        return self.input_sum / max(self.count, 1)

    @property
    def centered_gram(self) -> torch.Tensor:
        """``Σ (x - x̄)(x - x̄)ᵀ``: the scatter matrix around the mean input."""
        mean = self.mean_input
        return self.gram - self.count * torch.outer(mean, mean)

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

    def _tensors(self) -> list[tuple[torch.Tensor, str]]:
        return [
            (self.gram, "sum"),
            (self.input_sum, "sum"),
            (self.positive_count, "sum"),
            (self.response_sum, "sum"),
            (self.response_max, "max"),
        ]


@dataclass
class LayerStats(Mapping[str, Moments]):
    """The statistics of every observed layer, by the layer's name in ``model.named_modules()``."""

    layers: dict[str, Moments] = field(default_factory=dict)

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


def input_matrix(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as a (samples, features) matrix: rows of a Linear, im2col patches of a Conv2d."""
    if isinstance(layer, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        padding = layer.padding
        if isinstance(padding, str) or layer.padding_mode != "zeros":
            raise ValueError(
                f"Conv2d padding={layer.padding!r}, padding_mode={layer.padding_mode!r} is not supported; "
                "use numeric zero padding"
            )
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def _output_matrix(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        if y.dim() == 3:
            y = y.unsqueeze(0)
        return y.transpose(0, 1).reshape(y.shape[1], -1).T
    return y.reshape(-1, y.shape[-1])


class _Recorder:
    """Forward hook that folds one layer's inputs and outputs into its Moments."""

    def __init__(self, name: str, layer: nn.Module, positions: int | None, generator: torch.Generator):
        self.name = name
        self.layer = layer
        self.positions = positions
        self.generator = generator
        if isinstance(layer, nn.Conv2d):
            in_features = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            out_features = layer.out_channels
        else:
            in_features, out_features = layer.in_features, layer.out_features
        self.moments = Moments.empty(in_features, out_features)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach()
        y = output.detach()
        if not torch.isfinite(x).all():
            raise ValueError(
                f"layer {self.name!r} received NaN or Inf inputs; check the data and the layers before it"
            )
        rows = input_matrix(module, x).to(torch.float64)
        out = _output_matrix(module, y).to(torch.float64)
        if self.positions is not None and isinstance(module, nn.Conv2d):
            rows, out = self._subsample(rows, out, x.shape[0] if x.dim() == 4 else 1)
        m = self.moments
        device = rows.device
        if m.gram.device != device:
            for attr in ("gram", "input_sum", "positive_count", "response_sum", "response_max"):
                setattr(m, attr, getattr(m, attr).to(device))
        _add_lower_gram(m.gram, rows)
        m.input_sum += rows.sum(0)
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


def _add_lower_gram(gram: torch.Tensor, rows: torch.Tensor) -> None:
    """``gram += rowsᵀ rows``; for wide inputs only the diagonal and lower blocks are updated."""
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
    """Complete a gram matrix accumulated by :func:`_add_lower_gram` (copy the lower blocks up)."""
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
        return (data,)
    return data


def _call(model: nn.Module, batch, device: torch.device, dtype: torch.dtype):
    def move(t):
        if isinstance(t, torch.Tensor):
            t = t.to(device)
            return t.to(dtype) if t.is_floating_point() else t
        return t

    if isinstance(batch, Mapping):
        return model(**{k: move(v) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("data yielded an empty tuple/list; each batch must hold the input as its first item")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(
            f"a batch of type {type(batch).__name__} is not supported; yield a tensor, "
            "a tuple/list whose first item is the input, or a dict of keyword inputs"
        )
    return model(move(batch))


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


@torch.no_grad()
def collect(
    model: nn.Module,
    data: Iterable | torch.Tensor,
    layers: Iterable[str] | str | None = None,
    *,
    positions: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> LayerStats:
    """Gather the target-domain statistics of ``layers`` in one pass over ``data``.

    Args:
        model: any ``nn.Module``; it is run in eval mode and left as it was.
        data: a tensor (one batch) or an iterable of batches; a batch is a tensor,
            a tuple/list whose first item is the input, or a dict of keyword inputs.
        layers: names of ``nn.Linear``/``nn.Conv2d`` modules (as in ``model.named_modules()``),
            ``"re:<regex>"`` patterns, or ``None`` for all of them.
        positions: for Conv2d layers, the number of spatial positions sampled per image
            (``None`` keeps all), which bounds the cost on large feature maps.
        seed: seed of the position sampling.
        progress: show a progress bar (``None``: only on a terminal).

    Returns:
        :class:`LayerStats`, float64 throughout. When ``torch.distributed`` is
        initialised the sums are all-reduced, so every process gets the statistics
        of the union of their data.
    """
    from tqdm.auto import tqdm

    if positions is not None and positions <= 0:
        raise ValueError(f"positions must be a positive number of spatial samples per image, got {positions}")
    from .prune import MaskedConv2d, MaskedLinear

    selected = resolve_layers(model, layers, (nn.Linear, nn.Conv2d, MaskedLinear, MaskedConv2d))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(seed)
    recorders = {name: _Recorder(name, layer, positions, generator) for name, layer in selected.items()}
    handles = [layer.register_forward_hook(recorders[name]) for name, layer in selected.items()]
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for batch in tqdm(_batches(data), desc="statistics", unit="batch", disable=progress_disabled(progress)):
            try:
                _call(model, batch, device, dtype)
            except RuntimeError as error:
                reason = str(error).strip().splitlines()[0]
                raise ValueError(
                    f"the model failed on batch {batches} of the data ({reason}); "
                    "check that the data's shape and type match the model's input"
                ) from None
            batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    stats = LayerStats({name: rec.moments for name, rec in recorders.items()})
    for moments in stats.values():
        _mirror_lower(moments.gram)
    _all_reduce(stats)
    for name, m in stats.items():
        if m.count == 0:
            raise ValueError(
                f"layer {name!r} saw no samples ({batches} batches of data); "
                "pass non-empty target data that reaches this layer"
            )
    return stats


def input_columns(out_features: int, per_row: int, groups: int) -> torch.Tensor:
    """For each (row, column) of a weight matrix, its input feature in the layer's im2col vector.

    With ``groups > 1`` (a grouped or depthwise Conv2d) row ``r`` reads only the inputs of its
    group, the ``per_row`` features starting at ``(r // (out / groups)) · per_row``.
    """
    offsets = (torch.arange(out_features) // max(out_features // groups, 1)) * per_row
    return offsets[:, None] + torch.arange(per_row)[None, :]


def _dense(matrix: torch.Tensor, groups: int, in_features: int) -> torch.Tensor:
    if groups == 1:
        return matrix
    dense = torch.zeros(matrix.shape[0], in_features, dtype=matrix.dtype, device=matrix.device)
    return dense.scatter_(1, input_columns(matrix.shape[0], matrix.shape[1], groups).to(matrix.device), matrix)


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
    grouped convolution's weights are placed in the columns of their groups.
    """
    f64 = torch.float64
    device = moments.gram.device
    features = moments.gram.shape[0]
    W = _dense(weight.detach().reshape(weight.shape[0], -1).to(device, f64), groups, features)
    D = W - _dense(new_weight.detach().reshape(weight.shape[0], -1).to(device, f64), groups, features)
    b = torch.zeros(W.shape[0], dtype=f64, device=device) if bias is None else bias.detach().to(device, f64)
    b_new = torch.zeros_like(b) if new_bias is None else new_bias.detach().to(device, f64)
    d = b - b_new
    G, total, n = moments.gram, moments.input_sum, moments.count
    error = float(((D @ G) * D).sum() + 2 * d @ (D @ total) + n * d @ d)
    energy = float(((W @ G) * W).sum() + 2 * b @ (W @ total) + n * b @ b)
    return (max(error, 0.0) / energy) ** 0.5 if energy > 0 else 0.0
