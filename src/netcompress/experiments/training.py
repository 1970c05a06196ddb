"""A plain, seeded supervised loop for the demos (fine-tuning with distillation comes later)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["accuracy", "fit"]


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
        batch_size: int = 128, weight_decay: float = 0.0, seed: int = 0) -> nn.Module:
    """Train ``model`` on (x, y) with Adam and cross-entropy, mini-batches shuffled with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True))
    return 100.0 * correct / len(y)
