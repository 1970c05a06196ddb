"""Tensors as the methods see them: batches and model inputs, a layer's input columns and output rows."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._core.layers import Padded, explicit_padding

__all__ = [
    "ROW_BLOCK_ELEMENTS",
    "WeightRows",
    "row_blocks",
    "plain_bias",
    "weight_matrix",
    "weight_rows",
    "batch_input",
    "batch_size",
    "call_model",
    "input_columns",
    "input_matrix",
    "model_device_dtype",
    "model_input",
]


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


def input_columns(out_features: int, per_row: int, groups: int, rows: slice = slice(None)) -> torch.Tensor:
    """For each (row, column) of a weight matrix (of its ``rows`` only), its input feature in the im2col vector.

    With ``groups > 1`` (a grouped or depthwise Conv2d) row ``r`` reads only the inputs of its
    group, the ``per_row`` features starting at ``(r // (out / groups)) · per_row``.
    """
    offsets = (torch.arange(out_features)[rows] // max(out_features // groups, 1)) * per_row
    return offsets[:, None] + torch.arange(per_row)[None, :]


# Large weights are worked on this many values at a time, so that a 32,000-row output layer
# (a language model's head) costs tens of MB of float64 temporaries, not several copies of itself.
ROW_BLOCK_ELEMENTS = 1 << 20


def row_blocks(out: int, per_row: int, elements: int | None = None) -> list[slice]:
    """The output rows ``0 … out−1`` in blocks of about ``elements`` (:data:`ROW_BLOCK_ELEMENTS`) weights each."""
    step = max(1, (elements or ROW_BLOCK_ELEMENTS) // max(per_row, 1))
    return [slice(start, min(start + step, out)) for start in range(0, out, step)]


def weight_rows(module: nn.Module, rows: slice) -> torch.Tensor:
    """Output rows ``rows`` of the (out, in·kh·kw) matrix a layer computes with, in its own dtype.

    The rows of :func:`weight_matrix` without building the rest: a pruned layer's mask applied,
    a quantized layer's codes decoded, a factored layer's product taken, for those rows only.
    """
    if isinstance(module, Padded):
        return weight_rows(module.layer, rows)
    if hasattr(module, "effective_weight"):  # a user's replacement may only offer the whole matrix
        if inspect.signature(module.effective_weight).parameters:
            return module.effective_weight(rows)[0]
        return module.effective_weight()[0][rows]
    codes = getattr(module, "codes", None)
    if isinstance(codes, torch.Tensor):  # a quantized layer: decode these rows only
        index = torch.arange(codes.shape[0], device=codes.device)[rows]
        values = module._rows(codes[rows].reshape(index.numel(), -1), index)
        mask = getattr(module, "mask", None)
        return values * mask[rows].reshape(values.shape) if mask is not None else values
    weight = module.weight.detach()[rows]
    weight = weight.reshape(weight.shape[0], -1)
    mask = getattr(module, "mask", None)
    return weight * mask[rows].reshape(weight.shape) if mask is not None else weight


def plain_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias a layer adds to its output (a factored layer's is its second factor's)."""
    if isinstance(module, Padded):
        return plain_bias(module.layer)
    if hasattr(module, "effective_weight"):
        up = getattr(module, "up", None)
        return up.bias if isinstance(up, nn.Module) else module.effective_weight()[1]
    return module.bias


class WeightRows:
    """A layer's (out, in·kh·kw) weight matrix, read a block of output rows at a time: ``rows[a:b]``.

    What :func:`~netcompress.stats.moments.relative_output_error` takes in place of the whole matrix,
    so that comparing a large layer with its replacement never decodes the whole of either.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.shape = (_out_features(module), weight_rows(module, slice(0, 1)).shape[1])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return weight_rows(self.module, rows)


def _out_features(module: nn.Module) -> int:
    if isinstance(module, Padded):
        return _out_features(module.layer)
    codes = getattr(module, "codes", None)
    if isinstance(codes, torch.Tensor):
        return codes.shape[0]
    if hasattr(module, "effective_weight"):
        up = getattr(module, "up", None)
        return up.weight.shape[0] if isinstance(up, nn.Module) else module.effective_weight()[0].shape[0]
    return module.weight.shape[0]


def weight_matrix(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (out, in·kh·kw) float64 matrix a layer computes with, and its bias.

    Its mask applied (a pruned layer), rebuilt from codes (a quantized one), the product of its
    factors (a replacement with an ``effective_weight()``, such as a low-rank layer), and seen
    through a padding wrapper: all of :func:`weight_rows` at once.
    """
    return weight_rows(module, slice(None)).to(torch.float64), plain_bias(module)
