"""Data-parallel training with fewer bytes on the wire, on the real ``torch.distributed``.

``terngrad_hook`` / ``terngrad_allreduce``: ternary gradients (Wen et al., NIPS 2017).
"""

from netcompress.distributed import terngrad
from netcompress.distributed.terngrad import *  # noqa: F403 (the names terngrad.__all__ lists)

__all__ = list(terngrad.__all__)
