"""Nested rank-``k`` factorizations of Linear and Conv2d layers, and their output errors.

A layer ``y = Wx + b`` (``W``: out × in, for a Conv2d the im2col view
out × in·kh·kw) is replaced by two maps ``y ≈ A(Bx) + b̂`` of rank ``k``.
Every method (:mod:`.svd`, :mod:`.dalr`) returns a :class:`Factorization` holding the
factors up to some rank, so one decomposition serves a whole sweep of ranks, and the exact
output error of each rank on the target statistics comes from cumulative sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from netcompress.lowrank.modules import build_low_rank
from netcompress.stats.moments import Moments, output_energy

__all__ = ["Factorization", "layer_matrix"]

# What every matrix factorization registers with (see :func:`netcompress.register`).
_LOW_RANK = {"family": "lowrank", "needs_stats": True, "example": {"rank": 2}}


def layer_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, in) float64 matrix; for a Conv2d its im2col view."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(
                f"Conv2d with groups={layer.groups} cannot be factorized as one matrix; "
                "exclude it with layers=[...]"
            )
        return layer.weight.detach().reshape(layer.out_channels, -1).to(torch.float64)
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().to(torch.float64)
    raise ValueError(f"a {type(layer).__name__} cannot be factorized; only nn.Linear and nn.Conv2d can")


@dataclass
class Factorization:
    """Nested rank-``k`` approximations ``Ŵ_k = A[:, :k] B[:k]`` of one layer.

    ``A`` has orthogonal columns, which makes the output error of every rank a
    cumulative sum (see :meth:`output_error`). With ``compensate_bias`` the bias
    becomes ``b̂ = b + (W − Ŵ_k) x̄`` and errors are measured around the mean input.
    """

    layer: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    A: torch.Tensor
    B: torch.Tensor
    moments: Moments
    compensate_bias: bool
    weighted_trace: float  # tr(W Q Wᵀ), Q the (centred, with bias compensation) second moment
    Q: torch.Tensor  # that second moment, shrunk towards a scaled identity when samples are few
    # In sequential compression ``weight`` is the map from the layer's own inputs that the
    # factors approximate, and the error is measured against the original layer on the
    # original inputs (``moments.reference``): its weight and bias are kept here.
    original: tuple[torch.Tensor, torch.Tensor | None] | None = None
    _errors: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def output_energy(self) -> float:
        """``Σ ||W x + b||² = tr(W XXᵀ Wᵀ) + 2 bᵀ W Σx + n ||b||²`` over the target samples."""
        if self.original is not None:
            return _reference_energy(*self.original, self.moments)
        m, W, b = self.moments, self.weight, self.bias
        energy = self.weighted_trace
        if self.compensate_bias:  # tr(W XXᵀ Wᵀ) = tr(W C Wᵀ) + n ||W x̄||²
            energy += m.count * float((W @ m.mean_input).pow(2).sum())
        if b is not None:
            energy += 2 * float(b @ (W @ m.input_sum)) + m.count * float(b @ b)
        return energy

    @property
    def max_rank(self) -> int:
        return self.A.shape[1]

    @property
    def full_rank(self) -> int:
        return min(self.weight.shape)

    def params_before(self) -> int:
        return sum(p.numel() for p in self.layer.parameters())

    def params_after(self, rank: int) -> int:
        out_features, in_features = self.weight.shape
        has_bias = self.bias is not None or self.compensate_bias
        return rank * (in_features + out_features) + (out_features if has_bias else 0)

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(A_k, B_k, b̂)`` in float64."""
        self._check_rank(rank)
        A, B = self.A[:, :rank], self.B[:rank]
        bias = self.bias
        if self.compensate_bias:
            residual = self.weight - A @ B
            bias = (bias if bias is not None else 0) + residual @ self.moments.mean_input
        return A, B, bias

    def module(self, rank: int) -> nn.Module:
        """The replacement module of this rank, in the layer's dtype and device."""
        A, B, bias = self.factors(rank)
        module = build_low_rank(self.layer, rank, bias is not None)
        with torch.no_grad():
            module.down.weight.copy_(B.reshape(module.down.weight.shape))
            module.up.weight.copy_(A.reshape(module.up.weight.shape))
            if bias is not None:
                module.up.bias.copy_(bias)
        return module

    def output_error(self) -> torch.Tensor:
        """``Σ ||y − ŷ_k||²`` over the target samples for ``k = 0 … max_rank`` (float64).

        With ``D = W − A_k B_k`` the error is ``tr(D Q Dᵀ)``, ``Q`` the (centred, with
        bias compensation) second moment. Orthogonal columns of ``A`` split it into
        ``tr(WQWᵀ) − Σ_i 2 a_iᵀWQb_i − ||a_i||² b_iᵀQb_i``.
        """
        if self._errors is None:
            self._errors = self._reference_errors(self.moments) if self.original is not None else self._output_error()
        return self._errors

    def _reference_errors(self, moments: Moments) -> torch.Tensor:
        """``Σ ||y − ŷ_k||²`` for every rank, ``y = Wx + b`` on the original inputs, ``ŷ_k`` on the layer's own.

        With bias compensation both inputs are taken around the fitted means (``b̂`` absorbs
        them), without it the bias is unchanged and cancels; then with ``G = Σxxᵀ``,
        ``M = Σx x̃ᵀ``, ``H = Σx̃x̃ᵀ`` and orthogonal columns of ``A``:
        ``tr(WGWᵀ) − Σ_{i≤k} (2 a_iᵀ W M b_i − ||a_i||² b_iᵀ H b_i)``.
        """
        fitted = self.moments if self.compensate_bias else None
        M, H = _products_about(moments, fitted)
        W = self.original[0]
        gains = 2 * ((self.A.T @ (W @ M)) * self.B).sum(1) - self.A.pow(2).sum(0) * ((self.B @ H) * self.B).sum(1)
        start = torch.tensor([_original_trace(W, moments, fitted)], dtype=W.dtype, device=W.device)
        return (start - torch.cat([torch.zeros_like(start), gains.cumsum(0)])).clamp_min(0)

    def _output_error(self, Q: torch.Tensor | None = None) -> torch.Tensor:
        # Summed from the full computed rank backwards, starting from the error measured
        # directly there: a forward cumulative sum from tr(WQWᵀ) loses the small errors of
        # high ranks to cancellation.
        Q = self.Q if Q is None else Q
        BQ = self.B @ Q
        cross = ((self.A.T @ self.weight) * BQ).sum(1)
        own = self.A.pow(2).sum(0) * (self.B * BQ).sum(1)
        D = self.weight - self.A @ self.B
        last = ((D @ Q) * D).sum().clamp_min(0).reshape(1)
        gains = 2 * cross - own
        tail = torch.cat([gains.flip(0).cumsum(0).flip(0), torch.zeros_like(last)])
        return (tail + last).clamp_min(0)

    def relative_error_on(self, moments: Moments) -> torch.Tensor:
        """``||Y − Ŷ_k||² / ||Y||²`` for ``k = 0 … max_rank`` on other samples, e.g. held-out ones.

        Nothing is refitted: the factors (and, with bias compensation, the bias computed from
        the fitted mean ``x̄``) are those of this factorization, so ``Ŷ_k − Y = D_k (x − c)``
        with ``c = x̄`` or 0, and the error is ``tr(D_k G_c D_kᵀ)``, ``G_c = Σ(x − c)(x − c)ᵀ``.
        """
        moments = moments.to(self.weight.device)
        _check_moments(self.weight, moments)
        if self.original is not None:
            energy = _reference_energy(*self.original, moments)
            errors = self._reference_errors(moments)
            return errors / energy if energy > 0 else torch.zeros_like(errors)
        G = moments.gram
        if self.compensate_bias:
            c, s = self.moments.mean_input, moments.input_sum
            G = G - torch.outer(c, s) - torch.outer(s, c) + moments.count * torch.outer(c, c)
        energy = output_energy(self.weight, self.bias, moments)
        errors = self._output_error(G)
        return errors / energy if energy > 0 else torch.zeros_like(errors)

    def relative_error(self, rank: int) -> float:
        """``||Y − Ŷ||_F / ||Y||_F`` on the target statistics (``Y`` includes the bias)."""
        self._check_rank(rank)
        error = self.output_error()[rank].item()
        return (error / self.output_energy) ** 0.5 if self.output_energy > 0 else 0.0

    def _check_rank(self, rank: int) -> None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if rank > self.max_rank:
            raise ValueError(f"rank {rank} exceeds the {self.max_rank} factors computed; factorize with a larger rank")


def _checked_rank(layer: nn.Module, weight: torch.Tensor, rank: int) -> int:
    limit = min(weight.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank {rank!r} is not a positive integer")
    if rank > limit:
        raise ValueError(f"rank {rank} exceeds min(out, in) = {limit} of this {type(layer).__name__}")
    return rank


def _check_moments(weight: torch.Tensor, moments: Moments) -> None:
    if not torch.isfinite(weight).all():
        raise ValueError("the layer has NaN or Inf weights; fix the model before compressing it")
    if moments.gram.dim() != 2 or moments.gram.shape[0] != weight.shape[1]:
        raise ValueError(
            f"the statistics have {moments.gram.shape[0]} input features but the layer has {weight.shape[1]}; "
            "collect them on this layer"
        )


def _layer_bias(layer: nn.Module) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach().to(torch.float64)


def _targets(layer: nn.Module, W: torch.Tensor, fitted: torch.Tensor, moments: Moments, compensate: bool
             ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor | None] | None]:
    """The bias the factorization starts from, and (sequentially) the original layer it is measured against.

    On the layer's own inputs the bias is the layer's. Sequentially, bias compensation must also
    carry the shift of the mean input: ``b̂ = b + W x̄ − Ŵ x̃̄``, which the factorization's
    ``b' + (F − Ŵ) x̃̄`` gives with ``b' = b + W x̄ − F x̃̄`` (``F`` the map it factors).
    """
    bias = _layer_bias(layer)
    if moments.reference is None:
        return bias, None
    start = bias
    if compensate:
        start = (bias if bias is not None else 0) + W @ moments.reference_mean - fitted @ moments.mean_input
    return start, (W, bias)


def _reference_energy(W: torch.Tensor, b: torch.Tensor | None, moments: Moments) -> float:
    """``Σ ||W x + b||²`` over the original inputs ``x`` of ``moments`` (``W`` the layer they were gathered on)."""
    energy = float(moments.reference.energy)
    if b is not None:
        energy += 2 * float(b @ (W @ moments.reference.input_sum)) + moments.count * float(b @ b)
    return energy


def _original_trace(W: torch.Tensor, moments: Moments, fitted: Moments | None) -> float:
    """``tr(W G Wᵀ)``, ``G = Σxxᵀ`` of the original inputs, or with ``fitted`` ``Σ(x − c)(x − c)ᵀ``, ``c`` its mean.

    ``Σ‖W(x − c)‖² = Σ‖Wx‖² − 2 (Wc)ᵀ(WΣx) + n‖Wc‖²``: from what the statistics keep of ``x``.
    """
    trace = float(moments.reference.energy)
    if fitted is None:
        return trace
    Wc, Ws = W @ fitted.reference_mean, W @ moments.reference.input_sum
    return trace - 2 * float(Wc @ Ws) + moments.count * float(Wc @ Wc)


def _products_about(moments: Moments, fitted: Moments | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σxx̃ᵀ, Σx̃x̃ᵀ)`` of ``moments``; with ``fitted``, of ``x − x̄`` and ``x̃ − x̃̄`` (its means)."""
    if fitted is None:
        return moments.cross, moments.gram
    c, d, n = fitted.reference_mean, fitted.mean_input, moments.count

    def about(product: torch.Tensor, left_sum: torch.Tensor, right_sum: torch.Tensor, u: torch.Tensor,
              v: torch.Tensor) -> torch.Tensor:  # Σ(a − u)(b − v)ᵀ
        return product - torch.outer(u, right_sum) - torch.outer(left_sum, v) + n * torch.outer(u, v)

    return (about(moments.cross, moments.reference.input_sum, moments.input_sum, c, d),
            about(moments.gram, moments.input_sum, moments.input_sum, d, d))
