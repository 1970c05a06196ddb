"""Benchmark (c): CPU inference time of compressed networks against the originals, next to the FLOPs ratio.

Timing does not depend on the weights' values, so the networks are freshly initialised;
the statistics come from random inputs of the right shape.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from experiments.models import WideMLP
from torch import nn

import netcompress as nc
from _common import print_table


def multiply_adds(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds of one forward pass, counted from the Linear and Conv2d layers' shapes."""
    total = 0

    def count(module, args, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kh * kw

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.inference_mode():
        model(example)
    for handle in handles:
        handle.remove()
    return total


def latency(model: nn.Module, example: torch.Tensor, repeat: int = 30) -> float:
    """Median seconds of one forward pass."""
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model(example)
        for _ in range(repeat):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class SmallVGG(nn.Module):
    """Three 3×3 conv blocks and a wide classifier, for 32×32 RGB inputs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc6 = nn.Linear(256 * 4 * 4, 1024)
        self.fc7 = nn.Linear(1024, 10)

    def forward(self, x):
        return self.fc7(torch.relu(self.fc6(self.features(x).flatten(1))))


def main() -> None:
    torch.manual_seed(0)
    cases = [
        ("WideMLP, fc6+fc7 at rank 32 (dalr)", WideMLP(), torch.rand(256, 784), dict(rank={"fc6": 32, "fc7": 32})),
        ("SmallVGG, every layer keeps 25% (dalr)", SmallVGG(), torch.rand(64, 3, 32, 32), dict(keep=0.25)),
        # The budget is spent where parameters buy the most target accuracy, not FLOPs.
        ("SmallVGG, budget 0.25 of all layers (dalr)", SmallVGG(), torch.rand(64, 3, 32, 32), dict(budget=0.25)),
    ]
    rows = []
    for name, model, data, setting in cases:
        compressed = copy.deepcopy(model)
        report = nc.compress(compressed, data.split(32), progress=False, **setting)
        ratio = multiply_adds(compressed, data[:1]) / multiply_adds(model, data[:1])
        for batch in (1, 64):
            example = data[:batch]
            t_before, t_after = latency(model, example), latency(compressed, example)
            rows.append([name, str(batch), f"{1e3 * t_before:.3f}", f"{1e3 * t_after:.3f}",
                         f"{t_before / t_after:.2f}", f"{1 / ratio:.2f}",
                         f"{report.params_before / report.params_after:.2f}"])
    print(f"CPU inference, {torch.get_num_threads()} threads, float32, median of 30 runs\n")
    print_table(["network", "batch", "ms before", "ms after", "speed-up", "FLOPs ratio", "params ratio (compressed layers)"], rows)


if __name__ == "__main__":
    main()
