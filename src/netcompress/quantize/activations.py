"""Static activation quantization: one integer grid per layer input, calibrated on the target sample.

``nc.Uniform(bits=8, activations=8)`` (``w8a8``), ``nc.GPTQ(bits=4, group_size=128, activations=8)``
(``w4a8``), ...: the weights are quantized as the weight method says, and the layer's input is
rounded onto a fixed grid before the product, the grid chosen from the input values the
statistics pass saw (:mod:`netcompress.stats.ranges`). That is what TFLite, ONNX Runtime's
``quantize_static`` and NNCF deploy on CPUs and phones: integer products need both operands in
integers, and a fixed grid needs no pass over the tensor at run time.

The clip of the grid (``activation_clip``):

* ``"minmax"``: the largest values seen;
* ``"percentile"``: the magnitude below which 99.99 % of the values lie (Migacz, GTC 2017);
* ``"mse"``: the fraction of the min/max range with the least mean squared rounding-plus-clipping
  error on the fitted samples (Banner, Nahshan and Soudry, NeurIPS 2019: the MSE-optimal clip);
* ``"auto"`` (default): each of the three, fitted on the fitted samples, judged on the **held-out**
  samples' histogram; the least held-out error is kept, per layer.

``activation_symmetric=False`` (default) spans ``[min, max]`` with a zero point (after a ReLU the
values are all positive, and a symmetric grid would waste half its codes); ``True`` centres the grid
on zero with no zero point. The grid is per tensor: one scale for all of a layer's inputs, as
integer kernels need (per-token grids are dynamic quantization, not this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from netcompress.quantize.modules import input_codes
from netcompress.stats.moments import Moments, output_energy
from netcompress.stats.ranges import clip_error, percentile

__all__ = ["ACTIVATION_CLIPS", "ACTIVATION_KEYS", "STATIC_INPUTS", "InputGrid", "calibrate_inputs",
           "check_activation_settings", "input_grid", "input_noise_errors"]

ACTIVATION_CLIPS = ("auto", "minmax", "percentile", "mse")
ACTIVATION_KEYS = ("activations", "activation_clip", "activation_symmetric")
PERCENTILE = 0.9999
MSE_FRACTIONS = tuple(1.0 - 0.0125 * i for i in range(76))  # 1.0 down to 0.0625 of the min/max range


@dataclass(frozen=True)
class InputGrid:
    """One input tensor's grid: ``x ≈ (q − zero_point)·scale``, ``q`` in ``[quant_min, quant_max]``."""

    scale: float
    zero_point: int
    quant_min: int
    quant_max: int
    clip: str  # which clip was kept ("minmax", "percentile", "mse")
    error: float  # its mean squared error per value on the samples it was judged on
    judged_on: str  # "held-out" or "fitted"


def check_activation_settings(activations: object, clip: object, symmetric: object) -> None:
    """Refuse activation settings that name no grid, before any pass over data."""
    if activations is None:
        return
    if isinstance(activations, bool) or not isinstance(activations, int) or not 2 <= activations <= 8:
        raise ValueError(f"activations is the input code width, 2 to 8 bits (8: w8a8), got {activations!r}")
    if clip not in ACTIVATION_CLIPS:
        raise ValueError(f"activation_clip must be one of {', '.join(ACTIVATION_CLIPS)}, got {clip!r}")
    if not isinstance(symmetric, bool):
        raise ValueError(f"activation_symmetric must be True or False, got {symmetric!r}")


def _span(moments: Moments, clip: str, symmetric: bool, levels: int) -> tuple[float, float]:
    """``[low, high]`` of the grid ``clip`` fits on ``moments``' histogram (it always holds zero)."""
    histogram, peaks = moments.input_histogram, moments.input_peaks
    high, low = float(peaks[0]), -float(peaks[1])
    if symmetric:
        high = max(high, -low)
        low = -high
    if clip == "percentile":
        cut = percentile(histogram, peaks, PERCENTILE)
        high, low = min(high, cut), max(low, -cut)
    elif clip == "mse":
        fraction = min(MSE_FRACTIONS, key=lambda f: clip_error(histogram, f * low, f * high, levels))
        high, low = fraction * high, fraction * low
    return min(low, 0.0), max(high, 0.0)


def _grid(low: float, high: float, bits: int, symmetric: bool) -> tuple[float, int]:
    quant_min, quant_max = input_codes(bits, symmetric)
    if symmetric:
        scale = max(high, -low) / quant_max
        return (scale if scale > 0 else 1.0), 0
    scale = (high - low) / (quant_max - quant_min)
    if not scale > 0:
        return 1.0, 0
    return scale, int(min(max(round(-low / scale), quant_min), quant_max))


def _error(moments: Moments, scale: float, zero: int, bits: int, symmetric: bool) -> float:
    quant_min, quant_max = input_codes(bits, symmetric)
    return clip_error(moments.input_histogram, (quant_min - zero) * scale, (quant_max - zero) * scale,
                      quant_max - quant_min + 1)


def input_grid(name: str, fitted: Moments, heldout: Moments | None, bits: int, clip: str = "auto",
               symmetric: bool = False) -> InputGrid:
    """The grid for layer ``name``'s input: ``clip`` fitted on ``fitted``, ``"auto"`` judged on ``heldout``."""
    if fitted.input_histogram.numel() == 0 or float(fitted.input_histogram.sum()) == 0:
        raise ValueError(f"layer {name!r}: its input range was never observed (statistics without input "
                         "histograms, or no samples reached it); collect statistics again with data that reaches it")
    judge = heldout if heldout is not None and heldout.input_histogram.numel() \
        and float(heldout.input_histogram.sum()) > 0 else fitted
    where = "held-out" if judge is heldout else "fitted"
    quant_min, quant_max = input_codes(bits, symmetric)
    levels = quant_max - quant_min + 1
    tried = ACTIVATION_CLIPS[1:] if clip == "auto" else (clip,)
    best: InputGrid | None = None
    for kind in tried:
        scale, zero = _grid(*_span(fitted, kind, symmetric, levels), bits, symmetric)
        error = _error(judge, scale, zero, bits, symmetric)
        if best is None or error < best.error:
            best = InputGrid(scale, zero, quant_min, quant_max, kind, error, where)
    assert best is not None and math.isfinite(best.scale)
    return best


def with_input_noise(relative: float | None, old_weight: torch.Tensor, old_bias: torch.Tensor | None,
                     new_weight: torch.Tensor, moments: Moments | None, mse: float) -> float | None:
    """The relative output error of a layer whose input is also rounded, from the weights' own error.

    ``‖Y − Ŷ‖² ≈ ‖(W − Ŵ)X‖² + n·σ²·‖Ŵ‖²_F``: the input grid's error ``e = x − q(x)`` taken as
    noise of variance ``σ²`` (its mean squared error per value, :attr:`InputGrid.error`),
    independent of ``x`` and between inputs, over the ``n`` input rows of ``moments``. An
    estimate (clipped values are neither), written beside the whole model's measured fidelity.
    """
    if relative is None or moments is None or not moments.count:
        return relative
    weight = old_weight.to(torch.float64).reshape(old_weight.shape[0], -1)
    bias = None if old_bias is None else old_bias.to(torch.float64)
    energy = output_energy(weight.to(moments.gram.device), None if bias is None else bias.to(moments.gram.device),
                           moments)
    if not energy > 0:
        return relative
    noise = moments.count * mse * float(new_weight.to(torch.float64).square().sum())
    return math.sqrt(relative * relative + noise / energy)


def calibrate_inputs(name: str, new: torch.nn.Module, stats, inputs: dict) -> InputGrid:
    """Give the quantized layer ``new`` its static input grid from layer ``name``'s statistics; the grid."""
    if not hasattr(new, "quantize_inputs"):
        raise ValueError(f"{type(new).__name__} has no input grid; activations= needs a quantized weight layer")
    if getattr(new, "codebook", None) is not None:
        raise ValueError("activations= goes with integer-grid weights (uniform, gptq), not codebooks")
    bits, symmetric = inputs["activations"], inputs.get("activation_symmetric", False)
    heldout = stats.heldout.layers.get(name) if stats.heldout is not None else None
    grid = input_grid(name, stats[name], heldout, bits, inputs.get("activation_clip", "auto"), symmetric)
    new.quantize_inputs(bits, symmetric)
    new.set_input_grid(grid.scale, grid.zero_point)
    return grid


def input_noise_errors(old: torch.nn.Module, new: torch.nn.Module, stats, name: str, grid: InputGrid,
                       in_sample: float | None, held: float | None) -> tuple[float | None, float | None]:
    """The row's in-sample and held-out errors with the input grid's noise added (:func:`with_input_noise`)."""
    from netcompress._core.layers import plain_layer
    from netcompress._core.tensors import plain_bias, weight_rows

    plain = plain_layer(old)
    bias = plain_bias(plain)
    weight, new_weight = weight_rows(plain, slice(None)).detach(), new.weight.detach()
    bias = None if bias is None else bias.detach()
    fitted_error = _error(stats[name], grid.scale, grid.zero_point, new.input_bits, new.input_symmetric)
    heldout = stats.heldout.layers.get(name) if stats.heldout is not None else None
    return (with_input_noise(in_sample, weight, bias, new_weight, stats[name], fitted_error),
            with_input_noise(held, weight, bias, new_weight, heldout, grid.error if grid.judged_on == "held-out"
                             else fitted_error))


class _StaticInputs:
    """The input stage of the weight quantizers (``Method.inputs``): the settings it owns and its two steps."""

    keys = ACTIVATION_KEYS
    calibrate = staticmethod(calibrate_inputs)
    errors = staticmethod(input_noise_errors)


STATIC_INPUTS = _StaticInputs()
