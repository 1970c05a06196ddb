"""TernGrad: ternary gradients for data-parallel training on ``torch.distributed``.

Wen, Xu, Yan, Wu, Wang, Chen and Li, "TernGrad: Ternary Gradients to Reduce Communication in
Distributed Deep Learning", NIPS 2017. Each worker replaces a layer's gradient ``g`` by

    g̃ = s · sign(g) ∘ b,   s = max|g|,   b_i ~ Bernoulli(|g_i| / s)

which is unbiased (E[g̃_i] = s · sign(g_i) · |g_i|/s = g_i) with variance s·|g_i| − g_i² per element,
and needs 2 bits per value plus one float32 scaler per layer. The paper's layer-wise gradient
clipping (its Section 3.3) clamps ``g`` to ±c·σ first (c = 2.5), trading a small bias for a smaller
scaler and so a smaller variance.

Exchange: every rank all-gathers the packed 2-bit codes and its float32 scalers, then decodes and
averages the ``world`` ternary gradients itself. An all-reduce cannot keep the 2-bit width: the
sum of ``world`` ternary values needs log2(2·world + 1) bits and each rank has its own scaler, so it
would have to add s·code in float32 (no saving) or, with one shared scaler, integer codes in at
least int8 (1/4 of float32, not 1/16). A rank sends n/4 + 4·layers bytes where the float32
all-reduce sends 4·n (≥ 16× fewer, counted by :class:`TernGradState`). What a rank *receives*
grows with the world size, (world − 1) · n/4 bytes against about 2 · 4 · n for a ring all-reduce,
so the all-gather stays smaller up to about 32 ranks.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = [
    "PAPER_CLIP",
    "TernGradState",
    "decode",
    "pack",
    "packed_size",
    "ternarize",
    "terngrad_allreduce",
    "terngrad_hook",
    "unpack",
]

PAPER_CLIP = 2.5
"""The clipping threshold c (in σ) that Wen et al. (NIPS 2017) recommend and use."""

# 2-bit fields, low bits first: 0 → 0b00, +1 → 0b01, −1 → 0b11 (two's complement); 0b10 is invalid.
_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_VALUES = torch.tensor([0, 1, 0, -1], dtype=torch.int8)


def _clip_threshold(clip: float | bool | None) -> float | None:
    """``clip`` as c (in σ), or None for no clipping; True means the paper's 2.5."""
    if clip is None or clip is False:
        return None
    if clip is True:
        return PAPER_CLIP
    if not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"clip must be None, True (c = {PAPER_CLIP}) or a positive number of standard deviations, "
                         f"got {clip!r}")
    return float(clip)


def ternarize(grad: torch.Tensor, generator: torch.Generator,
              clip: float | bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternarise one layer's gradient (Wen et al., NIPS 2017, their Eq. 4 with the per-layer scaler).

    Returns ``(codes, scale)``: int8 codes in {−1, 0, +1} of ``grad``'s shape and a float32 0-dim
    ``scale`` = max|g|, so that ``codes * scale`` is the ternary gradient. Without clipping its
    expectation over ``generator`` is ``grad`` exactly. ``clip`` = c (or True for the paper's 2.5)
    first clamps ``g`` to ±c·σ with σ = sqrt(mean(g²)), the standard deviation of the zero-mean
    gradients the paper assumes, taken about zero so that a constant gradient (a one-element bias)
    is never clipped away. A NaN or infinite gradient gives a non-finite scale, so that its decoded
    gradient stays non-finite (as ``torch.amp.GradScaler`` expects to see).
    """
    if not isinstance(grad, torch.Tensor) or not grad.is_floating_point():
        raise TypeError(f"grad must be a floating-point tensor, got {getattr(grad, 'dtype', type(grad))}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != grad.device.type:
        raise ValueError(f"generator is on {generator.device} but grad is on {grad.device}; "
                         f"make the generator with torch.Generator(device=grad.device)")
    threshold = _clip_threshold(clip)
    g = grad.detach().float()
    if threshold is not None and g.numel() > 0:
        bound = threshold * g.square().mean().sqrt()
        g = torch.clamp(g, -bound, bound)
    if g.numel() == 0:
        return torch.zeros(grad.shape, dtype=torch.int8, device=grad.device), g.new_zeros(())
    scale = g.abs().max()
    # 0/0 for an all-zero gradient: probability 0, no synchronisation with the device needed.
    probability = torch.where(scale > 0, g.abs() / scale, torch.zeros_like(g))
    keep = torch.rand(g.shape, generator=generator, device=g.device) < probability
    codes = (torch.sign(g) * keep).to(torch.int8)
    return codes, scale


def decode(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 ternary gradient ``scale · codes`` (Wen et al., NIPS 2017)."""
    return codes.to(torch.float32) * scale


def packed_size(count: int) -> int:
    """Bytes that :func:`pack` needs for ``count`` codes: 4 codes (2 bits each) per byte."""
    if count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    return (count + 3) // 4


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes, 4 per byte, into a 1-D uint8 tensor of ``packed_size(codes.numel())`` bytes.

    Fields are 2 bits, low bits first: 0 → 00, +1 → 01, −1 → 11; the last byte is padded with 0.
    """
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
    flat = codes.reshape(-1)
    if flat.numel() and bool(((flat < -1) | (flat > 1)).any()):
        raise ValueError("codes must hold only −1, 0 and +1")
    fields = flat.to(torch.int8).view(torch.uint8) & 3  # −1 = 0xFF → 0b11
    padding = (-fields.numel()) % 4
    fields = torch.nn.functional.pad(fields, (0, padding)).reshape(-1, 4)
    return (fields << _SHIFTS.to(fields.device)).sum(dim=1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` int8 codes (1-D) that :func:`pack` wrote into ``packed``; checks the length and fields."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(f"packed must be a 1-D uint8 tensor, got {getattr(packed, 'dtype', type(packed))} "
                        f"with shape {tuple(getattr(packed, 'shape', ()))}")
    if packed.numel() != packed_size(count):
        raise ValueError(f"packed holds {packed.numel()} bytes but {count} codes need {packed_size(count)}")
    fields = ((packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 3).reshape(-1)
    if bool((fields == 2).any()):
        raise ValueError("packed holds the invalid 2-bit field 0b10; it was not written by pack()")
    if bool(fields[count:].any()):
        raise ValueError("packed has non-zero padding after the last code")
    return _VALUES.to(packed.device)[fields[:count].long()]


def _payload(tensors: Sequence[torch.Tensor], generator: torch.Generator, clip: float | bool | None) -> torch.Tensor:
    """One rank's wire message: its float32 scalers (4 bytes each), then all codes packed together."""
    ternary = [ternarize(t, generator, clip) for t in tensors]
    scales = torch.stack([scale for _, scale in ternary]).contiguous()
    codes = torch.cat([c.reshape(-1) for c, _ in ternary])
    return torch.cat([scales.view(torch.uint8), pack(codes)])


def _average(messages: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Decode every rank's message and average, in rank order (so every rank gets the same bits)."""
    counts = [t.numel() for t in tensors]
    head = 4 * len(tensors)
    total = torch.zeros(sum(counts), dtype=torch.float32, device=tensors[0].device)
    for message in messages:
        scales = message[:head].clone().view(torch.float32)
        codes = unpack(message[head:], sum(counts)).split(counts)
        total += torch.cat([decode(c, s) for c, s in zip(codes, scales, strict=True)])
    total /= len(messages)
    return [part.reshape(t.shape).to(t.dtype) for part, t in zip(total.split(counts), tensors, strict=True)]


def _start_exchange(tensors: Sequence[torch.Tensor], generator: torch.Generator, group: dist.ProcessGroup | None,
                    clip: float | bool | None) -> tuple[list[torch.Tensor], dist.Work, int]:
    """Ternarise and start the all-gather: the receiving buffers, its work handle, the bytes this rank sent."""
    if not tensors:
        raise ValueError("tensors must hold at least one tensor")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"tensors must all be on one device, got {sorted(map(str, devices))}")
    payload = _payload(tensors, generator, clip)
    messages = [torch.empty_like(payload) for _ in range(dist.get_world_size(group))]
    work = dist.all_gather(messages, payload, group=group, async_op=True)
    return messages, work, payload.numel()


def terngrad_allreduce(tensors: Sequence[torch.Tensor], *, generator: torch.Generator,
                       group: dist.ProcessGroup | None = None,
                       clip: float | bool | None = None) -> list[torch.Tensor]:
    """Average ``tensors`` (one per layer) over the ranks of ``group`` through TernGrad (Wen et al., NIPS 2017).

    Every rank must call it with tensors of the same shapes, each ternarised with its own per-layer
    scaler by this rank's ``generator`` (seed it differently on each rank). Returns new tensors of
    the inputs' shapes and dtypes, the same bits on every rank: the mean of the ranks' ternary
    tensors, an unbiased estimate of the mean of the inputs without ``clip``. The exchange is an
    all-gather of packed 2-bit codes and float32 scalers, see the module's docstring for why.
    """
    tensors = list(tensors)
    messages, work, _ = _start_exchange(tensors, generator, group, clip)
    work.wait()
    return _average(messages, tensors)


@dataclass
class TernGradState:
    """State of :func:`terngrad_hook`: seed, clipping, group, and the bytes counted on the wire.

    Each rank draws from its own ``torch.Generator`` seeded with ``seed + rank`` (the global rank),
    made on the gradients' device at first use. ``bytes_sent`` counts what this rank handed to the
    all-gather (packed codes plus float32 scalers); ``float32_bytes`` what a float32 all-reduce of
    the same buckets would have sent (4 bytes a value). ``clip`` is as in :func:`ternarize`.
    """

    seed: int = 0
    clip: float | bool | None = None
    group: dist.ProcessGroup | None = None
    bytes_sent: int = 0
    float32_bytes: int = 0
    _generators: dict[torch.device, torch.Generator] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        _clip_threshold(self.clip)

    def generator(self, device: torch.device) -> torch.Generator:
        """This rank's generator on ``device``, seeded with ``seed + rank`` when first asked for."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed + dist.get_rank())
        return self._generators[device]

    @property
    def compression(self) -> float:
        """``float32_bytes / bytes_sent``: how many times fewer bytes this rank sent (0 before any step)."""
        return self.float32_bytes / self.bytes_sent if self.bytes_sent else 0.0


def terngrad_hook(state: TernGradState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook averaging ternary gradients (Wen et al., NIPS 2017).

    Use as ``ddp.register_comm_hook(TernGradState(seed=0, clip=None), terngrad_hook)``. Each
    parameter's gradient in the bucket is ternarised with its own scaler (the paper's per-layer
    scaler) and the packed codes and scalers are all-gathered from every rank (see the module's
    docstring for why not an all-reduce). The all-gather runs asynchronously, so DDP goes on with
    the backward pass meanwhile; the returned future decodes and averages the ranks' messages into
    the bucket's flat buffer when it arrives.
    """
    buffer = bucket.buffer()
    gradients = bucket.gradients()  # views into ``buffer``, one per parameter
    messages, work, sent = _start_exchange(gradients, state.generator(buffer.device), state.group, state.clip)
    state.bytes_sent += sent
    state.float32_bytes += 4 * buffer.numel()

    def average(_: torch.futures.Future) -> torch.Tensor:
        for gradient, mean in zip(gradients, _average(messages, gradients), strict=True):
            gradient.copy_(mean)
        return buffer

    return work.get_future().then(average)
