import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def correlated_inputs(samples: int, features: int, *, seed: int = 0, mean: float = 0.3) -> torch.Tensor:
    """Inputs with a decaying spectrum and a non-zero mean, like real activations."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g, dtype=torch.float64)
    scales = torch.logspace(0, -2, features, dtype=torch.float64)
    return (torch.randn(samples, features, generator=g, dtype=torch.float64) * scales) @ mixing + mean


class SmallNet(nn.Module):
    """Conv → conv → linear → linear, small enough for every test."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(12 * 4 * 4, 40)
        self.fc2 = nn.Linear(40, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
