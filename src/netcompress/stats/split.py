"""Which samples of the target data are held out: one rule, shared by the statistics pass and the whole-model check."""

from __future__ import annotations

import torch

__all__ = ["heldout_mask"]


def heldout_mask(start: int, size: int, holdout: float) -> torch.Tensor:
    """Which samples of a batch are held out: every sample where ``⌊(i+1)·h⌋ > ⌊i·h⌋`` (global index i).

    Under torch.distributed, sample j of process r (of W) has global index i = j·W + r, its place
    in a strided split (``data[r::W]``): the processes together hold out what one process would.
    """
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    i = torch.arange(start, start + size, dtype=torch.float64) * world + rank
    return torch.floor((i + 1) * holdout) > torch.floor(i * holdout)
