"""Training checkpoints: a dict of tensors and numbers written atomically, read back without unpickling code."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

__all__ = ["read_checkpoint", "write_checkpoint"]


def write_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (state dicts, tensors, numbers, lists) to ``path`` under a temporary name, then rename it."""
    from netcompress.storage.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | os.PathLike | None) -> dict | None:
    """The state written at ``path`` (``None`` when there is no such file), loaded with ``weights_only=True``."""
    if path is None or not Path(path).exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
