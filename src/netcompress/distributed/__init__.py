"""Data-parallel training with fewer bytes on the wire, on the real ``torch.distributed``.

``terngrad_hook`` / ``terngrad_allreduce``: ternary gradients (Wen et al., NIPS 2017).
``codistill_distributed``: online distillation between ranks (Anil et al., ICLR 2018).
"""

from netcompress.distributed import codistill, terngrad
from netcompress.distributed.codistill import *  # noqa: F403 (the names codistill.__all__ lists)
from netcompress.distributed.terngrad import *  # noqa: F403 (the names terngrad.__all__ lists)

__all__ = list(terngrad.__all__) + list(codistill.__all__)
