"""Small reference networks used by the demos, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["WideMLP"]


class WideMLP(nn.Module):
    """A 784 → wide → wide → 10 classifier whose wide layers play the roles of VGG's fc6 and fc7."""

    def __init__(self, in_features: int = 784, width: int = 1024, classes: int = 10):
        super().__init__()
        self.fc6 = nn.Linear(in_features, width)
        self.fc7 = nn.Linear(width, width)
        self.fc8 = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc6(x.flatten(1)))
        x = torch.relu(self.fc7(x))
        return self.fc8(x)
