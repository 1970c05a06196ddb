"""Small reference networks used by the demos, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet300100", "LeNet5", "WideMLP"]


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


class LeNet300100(nn.Module):
    """LeNet-300-100: 784 → 300 → 100 → 10 (266,610 parameters), as in Deep Compression."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


class LeNet5(nn.Module):
    """Caffe's LeNet-5: two 5×5 convolutions (20, 50 filters), 800 → 500 → 10 (431,080 parameters)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
