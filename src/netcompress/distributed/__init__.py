"""Data-parallel training with fewer bytes on the wire, on the real ``torch.distributed``.

``terngrad_hook`` / ``terngrad_allreduce``: ternary gradients (Wen et al., NIPS 2017).
"""

from netcompress.distributed.terngrad import (
    PAPER_CLIP,
    TernGradState,
    decode,
    pack,
    packed_size,
    ternarize,
    terngrad_allreduce,
    terngrad_hook,
    unpack,
)

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
