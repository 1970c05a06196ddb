"""Small reference networks used by the demos, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CompactNet", "InvertedResidual", "LeNet300100", "LeNet5", "WideMLP", "depthwise_separable"]


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


def depthwise_separable(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """MobileNet's block: a 3×3 depthwise convolution, then a 1×1 pointwise one, each with BN and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expansion, 3×3 depthwise, linear 1×1 bottleneck, residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand: int = 4):
        super().__init__()
        hidden = in_channels * expand
        self.residual = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),  # linear bottleneck
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class CompactNet(nn.Module):
    """A compact student for 28×28 images: a 3×3 stem, four blocks, global average pooling, one linear layer.

    ``block="inverted"`` uses MobileNetV2's inverted residuals, ``"separable"`` MobileNet's
    depthwise separable convolutions; ``width`` sets the channels (width, 2·width, 4·width).
    """

    def __init__(self, width: int = 16, block: str = "inverted", in_channels: int = 1, classes: int = 10):
        super().__init__()
        if block not in ("inverted", "separable"):
            raise ValueError(f"block must be 'inverted' or 'separable', got {block!r}")
        make = InvertedResidual if block == "inverted" else depthwise_separable
        self.in_channels = in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(make(width, 2 * width, 2), make(2 * width, 2 * width, 1),
                                    make(2 * width, 4 * width, 2), make(4 * width, 4 * width, 1))
        self.classifier = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = int(round((x[0].numel() // self.in_channels) ** 0.5))
        x = x.reshape(-1, self.in_channels, side, side)
        x = self.blocks(self.stem(x))
        return self.classifier(x.mean((2, 3)))  # global average pooling instead of a wide FC layer
