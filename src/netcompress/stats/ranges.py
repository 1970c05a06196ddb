"""What a layer's inputs span on the target data: a streaming log histogram of their values.

Static activation quantization (TFLite, ONNX Runtime ``quantize_static``, NNCF) fixes one grid
per input tensor from a few hundred target samples. The grid's clip is chosen from how the
values are spread, not only from their extremes: a single outlier sets the min/max grid and
wastes most of the codes on it (Banner, Nahshan and Soudry, "Post training 4-bit quantization
of convolutional networks for rapid-deployment", NeurIPS 2019; Migacz, "8-bit inference with
TensorRT", GTC 2017).

The pass keeps, per layer, the largest positive and negative input value and a histogram of
``|x|`` on a logarithmic grid (:data:`PER_OCTAVE` bins per octave from 2^:data:`LOW_EXPONENT`
to 2^:data:`HIGH_EXPONENT`), one row for positive and one for negative values. Both stream:
histograms of batches add, extremes take the max, and any clip can be priced afterwards from
them (:func:`clip_error`), on the fitted samples or on the held-out ones.
"""

from __future__ import annotations

import torch

__all__ = ["BINS", "HIGH_EXPONENT", "LOW_EXPONENT", "PER_OCTAVE", "bin_centres", "clip_error", "empty_histogram",
           "fold_values", "percentile"]

LOW_EXPONENT, HIGH_EXPONENT, PER_OCTAVE = -24, 24, 16
# bin 0: |x| below 2^LOW_EXPONENT (zeros included); bins 1 … hold one 16th of an octave each; the last one what is above
BINS = (HIGH_EXPONENT - LOW_EXPONENT) * PER_OCTAVE + 2
FOLD_ELEMENTS = 1 << 24  # values binned at a time (float32 temporaries of ~64 MB at most)


def empty_histogram(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(counts of shape (2, BINS): positive then negative values; peaks (2,): max x and max −x), zeros."""
    return torch.zeros(2, BINS, dtype=torch.float64, device=device), torch.zeros(2, dtype=torch.float64, device=device)


def fold_values(histogram: torch.Tensor, peaks: torch.Tensor, x: torch.Tensor) -> None:
    """Add every value of ``x`` to ``histogram`` and ``peaks`` in place."""
    flat = x.detach().reshape(-1)
    for start in range(0, flat.numel(), FOLD_ELEMENTS):
        chunk = flat[start:start + FOLD_ELEMENTS].float()
        if chunk.numel() == 0:
            continue
        peaks[0] = torch.maximum(peaks[0], chunk.max().to(peaks.dtype).clamp_min(0))
        peaks[1] = torch.maximum(peaks[1], (-chunk.min()).to(peaks.dtype).clamp_min(0))
        magnitude = chunk.abs()
        index = ((magnitude.log2() - LOW_EXPONENT) * PER_OCTAVE).floor_().add_(1).clamp_(0, BINS - 1)
        index = torch.where(magnitude > 0, index, torch.zeros_like(index)).long()
        index += (chunk < 0).long() * BINS
        histogram += torch.bincount(index, minlength=2 * BINS).reshape(2, BINS).to(histogram.dtype)


def bin_centres(device: torch.device | str = "cpu") -> torch.Tensor:
    """The magnitude each bin stands for (geometric centre; 0 for bin 0, 2^HIGH_EXPONENT for the last)."""
    k = torch.arange(BINS, dtype=torch.float64, device=device)
    centres = torch.exp2((k - 0.5) / PER_OCTAVE + LOW_EXPONENT)
    centres[0] = 0.0
    centres[-1] = 2.0 ** HIGH_EXPONENT
    return centres


def percentile(histogram: torch.Tensor, peaks: torch.Tensor, share: float) -> float:
    """The magnitude below which ``share`` of all values' magnitudes lie (upper bin edge, at most the peak)."""
    counts = histogram.sum(0)
    total = float(counts.sum())
    if total == 0:
        return 0.0
    cumulative = counts.cumsum(0)
    k = int(torch.searchsorted(cumulative, torch.tensor(share * total, dtype=cumulative.dtype,
                                                         device=cumulative.device)))
    edge = 0.0 if k == 0 else 2.0 ** (k / PER_OCTAVE + LOW_EXPONENT)
    return min(edge, float(peaks.max()))


def clip_error(histogram: torch.Tensor, low: float, high: float, levels: int) -> float:
    """Mean squared error per value of rounding onto ``levels`` evenly spaced codes spanning ``[low, high]``.

    Zero is a code (the grids hold it exactly), so values within half a step of it round to zero
    (error ``x²``); the other values inside the range are rounded with error ``Δ²/12`` each
    (``Δ = (high − low)/(levels − 1)``, the uniform-noise model that holds when the grid is fine
    against the spread); values outside are clipped to the nearest end (their squared distance to
    it). Each bin's values are taken at its centre.
    """
    total = float(histogram.sum())
    if total == 0:
        return 0.0
    step = (high - low) / max(levels - 1, 1)
    centres = bin_centres(histogram.device)
    rounded = torch.where(centres < step / 2, centres.square(), torch.full_like(centres, step * step / 12.0))
    error = 0.0
    for counts, end in ((histogram[0], high), (histogram[1], -low)):  # a negative value −c lies below low if c > −low
        error += float((counts * torch.where(centres <= end, rounded, (centres - end).square())).sum())
    return error / total
