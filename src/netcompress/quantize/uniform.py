"""Uniform weight quantization (per tensor, per channel, per group of inputs), and what every quantizer shares.

Two stored forms, each where it pays:

* **Integer codes and a scale** (``uniform``), as GPTQ, AWQ and torchao store weights:
  ``weight = (code − zero_point) · scale``, one ``scale`` (and, when asymmetric, one
  integer ``zero_point``) per group of weights. A group is a whole tensor, one output row
  (``granularity="channel"``) or ``group_size`` consecutive inputs of one output row
  (``granularity="group"``, the GPTQ/AWQ layout). 8-bit per-channel storage therefore
  costs 8 bits per weight plus one scale per row, not a 256-entry codebook per row.
* **A small codebook** (``kmeans``, ``binary``, ``ternary``, in their own files): ``weight = codebook[row group, code]``.
  Fine-tuning trains the code words while the codes stay fixed; the gradient of a code word
  is the sum of the gradients of the weights that share it (Han, Mao and Dally, "Deep
  Compression", ICLR 2016, Figure 3).

:class:`QuantizedLinear`, :class:`QuantizedConv2d` and :class:`QuantizedEmbedding` hold either
form (``scheme`` is ``"symmetric"``, ``"asymmetric"`` or ``"codebook"``) and compute their
``weight`` on the fly, so evaluating accuracy is an ordinary forward pass (fake
quantization), ``state_dict`` and ``torch.jit.script`` work, and the ``.ncz`` container
packs the codes in ``bits`` bits or Huffman codes them (see :mod:`netcompress.storage.codec`).

Every quantizer is a pure function ``(layer, moments_or_None, **settings) → new module``;
``check_<method>(layer, **settings)`` validates settings against a layer without building
anything, so ``compress`` can refuse a bad setting before it changes any layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from netcompress._core.sizes import half_scale
from netcompress._core.tensors import input_columns, row_blocks, weight_rows
from netcompress.quantize.activations import STATIC_INPUTS, check_activation_settings
from netcompress.quantize.modules import QUANTIZABLE, QuantizedEmbedding, quantized_like
from netcompress.registry import Settings, each, register
from netcompress.stats.moments import Moments

__all__ = ["CLIP_FRACTIONS", "Uniform", "check_uniform", "clip_weights", "grid_codes", "uniform"]

# Clipping ranges tried by the uniform quantizer, as fractions of each group's range: an
# MSE-optimal clip (Banner, Nahshan and Soudry, "Post training 4-bit quantization of
# convolutional networks for rapid-deployment", NeurIPS 2019) searched on a grid.
CLIP_FRACTIONS = tuple(1.0 - 0.025 * i for i in range(25))












def _finish(module: nn.Module, layer: nn.Module, codes: torch.Tensor, mask: torch.Tensor | None,
            **tensors: torch.Tensor) -> nn.Module:
    """Copy codes, scales/zero points/codebook, mask and bias into ``module``."""
    if mask is not None:  # pruned weights carry the code of zero, so equal models have equal state
        codes = torch.where(mask.reshape(codes.shape), codes, torch.full_like(codes, module.zero_code))
    with torch.no_grad():
        module.codes.copy_(codes.reshape(module.codes.shape))
        for key, value in tensors.items():
            getattr(module, key).copy_(value.reshape(getattr(module, key).shape))
        if mask is not None:
            module.mask.copy_(mask.reshape(module.mask.shape))
        if getattr(layer, "bias", None) is not None:
            module.bias.copy_(layer.bias)
    return module


def _weight_and_mask(layer: nn.Module, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The float64 weight matrix (rows, in·kh·kw) of a plain, masked or quantized layer's ``rows``, and their mask."""
    weight = weight_rows(layer, rows).to(torch.float64)
    mask = getattr(layer, "mask", None)
    if mask is not None:
        mask = mask[rows].reshape(weight.shape).bool()
    return weight, mask


def _stored(layer: nn.Module) -> torch.Tensor:
    """The tensor holding a layer's weights as stored: a quantized layer's codes (not decoded), else its weight."""
    codes = getattr(layer, "codes", None)
    return codes if isinstance(codes, torch.Tensor) else layer.weight


# ---- validation (cheap: shapes and settings only, nothing is built) ---------------------------------------------

def _check_bits(bits: object, limit: int = 8) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= limit:
        raise ValueError(f"bits must be an integer from 1 to {limit}, got {bits!r}")
    return bits


def _check_layer(layer: nn.Module) -> None:
    if isinstance(layer, nn.Embedding) and layer.max_norm is not None:
        raise ValueError("an nn.Embedding with max_norm renormalises its table at lookup; quantize it without max_norm")


def _per_row(layer: nn.Module) -> int:
    return math.prod(_stored(layer).shape[1:])


def _columns_per_group(layer: nn.Module, granularity: object, group_size: object) -> int:
    """How many consecutive inputs of one row share a scale (the whole row for 'channel' and 'tensor')."""
    per_row = _per_row(layer)
    if granularity in ("tensor", "channel"):
        if group_size is not None:
            raise ValueError(f"group_size is for granularity='group'; drop it or use granularity='group' "
                             f"(got granularity={granularity!r})")
        return per_row
    if granularity != "group":
        raise ValueError(f"granularity must be 'tensor', 'channel' or 'group', got {granularity!r}")
    if group_size is None or isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"granularity='group' needs group_size, a positive number of inputs per scale, got {group_size!r}")
    if per_row % group_size:
        divisors = [d for d in range(1, per_row + 1) if per_row % d == 0 and d <= 2 * group_size][-2:]
        raise ValueError(f"group_size {group_size} does not divide this layer's {per_row} inputs per output row; "
                         f"choose a divisor of {per_row} (e.g. {' or '.join(map(str, divisors))}) or granularity='channel'")
    return group_size


def _check_grid(bits: object, symmetric: object) -> None:
    if bits == 1 and symmetric is True:
        raise ValueError("a symmetric 1-bit grid holds only zero and one sign; use method='binary' or symmetric=False")


def check_uniform(layer: nn.Module, bits: int | None = None, granularity: str = "channel",
                  group_size: int | None = None, symmetric: bool = True) -> None:
    """Raise ``ValueError``/``TypeError`` if :func:`uniform` cannot quantize ``layer`` with these settings.

    Reads only shapes and settings, builds nothing, so ``compress`` can check every layer
    before it replaces any. Messages do not name the layer; the caller prefixes it.
    """
    if bits is None:
        raise TypeError("method 'uniform' needs bits, the width of a code (1 to 8)")
    _check_bits(bits)
    if not isinstance(symmetric, bool):
        raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
    _check_grid(bits, symmetric)
    _check_layer(layer)
    _columns_per_group(layer, granularity, group_size)


# ---- the uniform grid ---------------------------------------------------------------------------------------------

def clip_weights(moments: Moments | None, matrix: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """How much an error in each weight of ``matrix`` (out, per_row) costs on the target data.

    The mean square ``E[x_j²]`` of each weight's input (``moments.input_energy / count``),
    scaled to mean 1 and shrunk towards uniform weights: ``(1 − α)·e + α`` with
    ``α = d / (n + d)`` for ``n`` samples of ``d`` input features. The uniform (data-free)
    weighting acts as a prior worth ``d`` pseudo-samples, one per feature being estimated:
    with ``n ≪ d`` the inputs span a small subspace and the calibration set's energies say
    little about new data, so the clip follows the data only as ``n`` grows past ``d``
    (the same posterior-mean form as a conjugate prior; cf. Ledoit and Wolf, "A well-conditioned
    estimator for large-dimensional covariance matrices", J. Multivariate Analysis 2004).
    Ones without statistics.
    """
    if moments is None:
        return torch.ones_like(matrix)
    energy = moments.input_energy.to(matrix.device, torch.float64) / max(moments.count, 1)
    energy = energy / energy.mean().clamp_min(1e-30)
    features = energy.numel()
    alpha = features / (moments.count + features)
    energy = ((1 - alpha) * energy + alpha).to(matrix.dtype)
    if groups == 1:  # every row reads the same inputs: a broadcast view, not an (out, in) copy
        return energy[None, :].expand(matrix.shape)
    return energy[input_columns(matrix.shape[0], matrix.shape[1], groups).to(matrix.device)]


def grid_codes(values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The nearest ``bits``-bit codes of ``values`` on the grid ``(code − zero)·scale`` (float, broadcast)."""
    return (values / scale).add_(zero).round_().clamp_(0, (1 << bits) - 1)


def _step(extent: torch.Tensor, steps: int) -> torch.Tensor:
    """The grid step ``extent / steps``; 1 for a group of zeros (any step holds them, and float16 holds 1)."""
    return torch.where(extent > 0, extent / steps, torch.ones_like(extent))


def _affine_grid(values: torch.Tensor, cost: torch.Tensor, bits: int, symmetric: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale, zero point and codes of each row of ``values`` (blocks × n, NaN where pruned).

    Tries each clip fraction of :data:`CLIP_FRACTIONS` and keeps, per block, the one with the
    least ``Σ cost·(ŵ − w)²``. Symmetric: ``scale = c·max|w| / (2^(b−1) − 1)``, zero point
    ``2^(b−1)``. Asymmetric: the range ``[min(c·min, 0), max(c·max, 0)]`` (it holds zero, so
    zero is a code) over ``2^b − 1`` steps, zero point ``round(−low / scale)``. Blocks are
    searched a slice at a time so the temporaries stay in cache.
    """
    top = (1 << bits) - 1
    live = ~torch.isnan(values)
    w = values.nan_to_num(0.0)
    cost = cost * live
    if symmetric:
        extent = w.abs().amax(1)
    else:
        low = torch.where(live, w, torch.inf).amin(1).clamp(max=0.0)
        high = torch.where(live, w, -torch.inf).amax(1).clamp(min=0.0)
    best_error = torch.full((w.shape[0],), torch.inf, dtype=w.dtype, device=w.device)
    best_scale = torch.ones_like(best_error)
    best_zero = torch.zeros_like(best_error)
    # ~0.5 MB slices on a CPU stay in cache; a GPU wants few, large kernels (one per clip fraction and slice).
    step = max(1, (1 << 16 if w.device.type == "cpu" else 1 << 24) // max(w.shape[1], 1))
    for first in range(0, w.shape[0], step):
        rows = slice(first, first + step)
        for fraction in CLIP_FRACTIONS:
            if symmetric:
                scale = half_scale(_step(fraction * extent[rows], (1 << (bits - 1)) - 1))
                zero = torch.full_like(scale, 1 << (bits - 1))
            else:
                scale = half_scale(_step(fraction * (high[rows] - low[rows]), top))
                zero = (-fraction * low[rows] / scale).round().clamp(0, top)
            q = w[rows] / scale[:, None]
            q.add_(zero[:, None]).round_().clamp_(0, top).sub_(zero[:, None]).mul_(scale[:, None]).sub_(w[rows])
            error = q.square_().mul_(cost[rows]).sum(1)
            better = error < best_error[rows]
            best_error[rows] = torch.where(better, error, best_error[rows])
            best_scale[rows] = torch.where(better, scale, best_scale[rows])
            best_zero[rows] = torch.where(better, zero, best_zero[rows])
    return best_scale, best_zero, grid_codes(w, best_scale[:, None], best_zero[:, None], bits)


@dataclass(frozen=True, kw_only=True)
class Uniform(Settings):
    """Uniform ``bits``-bit integer codes, one scale per tensor, output channel or ``group_size`` inputs.

    ``activations``: also round each layer's input onto a static ``activations``-bit grid calibrated
    on the target sample (``bits=8, activations=8``: w8a8; see :mod:`netcompress.quantize.activations`).
    """

    bits: int
    granularity: str = "channel"
    group_size: int | None = None
    symmetric: bool = True
    activations: int | None = None
    activation_clip: str = "auto"
    activation_symmetric: bool = False

    def check(self) -> None:  # what needs no layer; check_uniform fits the rest to each layer
        each(self.bits, _check_bits)
        _check_grid(self.bits, self.symmetric)
        check_activation_settings(self.activations, self.activation_clip, self.activation_symmetric)


@register("uniform", Uniform, family="layer", accepts=QUANTIZABLE, check=check_uniform, example={"bits": 4},
          inputs=STATIC_INPUTS)
def uniform(layer: nn.Module, moments: Moments | None = None, *, bits: int, granularity: str = "channel",
            group_size: int | None = None, symmetric: bool = True) -> nn.Module:
    """Uniform ``bits``-bit quantization to integer codes with one scale per group.

    Args:
        layer: ``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding`` or a pruned/quantized one (pruned stays pruned).
        moments: target statistics; when given, the clipping search weights each weight's
            error by its input's energy (:func:`clip_weights`), else uniformly.
        bits: code width, 1 to 8.
        granularity: ``"tensor"`` (one scale), ``"channel"`` (one per output row) or ``"group"``
            (one per ``group_size`` consecutive inputs of a row, the layout of GPTQ, Frantar et al.,
            ICLR 2023, and AWQ, Lin et al., MLSys 2024; ``group_size`` must divide the row).
        symmetric: ``True`` (default): ``w = (code − 2^(b−1))·scale``, no zero point stored.
            Trained weights are centred near zero, so a symmetric grid wastes little range,
            keeps zero exact and costs one number per group; ``False`` adds an integer zero
            point per group, for groups far from zero-centred.

    Returns:
        A :class:`QuantizedLinear` / :class:`QuantizedConv2d` / :class:`QuantizedEmbedding`
        with ``weight = (codes − zero_point)·scale``; the MSE-optimal clip fraction per group is
        searched on :data:`CLIP_FRACTIONS`.
    """
    check_uniform(layer, bits, granularity, group_size, symmetric)
    out, per_row = _stored(layer).shape[0], _per_row(layer)
    size = _columns_per_group(layer, granularity, group_size)
    groups = getattr(layer, "groups", 1)
    data = None if isinstance(layer, (nn.Embedding, QuantizedEmbedding)) else moments
    # Groups never span rows: a block of rows at a time (a language model's head is 32,000 rows).
    whole = granularity == "tensor" or groups > 1
    codes = torch.empty(out, per_row, dtype=torch.uint8, device=_stored(layer).device)
    scales, zeros, masks = [], [], []
    for rows in [slice(0, out)] if whole else row_blocks(out, per_row):
        matrix, mask = _weight_and_mask(layer, rows)
        cost = clip_weights(data, matrix, groups)
        values = matrix if mask is None else matrix.masked_fill(~mask, torch.nan)
        blocks = (1, -1) if granularity == "tensor" else (-1, size)
        scale, zero, block_codes = _affine_grid(values.reshape(blocks), cost.reshape(blocks), bits, symmetric)
        codes[rows] = block_codes.reshape(-1, per_row)
        scales.append(scale)
        zeros.append(zero)
        masks.append(mask)
    mask = torch.cat(masks) if masks[0] is not None else None
    module = quantized_like(layer, scheme="symmetric" if symmetric else "asymmetric", bits=bits, group_size=size,
                            per_tensor=granularity == "tensor", masked=mask is not None)
    tensors = {"scale": torch.cat(scales)} if symmetric else \
        {"scale": torch.cat(scales), "zero_point": torch.cat(zeros).to(torch.uint8)}
    return _finish(module, layer, codes, mask, **tensors)


# ---- codebook quantizers ------------------------------------------------------------------------------------------

def _codebook_module(layer: nn.Module, codebook: torch.Tensor, codes: torch.Tensor, rows: int,
                     mask: torch.Tensor | None) -> nn.Module:
    levels = codebook.shape[1]
    module = quantized_like(layer, scheme="codebook", bits=max(1, math.ceil(math.log2(levels))), levels=levels,
                            codebook_rows=rows, masked=mask is not None)
    return _finish(module, layer, codes, mask, codebook=codebook)


def quantize_factors(module: nn.Module, bits: int) -> nn.Module:
    """``module`` with every Linear/Conv2d factor replaced by its ``bits``-bit uniform quantization (per channel)."""
    for child_name, child in list(module.named_children()):
        if type(child) in (nn.Linear, nn.Conv2d):
            setattr(module, child_name, uniform(child, bits=bits))
        else:
            quantize_factors(child, bits)
    return module
