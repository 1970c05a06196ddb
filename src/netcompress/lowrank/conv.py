"""Low rank of convolutions as separable stages (seed 003, "Low Rank - Convolution").

* ``jaderberg``: Jaderberg, Vedaldi and Zisserman, "Speeding up convolutional neural networks
  with low rank expansions" (BMVC 2014), scheme 2: a vertical ``kh×1`` convolution to ``r``
  channels, then a horizontal ``1×kw`` convolution to the outputs. Its closed form is the
  truncated SVD of the kernel reshaped to ``(C·kh) × (N·kw)``.
* ``cp``: Lebedev, Ganin, Rakhuba, Oseledets and Lempitsky, "Speeding-up convolutional neural
  networks using fine-tuned CP-decomposition" (ICLR 2015): a ``1×1`` convolution to ``R``
  channels, depthwise ``kh×1`` and ``1×kw`` convolutions, a ``1×1`` back to the outputs; the
  rank-``R`` CP decomposition of the 4-way kernel by alternating least squares (seeded).
* ``jaderberg-dalr``, ``cp-dalr``: the same first stages, and the last factor fitted by least
  squares to the layer's outputs on the target statistics, as DALR (Masana et al., ICCV 2017)
  fits its second factor.

Every scheme computes ``ŷ = A·(P x) + b`` on the layer's im2col patch ``x``: ``P`` (``M × C·kh·kw``,
``per_rank`` rows per rank) is what the first stages compute, ``A`` (``N × M``) the last factor.
Rank ``k`` keeps the first ``k·per_rank`` rows of ``P``. The least-squares last factor of rank
``k`` is ``A_k = W Q P_kᵀ (P_k Q P_kᵀ + ρI)⁻¹``; with the Cholesky factor ``L`` of the whole
``P Q Pᵀ + ρI``, ``A_k P_k = Z_kᵀ (L⁻¹P)_k`` where ``Z = L⁻¹ P Q Wᵀ``: the refitted
approximations of every rank are prefixes of one sum of rank-one terms, like the data-free
ones, so one factorization gives the output error of every rank in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from netcompress._core.description import Entry, conv_fields, describable
from netcompress.lowrank.methods import DEFAULT_LAM, _check_dalr, check_lam, shrunk_second_moment
from netcompress.registry import register
from netcompress.stats.moments import Moments, output_energy

__all__ = [
    "CPConv2d",
    "ConvDecomposition",
    "JaderbergConv2d",
    "cp",
    "cp_dalr",
    "jaderberg",
    "jaderberg_dalr",
]


# --------------------------------------------------------------------------- the layers


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _geometry(layer: nn.Module, in_channels: int, out_channels: int, rank: int, *pairs) -> tuple[tuple[int, int], ...]:
    """Record the original convolution's channels, rank, kernel, stride, padding and dilation on ``layer``; return the pairs."""
    layer.in_channels, layer.out_channels, layer.rank = in_channels, out_channels, rank
    layer.kernel_size, layer.stride, layer.padding, layer.dilation = pairs = tuple(map(_pair, pairs))
    return pairs


@describable
class JaderbergConv2d(nn.Module):
    """``kh×1`` convolution to ``rank`` channels (stride, padding, dilation along the height), then ``1×kw`` (along the width)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), bias: bool = True):
        super().__init__()
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _geometry(self, in_channels, out_channels, rank, kernel_size, stride,
                                                           padding, dilation)
        self.vertical = nn.Conv2d(in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        self.up = nn.Conv2d(rank, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.vertical(x))

    def effective_weight(self, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (out, in·kh·kw) float64 matrix this layer computes with (its ``rows``), and its bias."""
        V = self.vertical.weight.detach().double()[..., 0]  # (rank, C, kh)
        H = self.up.weight.detach().double()[rows][:, :, 0, :]  # (out, rank, kw)
        return torch.einsum("nkj,kci->ncij", H, V).reshape(H.shape[0], -1), self.up.bias

    def describe(self) -> dict:
        return {**conv_fields(self), "rank": self.rank, "bias": self.up.bias is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> JaderbergConv2d:
        args = entry.conv_args()
        kh, kw = args["kernel_size"]
        rank = entry.integer("rank")
        if rank > min(args["in_channels"] * kh, args["out_channels"] * kw):
            raise entry.fail(f"field 'rank' {rank} exceeds min(C·kh, N·kw)")
        return cls(**args, rank=rank, bias=entry.flag("bias"))


@describable
class CPConv2d(nn.Module):
    """``1×1`` to ``rank`` channels, depthwise ``kh×1`` and ``1×kw`` (the original stride, padding, dilation), ``1×1`` to the outputs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), bias: bool = True):
        super().__init__()
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _geometry(self, in_channels, out_channels, rank, kernel_size, stride,
                                                           padding, dilation)
        self.pointwise = nn.Conv2d(in_channels, rank, 1, bias=False)
        self.vertical = nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=rank, bias=False)
        self.horizontal = nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), (1, dw), groups=rank, bias=False)
        self.up = nn.Conv2d(rank, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.horizontal(self.vertical(self.pointwise(x))))

    def effective_weight(self, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (out, in·kh·kw) float64 matrix this layer computes with (its ``rows``), and its bias."""
        A = self.up.weight.detach().double()[rows][:, :, 0, 0]  # (out, rank)
        P = self.pointwise.weight.detach().double()[:, :, 0, 0]  # (rank, C)
        v = self.vertical.weight.detach().double()[:, 0, :, 0]  # (rank, kh)
        h = self.horizontal.weight.detach().double()[:, 0, 0, :]  # (rank, kw)
        return torch.einsum("nr,rc,ri,rj->ncij", A, P, v, h).reshape(A.shape[0], -1), self.up.bias

    def describe(self) -> dict:
        return {**conv_fields(self), "rank": self.rank, "bias": self.up.bias is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> CPConv2d:
        args = entry.conv_args()
        rank = entry.integer("rank")
        entry.refuse_larger(rank * (args["in_channels"] + args["out_channels"] + sum(args["kernel_size"])),
                            "this CP decomposition")
        return cls(**args, rank=rank, bias=entry.flag("bias"))


# --------------------------------------------------------------------------- the decompositions


def _params_per_rank(kind: str, layer: nn.Conv2d) -> int:
    (kh, kw), c, n = layer.kernel_size, layer.in_channels, layer.out_channels
    return c * kh + n * kw if kind == "jaderberg" else c + kh + kw + n


def _largest_rank(kind: str, layer: nn.Conv2d) -> int:
    """The rank at which the decomposition can be exact: the reshaped kernel's (Jaderberg), a CP rank that always suffices."""
    (kh, kw), c, n = layer.kernel_size, layer.in_channels, layer.out_channels
    if kind == "jaderberg":
        return min(c * kh, n * kw)
    return math.prod(sorted((n, c, kh, kw))[:3])


def rank_cost(kind: str):
    """``(parameters per rank, largest rank)`` of a Conv2d for the family's sizing."""
    return lambda layer: (_params_per_rank(kind, layer), _largest_rank(kind, layer))


@dataclass
class ConvDecomposition:
    """Nested rank-``k`` separable approximations of one convolution, and their output errors.

    ``first`` (``M × C·kh·kw``) holds the first stages' map, ``per_rank`` rows per rank;
    ``stages`` their own weights, rank-major; ``last`` (``N × M``) the last factor at the
    largest rank (data-free), or ``None`` when it is refitted for each rank from ``cholesky``
    and ``projected`` (see the module docstring).
    """

    kind: str  # "jaderberg" or "cp"
    layer: nn.Conv2d
    weight: torch.Tensor  # (N, C·kh·kw) float64
    bias: torch.Tensor | None
    moments: Moments
    first: torch.Tensor
    stages: tuple[torch.Tensor, ...]
    per_rank: int
    last: torch.Tensor | None = None
    cholesky: torch.Tensor | None = None
    projected: torch.Tensor | None = None
    seed: int = 0
    refit: tuple[float | None, float | str] | None = None  # (lam, shrinkage) of a data-aware last factor
    whitened: bool = False  # first stages from the kernel seen through the target inputs' second moment
    _errors: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def max_rank(self) -> int:
        return self.first.shape[0] // self.per_rank

    def params_before(self) -> int:
        return self.layer.weight.numel() + (self.layer.out_channels if self.layer.bias is not None else 0)

    def params_after(self, rank: int) -> int:
        bias = self.layer.out_channels if self.layer.bias is not None else 0
        return rank * _params_per_rank(self.kind, self.layer) + bias

    def last_factor(self, rank: int) -> torch.Tensor:
        """``A_k`` (``N × k·per_rank``): given, or the least-squares fit for the first ``k`` ranks."""
        m = rank * self.per_rank
        if self.cholesky is None:
            return self.last[:, :m]
        L = self.cholesky[:m, :m]
        return torch.linalg.solve_triangular(L.T, self.projected[:m], upper=True).T

    def _nested(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, P)`` whose prefixes of ``k·per_rank`` columns / rows give rank ``k``'s approximation ``A_k P_k``."""
        if self.cholesky is None:
            return self.last, self.first
        return self.projected.T, torch.linalg.solve_triangular(self.cholesky, self.first, upper=False)

    def module(self, rank: int) -> nn.Module:
        """The rank-``rank`` replacement layer, in the original layer's dtype and device.

        Jaderberg's ranks are nested (a truncated SVD). CP components are not: a smaller rank
        is decomposed again at that rank (the curves that size ranks come from truncating the
        largest one, an estimate; the Report measures the layer that is built).
        """
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"rank {rank} is outside 1 … {self.max_rank}, the ranks this decomposition computed")
        if self.kind == "cp" and rank < self.max_rank:
            again = _decompose("cp", self.layer, self.moments, rank, self.seed,
                               self.refit[1] if self.whitened else None)
            return (again if self.refit is None else _refit(again, *self.refit)).module(rank)
        layer, A = self.layer, self.last_factor(rank)
        cls = JaderbergConv2d if self.kind == "jaderberg" else CPConv2d
        module = cls(layer.in_channels, layer.out_channels, layer.kernel_size, rank, layer.stride, layer.padding,
                     layer.dilation, bias=layer.bias is not None).to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            if self.kind == "jaderberg":
                module.vertical.weight.copy_(self.stages[0][:rank].unsqueeze(-1))
                module.up.weight.copy_(A.reshape(layer.out_channels, rank, 1, -1))
            else:
                pointwise, vertical, horizontal = (s[:rank] for s in self.stages)
                module.pointwise.weight.copy_(pointwise[:, :, None, None])
                module.vertical.weight.copy_(vertical[:, None, :, None])
                module.horizontal.weight.copy_(horizontal[:, None, None, :])
                module.up.weight.copy_(A[:, :, None, None])
            if layer.bias is not None:
                module.up.bias.copy_(layer.bias)
        return module

    def _errors_on(self, moments: Moments) -> torch.Tensor:
        """``Σ‖y − ŷ_k‖²`` for ``k = 0 … max_rank`` on ``moments`` (the bias is unchanged and cancels).

        With the nested ``(A, P)``: ``tr(WGWᵀ) − 2 Σ_{a<m} aₐᵀ W G pₐ + Σ_{a,b<m} (aₐᵀa_b)(pₐᵀ G p_b)``.
        """
        A, P = self._nested()
        W = self.weight
        G = moments.gram.to(W.dtype)
        PG = P @ G
        total = ((W @ G) * W).sum()
        linear = (A * (PG @ W.T).T).sum(0)  # aₐᵀ W G pₐ, per term a
        quadratic = (A.T @ A) * (PG @ P.T)
        added = 2 * torch.tril(quadratic, -1).sum(1) + quadratic.diagonal()  # what term a adds to Σ_{a,b<m}
        per_term = torch.cat([torch.zeros(1, dtype=W.dtype, device=W.device), (added - 2 * linear).cumsum(0)])
        return (total + per_term[:: self.per_rank]).clamp_min(0)

    @property
    def output_energy(self) -> float:
        """``Σ ||W x + b||²`` over the target samples."""
        return output_energy(self.weight, self.bias, self.moments)

    def output_error(self) -> torch.Tensor:
        """``Σ ||y − ŷ_k||²`` over the target samples for ``k = 0 … max_rank`` (float64)."""
        if self._errors is None:
            self._errors = self._errors_on(self.moments)
        return self._errors

    def relative_error_on(self, moments: Moments) -> torch.Tensor:
        """``||Y − Ŷ_k||² / ||Y||²`` for ``k = 0 … max_rank`` on other samples (held-out ones); nothing is refitted."""
        moments = _checked(self.weight, moments)
        energy = output_energy(self.weight, self.bias, moments)
        errors = self._errors_on(moments)
        return errors / energy if energy > 0 else torch.zeros_like(errors)

    def relative_error(self, rank: int) -> float:
        """``||Y − Ŷ||_F / ||Y||_F`` of rank ``rank`` on the target statistics."""
        energy = self.output_energy
        return (float(self.output_error()[rank]) / energy) ** 0.5 if energy > 0 else 0.0


def _checked(weight: torch.Tensor, moments: Moments) -> Moments:
    if moments.reference is not None:
        raise ValueError("separable convolution decompositions fit the layer's own inputs; "
                         "compress without sequential=True")
    if moments.gram.dim() != 2 or moments.gram.shape[0] != weight.shape[1]:
        raise ValueError(f"the statistics have {moments.gram.shape[-1]} input features but the layer has "
                         f"{weight.shape[1]}; collect them on this layer")
    return moments.to(weight.device)


def check_conv(layer: nn.Module, **_settings) -> None:
    """A decomposition takes an ungrouped Conv2d with zero padding given as numbers."""
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"a {type(layer).__name__} is not a convolution; these methods decompose nn.Conv2d only")
    if layer.groups != 1:
        raise ValueError(f"a grouped convolution (groups={layer.groups}) is already separable; it stays dense")
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise ValueError("only zero padding given as numbers splits into vertical and horizontal stages "
                         f"(this layer: padding={layer.padding!r}, padding_mode={layer.padding_mode!r})")


def _kernel(layer: nn.Conv2d) -> torch.Tensor:
    weight = layer.weight.detach().to(torch.float64)
    if not torch.isfinite(weight).all():
        raise ValueError("the layer has NaN or Inf weights; fix the model before compressing it")
    return weight


def _jaderberg_stages(weight: torch.Tensor, rank: int, whitening: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical filters ``(rank, C, kh)`` and horizontal ones ``(N, rank, kw)`` from the SVD of the reshaped kernel.

    With ``whitening`` (a Cholesky factor ``L`` of the vertical filters' input second moment)
    the SVD is of ``Lᵀ M``: the leading directions are those that carry the most output on the
    target data, and the vertical filters are mapped back through ``L⁻ᵀ``.
    """
    n, c, kh, kw = weight.shape
    M = weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    U, S, Vh = torch.linalg.svd(M if whitening is None else whitening.T @ M, full_matrices=False)
    root = S[:rank].sqrt()
    left = U[:, :rank] * root
    if whitening is not None:
        left = torch.linalg.solve_triangular(whitening.T, left, upper=True)
    vertical = left.T.reshape(rank, c, kh)
    horizontal = (root[:, None] * Vh[:rank]).reshape(rank, n, kw).permute(1, 0, 2)
    return vertical, horizontal


def _jaderberg_first(vertical: torch.Tensor, kw: int) -> torch.Tensor:
    """``P`` with rows ``(k, j)``: output column ``j`` of vertical filter ``k`` on the patch ``(c, i, j')``."""
    rank, c, kh = vertical.shape
    eye = torch.eye(kw, dtype=vertical.dtype, device=vertical.device)
    return torch.einsum("kci,jl->kjcil", vertical, eye).reshape(rank * kw, c * kh * kw)


def _cp_start(T: torch.Tensor, rank: int, seed: int) -> list[torch.Tensor]:
    """Each mode's leading left singular vectors of its unfolding (HOSVD), seeded random columns past its size.

    On a ``1×1`` kernel (a matrix) this start is already the best rank-``R`` fit, and elsewhere it
    cuts the sweeps ALS needs from a random start several times.
    """
    generator = torch.Generator().manual_seed(seed)
    start = []
    for mode, size in enumerate(T.shape):
        unfolded = T.movedim(mode, 0).reshape(size, -1)
        U = torch.linalg.svd(unfolded, full_matrices=False)[0][:, :rank]
        extra = torch.randn(size, rank - U.shape[1], generator=generator, dtype=T.dtype).to(T.device)
        start.append(torch.cat([U, extra], dim=1))
    return start


def _cp_factors(weight: torch.Tensor, rank: int, seed: int, iterations: int = 200, tol: float = 1e-9
                ) -> tuple[torch.Tensor, ...]:
    """``(A (N×R), pointwise (R×C), vertical (R×kh), horizontal (R×kw))`` of the kernel's rank-``R`` CP, strongest first.

    Alternating least squares (Kolda and Bader, "Tensor decompositions and applications", SIAM
    Review 2009): each factor in turn solves its normal equations ``F_m V = M_m``, ``V`` the
    Hadamard product of the other factors' Gram matrices and ``M_m`` the tensor times their
    Khatri–Rao product, from an HOSVD start (:func:`_cp_start`), until the relative fit changes
    by less than ``tol``. Written in torch rather than taken from tensorly: on these small kernels
    tensorly's ``parafac`` spends its time in per-iteration overhead (about 0.2 s an iteration on
    a 50×20×5×5 kernel here), and the tests hold this against it.
    """
    T = weight.to(torch.float64)
    factors = _cp_start(T, rank, seed)
    products = ("abcd,br,cr,dr->ar", "abcd,ar,cr,dr->br", "abcd,ar,br,dr->cr", "abcd,ar,br,cr->dr")
    norm2, previous = float(T.pow(2).sum()), math.inf
    for _ in range(iterations):
        for mode, product in enumerate(products):
            others = [f for m, f in enumerate(factors) if m != mode]
            V = math.prod(f.T @ f for f in others)
            M = torch.einsum(product, T, *others)
            V.diagonal().add_(1e-12 * float(V.diagonal().mean()) + torch.finfo(V.dtype).tiny)
            factors[mode] = torch.linalg.solve(V, M.T).T
        # ‖T − T̂‖² = ‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖², from the last mode's product: no reconstruction
        fit = norm2 - 2 * float((M * factors[-1]).sum()) + float(math.prod(f.T @ f for f in factors).sum())
        error = max(fit, 0.0) ** 0.5 / max(norm2, torch.finfo(torch.float64).tiny) ** 0.5
        if abs(previous - error) < tol:
            break
        previous = error
    norms = [f.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny) for f in factors]
    scale = math.prod(norms)
    order = scale.argsort(descending=True)  # truncating keeps the components that carry the most
    a_n = (factors[0] / norms[0] * scale)[:, order]
    return a_n, *((f / n)[:, order].T.contiguous() for f, n in zip(factors[1:], norms[1:], strict=True))


def _cp_first(pointwise: torch.Tensor, vertical: torch.Tensor, horizontal: torch.Tensor) -> torch.Tensor:
    """``P`` with one row per component: ``a_C ⊗ a_h ⊗ a_w`` on the patch ``(c, i, j)``."""
    return torch.einsum("rc,ri,rj->rcij", pointwise, vertical, horizontal).reshape(pointwise.shape[0], -1)


def _whitening(moments: Moments, shrinkage: float | str, rows: int) -> torch.Tensor:
    """Cholesky factor of the second moment of the patch's first ``rows`` indices, summed over the rest.

    ``rows = C·kh``: ``Σ_j G[(c,i,j), (c',i',j)]``, what Jaderberg's vertical filters read; ``rows = C``:
    ``Σ_{i,j} G[(c,i,j), (c',i,j)]``, what CP's first ``1×1`` convolution reads.
    """
    G = shrunk_second_moment(moments, shrinkage=shrinkage)
    rest = G.shape[0] // rows
    G = G.reshape(rows, rest, rows, rest).diagonal(dim1=1, dim2=3).sum(-1)
    G.diagonal().add_(DEFAULT_LAM * float(G.diagonal().mean()) + torch.finfo(G.dtype).tiny)
    return torch.linalg.cholesky(G)


def _decompose(kind: str, layer: nn.Module, moments: Moments, rank: int, seed: int,
               shrinkage: float | str | None = None) -> ConvDecomposition:
    check_conv(layer)
    weight = _kernel(layer)
    _, c, kh, _ = weight.shape
    largest = _largest_rank(kind, layer)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= largest:
        raise ValueError(f"rank {rank!r} must be an integer in 1 … {largest} for this {tuple(weight.shape)} kernel")
    matrix = weight.reshape(weight.shape[0], -1)
    moments = _checked(matrix, moments)
    bias = None if layer.bias is None else layer.bias.detach().to(torch.float64)
    if kind == "jaderberg":
        whitening = None if shrinkage is None else _whitening(moments, shrinkage, c * kh)
        vertical, horizontal = _jaderberg_stages(weight, rank, whitening)
        first, stages, per_rank = _jaderberg_first(vertical, weight.shape[3]), (vertical,), weight.shape[3]
        last = horizontal.reshape(weight.shape[0], -1)
    else:
        whitening = None if shrinkage is None else _whitening(moments, shrinkage, c)
        if whitening is not None:  # the CP of the kernel seen through whitened input channels, mapped back
            weight = torch.einsum("ncij,cd->ndij", weight, whitening)
        last, *stages = _cp_factors(weight, rank, seed)
        if whitening is not None:
            stages[0] = torch.linalg.solve_triangular(whitening.T, stages[0].T, upper=True).T
        first, stages, per_rank = _cp_first(*stages), tuple(stages), 1
    return ConvDecomposition(kind, layer, matrix, bias, moments, first, stages, per_rank, last=last, seed=seed,
                             whitened=shrinkage is not None)


def _refit(decomposition: ConvDecomposition, lam: float | None, shrinkage: float | str) -> ConvDecomposition:
    """The same first stages, the last factor of every rank by ridge least squares on the target statistics."""
    lam = check_lam(DEFAULT_LAM if lam is None else lam)
    Q = shrunk_second_moment(decomposition.moments, shrinkage=shrinkage).to(decomposition.weight)
    P, W = decomposition.first, decomposition.weight
    PQ = P @ Q
    B = PQ @ P.T
    ridge = lam * float(B.diagonal().sum()) / B.shape[0]
    B.diagonal().add_(max(ridge, torch.finfo(B.dtype).tiny))
    L = torch.linalg.cholesky(B)
    decomposition.cholesky = L
    decomposition.projected = torch.linalg.solve_triangular(L, PQ @ W.T, upper=False)
    decomposition.last = None
    decomposition.refit = (lam, shrinkage)
    return decomposition


def _fitted(kind: str, layer: nn.Module, moments: Moments, rank: int, seed: int, lam: float | None,
            shrinkage: float | str) -> ConvDecomposition:
    """The data-aware decomposition: first stages from the whitened kernel or the plain one, whichever fits the
    target outputs better at ``rank`` once the last factor is refitted (whitening approximates the
    second moment by a product over the patch's indices, and can lose where that is far off)."""
    _check_dalr(lam=lam, shrinkage=shrinkage)
    candidates = [_refit(_decompose(kind, layer, moments, rank, seed, whiten), lam, shrinkage)
                  for whiten in (shrinkage, None)]
    return min(candidates, key=lambda d: float(d.output_error()[d.max_rank]))


_CONV = {"family": "lowrank", "accepts": (nn.Conv2d,), "check": check_conv, "example": {"rank": 2}}


@register("jaderberg", **_CONV, settings=(), rank_cost=rank_cost("jaderberg"))
def jaderberg(layer: nn.Module, moments: Moments, rank: int) -> ConvDecomposition:
    """Jaderberg et al. (BMVC 2014) scheme 2, data-free: the truncated SVD of the kernel as ``(C·kh) × (N·kw)``."""
    return _decompose("jaderberg", layer, moments, rank, seed=0)


@register("jaderberg-dalr", **_CONV, needs_stats=True, validate=_check_dalr, rank_cost=rank_cost("jaderberg"))
def jaderberg_dalr(layer: nn.Module, moments: Moments, rank: int, *, lam: float | None = None,
                   shrinkage: float | str = "auto") -> ConvDecomposition:
    """Jaderberg's two stages fitted to the target data: vertical filters from the SVD of the kernel whitened by
    the second moment of what they read (or the plain one, where that fits better), horizontal ones by
    least squares on the layer's outputs."""
    return _fitted("jaderberg", layer, moments, rank, 0, lam, shrinkage)


@register("cp", **_CONV, rank_cost=rank_cost("cp"))
def cp(layer: nn.Module, moments: Moments, rank: int, *, seed: int = 0) -> ConvDecomposition:
    """Lebedev et al. (ICLR 2015): the rank-``R`` CP decomposition of the kernel (ALS from a seeded start)."""
    return _decompose("cp", layer, moments, rank, seed)


@register("cp-dalr", **_CONV, needs_stats=True, rank_cost=rank_cost("cp"))
def cp_dalr(layer: nn.Module, moments: Moments, rank: int, *, seed: int = 0, lam: float | None = None,
            shrinkage: float | str = "auto") -> ConvDecomposition:
    """CP fitted to the target data: the decomposition of the kernel seen through whitened input channels (the
    second moment of what the first ``1×1`` reads; or the plain one, where that fits better), the last ``1×1``
    factor by least squares on the outputs."""
    return _fitted("cp", layer, moments, rank, seed, lam, shrinkage)
