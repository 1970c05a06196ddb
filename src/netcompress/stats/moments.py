"""The target statistics of one layer (``XXᵀ``, ``Σx``, responses) and the output error they measure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from netcompress._core.tensors import row_blocks

__all__ = [
    "Moments",
    "OriginalInputs",
    "output_energy",
    "relative_output_error",
]


@dataclass
class OriginalInputs:
    """What sequential compression keeps of the inputs ``x`` the original network gives a layer.

    Every error against the original outputs ``y = W x + b`` needs of them only ``Σx`` and
    ``Σ‖W x‖² = tr(W XXᵀ Wᵀ)`` for the layer's own original weight ``W``; their ``XXᵀ`` would
    be one more d×d float64 matrix per layer, in fit and held-out parts, and the largest input's
    matrices are what bounds the memory of a block-by-block pass.
    """

    input_sum: torch.Tensor
    energy: torch.Tensor  # Σ‖W x‖² (float64, 0-d), the outputs' energy without the bias

    @classmethod
    def empty(cls, in_features: int) -> OriginalInputs:
        return cls(torch.zeros(in_features, dtype=torch.float64), torch.zeros((), dtype=torch.float64))


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
    # Sequential compression (GPTQ-style) feeds a layer the inputs x̃ of the already compressed
    # layers before it; its target stays the original network's output. ``reference`` holds what
    # the error needs of the inputs x the original network gives the layer on the same samples,
    # and ``cross`` is ``Σ x x̃ᵀ``; both are None when the inputs are the original ones.
    reference: OriginalInputs | None = None
    cross: torch.Tensor | None = None
    # The spread of the input values themselves (:mod:`netcompress.stats.ranges`): a log histogram of
    # positive and negative values, shape (2, BINS), and the peaks (max x, max −x); what static
    # activation quantization calibrates its grid on. Empty (numel 0) where no pass recorded them.
    input_histogram: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    input_peaks: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

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

    @classmethod
    def from_saved(cls, fields: dict[str, torch.Tensor], where: str) -> Moments:
        """Statistics read back from a file: every tensor's presence, shape and finiteness checked (``where`` names it)."""
        expected = {"gram", "input_sum", "positive_count", "response_sum", "response_max", "norm4", "counts"}
        ranges = {"input_histogram", "input_peaks"}  # absent from files written before they were recorded
        if set(fields) - ranges != expected or len(set(fields) & ranges) == 1:
            raise ValueError(f"{where} is corrupt: it must hold {', '.join(sorted(expected))}, "
                             f"got {', '.join(sorted(fields))}")
        counts = fields["counts"]
        if counts.shape != (3,) or counts.is_floating_point() or bool((counts < 0).any()):
            raise ValueError(f"{where} is corrupt: 'counts' must be 3 non-negative integers")
        count, output_count, groups = (int(v) for v in counts)
        gram, outputs = fields["gram"], fields["positive_count"].shape
        per_group = gram.shape[-1] if gram.dim() in (2, 3) else -1
        shapes = {"gram": (per_group, per_group) if groups == 1 else (groups, per_group, per_group),
                  "input_sum": (groups * per_group,), "norm4": (), "response_sum": outputs, "response_max": outputs}
        for key, shape in shapes.items():
            tensor = fields[key]
            if groups < 1 or len(outputs) != 1 or tuple(tensor.shape) != tuple(shape) or tensor.dtype != torch.float64 \
                    or not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{where} is corrupt: {key!r} must be finite float64 of shape {tuple(shape)}, got "
                                 f"{tensor.dtype} of shape {tuple(tensor.shape)}")
        if "input_histogram" in fields:
            _check_ranges(fields["input_histogram"], fields["input_peaks"], where)
        rest = {k: v for k, v in fields.items() if k != "counts"}
        return cls(**rest, count=count, output_count=output_count, groups=groups)

    @classmethod
    def white(cls, in_features: int, out_features: int) -> Moments:
        """Statistics of ``n`` white inputs (zero mean, unit variance: ``XXᵀ = nI``, ``n`` the input width).

        What data-free methods are measured on: ``relative_output_error`` then reads
        ``‖W − Ŵ‖_F / (‖W‖²_F + ‖b‖²)^½`` for a layer that keeps its bias (``tr(D XXᵀ Dᵀ) = n‖D‖²_F``).
        """
        moments = cls.empty(in_features, out_features)
        moments.gram = torch.eye(in_features, dtype=torch.float64) * in_features
        moments.count = in_features
        return moments

    def to(self, device: torch.device) -> Moments:
        """These statistics on ``device`` (itself when already there)."""
        if self.gram.device == torch.device(device):
            return self
        fields = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        if self.reference is not None:
            fields["reference"] = OriginalInputs(self.reference.input_sum.to(device), self.reference.energy.to(device))
        return Moments(**fields)

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
        own = [
            (self.gram, "sum"),
            (self.input_sum, "sum"),
            (self.positive_count, "sum"),
            (self.response_sum, "sum"),
            (self.response_max, "max"),
            (self.norm4, "sum"),
            (self.input_histogram, "sum"),
            (self.input_peaks, "max"),
        ]
        if self.reference is None:
            return own
        return own + [(self.cross, "sum"), (self.reference.input_sum, "sum"), (self.reference.energy, "sum")]

    @property
    def reference_mean(self) -> torch.Tensor:
        """``x̄``, the mean of the original network's inputs (sequential compression)."""
        return self.reference.input_sum / max(self.count, 1)

    def cross_product(self, centre: bool = False) -> torch.Tensor:
        """``Σ x x̃ᵀ`` of the original inputs ``x`` and the layer's own ``x̃`` (this layer's ``XXᵀ`` without a reference).

        With ``centre`` each input is taken around its mean (``x − x̄``, ``x̃ − x̄̃``), as bias compensation needs.
        """
        if self.reference is None or self.cross is None:
            return self.centered_gram if centre else self.gram
        if not centre:
            return self.cross
        return self.cross - self.count * torch.outer(self.reference_mean, self.mean_input)


def _check_ranges(histogram: torch.Tensor, peaks: torch.Tensor, where: str) -> None:
    from netcompress.stats.ranges import BINS

    fine = (histogram.dtype == peaks.dtype == torch.float64 and tuple(histogram.shape) in ((2, BINS), (0,))
            and tuple(peaks.shape) == ((2,) if histogram.numel() else (0,)) and bool(torch.isfinite(histogram).all())
            and bool(torch.isfinite(peaks).all()) and not bool((histogram < 0).any()) and not bool((peaks < 0).any()))
    if not fine:
        raise ValueError(f"{where} is corrupt: 'input_histogram' and 'input_peaks' must be finite, non-negative "
                         f"float64 of shapes (2, {BINS}) and (2,)")


def output_energy(weight: torch.Tensor, bias: torch.Tensor | None, moments: Moments) -> float:
    """``Σ ||W x + b||² = tr(W XXᵀ Wᵀ) + 2 bᵀ W Σx + n ||b||²`` over the samples of ``moments``.

    ``weight`` is the layer's (out, in) float64 matrix on the statistics' device (a grouped layer's rows
    read their own group's block), ``bias`` its bias or None.
    """
    energy = float((moments.times_gram(weight) * weight).sum())
    if bias is not None:
        energy += 2 * float(bias @ moments.times_sum(weight)) + moments.count * float(bias @ bias)
    return energy


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
    grouped convolution's rows read their own group's block of the statistics. Where the
    statistics hold a reference (sequential compression), the new layer reads its own inputs
    ``x̃`` and is compared with the old one on the original network's inputs ``x``; ``weight``
    and ``bias`` must then be those of the layer the statistics were gathered on (its
    ``Σ‖W x‖²`` is what the statistics keep of ``x``).
    """
    if moments.reference is not None and moments.cross is not None and groups == 1:
        return _error_against_reference(weight, bias, new_weight, new_bias, moments)
    f64, device, n = torch.float64, moments.gram.device, moments.count
    per_row = math.prod(weight.shape[1:])
    error = energy = 0.0
    for rows in _row_blocks(weight, groups):
        W = weight[rows].detach().reshape(-1, per_row).to(device, f64)
        D = W - new_weight[rows].detach().reshape(-1, per_row).to(device, f64)
        b = _vector(bias, rows, W)
        d = b - _vector(new_bias, rows, W)
        error += float((moments.times_gram(D) * D).sum() + 2 * d @ moments.times_sum(D) + n * d @ d)
        energy += float((moments.times_gram(W) * W).sum() + 2 * b @ moments.times_sum(W) + n * b @ b)
    return _ratio(error, energy)


def _row_blocks(weight, groups: int) -> list[slice]:
    """The output rows of a layer in blocks of about ``ROW_BLOCK_ELEMENTS`` (a grouped layer: all at once)."""
    out, per_row = weight.shape[0], math.prod(weight.shape[1:])
    return [slice(0, out)] if groups > 1 else row_blocks(out, per_row)


def _vector(bias: torch.Tensor | None, rows: slice, like: torch.Tensor) -> torch.Tensor:
    """The bias of ``rows`` in float64 (zeros without one)."""
    if bias is None:
        return torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    return bias[rows].detach().to(like.device, like.dtype)


def _ratio(error: float, energy: float) -> float:
    if not (math.isfinite(error) and math.isfinite(energy)):
        raise ValueError("the compressed layer has NaN or Inf weights")
    return (max(error, 0.0) / energy) ** 0.5 if energy > 0 else 0.0


def _error_against_reference(weight: torch.Tensor, bias: torch.Tensor | None, new_weight: torch.Tensor,
                             new_bias: torch.Tensor | None, moments: Moments) -> float:
    """``||Y − Ŷ|| / ||Y||`` with ``Y = W X + b`` on the original inputs and ``Ŷ = Ŵ X̃ + b̂`` on the layer's own.

    ``Σ||y − ŷ||² = Σ||y||² − 2 Σ yᵀŷ + Σ||ŷ||²``, each term from ``tr(W XXᵀ Wᵀ)``, ``XX̃ᵀ``, ``X̃X̃ᵀ`` and the sums.
    """
    f64, device, n = torch.float64, moments.gram.device, moments.count
    per_row = math.prod(weight.shape[1:])
    ref = moments.reference
    energy = float(ref.energy)  # Σ‖W x‖² of ``weight``, the layer the statistics were gathered on
    product = new_energy = 0.0
    for rows in _row_blocks(weight, 1):
        W = weight[rows].detach().reshape(-1, per_row).to(device, f64)
        V = new_weight[rows].detach().reshape(-1, per_row).to(device, f64)
        b, c = _vector(bias, rows, W), _vector(new_bias, rows, W)
        Ws, Vs = W @ ref.input_sum, V @ moments.input_sum
        energy += float(2 * b @ Ws + n * b @ b)
        product += float((W @ moments.cross * V).sum() + b @ Vs + c @ Ws + n * b @ c)
        new_energy += float((V @ moments.gram * V).sum() + 2 * c @ Vs + n * c @ c)
    return _ratio(energy - 2 * product + new_energy, energy)
