"""The paper's *Shallow* quality network, sized by the input crop.

RankIQA's table for 227-pixel inputs: three 3×3 convolutions of 32 channels, the first two each
followed by ReLU and 4×4 max pooling, the third by ReLU; a convolution over the whole remaining
map down to 1×1; one fully connected layer to the scalar quality score. The first two
convolutions are padded, so a 227-pixel crop gives the table's 12×12 map before conv4 (56×56 and
14×14 after the poolings, where the table prints 57 and 14).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Shallow", "shallow_parameters", "shallow_scoring_bytes"]


class Shallow(nn.Module):
    """Quality score of a ``crop``×``crop`` RGB image: larger is better."""

    def __init__(self, crop: int = 64, width: int = 32):
        super().__init__()
        side = crop // 4 // 4 - 2  # after conv1 + pool1, conv2 + pool2, conv3
        if side < 1:
            raise ValueError(f"a {crop}-pixel crop is too small for the Shallow network; use at least 48")
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
            nn.Conv2d(width, width, 3), nn.ReLU(),
            nn.Conv2d(width, width, side),  # "conv4": the remaining map down to 1×1
        )
        self.fc = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1)).squeeze(1)


def shallow_parameters(crop: int, width: int) -> int:
    """The number of parameters of ``Shallow(crop, width)``, computed without building it."""
    side = crop // 4 // 4 - 2
    return (3 * width * 9 + width) + 2 * (width * width * 9 + width) + (width * width * side * side + width) \
        + (width + 1)


def shallow_scoring_bytes(crop: int, width: int, crops: int) -> int:
    """An upper bound on the memory (bytes) :func:`~netcompress.rankings.score_image` needs for ``crops`` crops.

    Per crop of ``crop²`` pixels: the uint8 crops and their stack (6 bytes a pixel), the float32
    batch (12) and, at the widest point, conv1's output and its ReLU (``2·width`` float32 values);
    later layers work on maps 16 times smaller and are freed as the forward pass goes.
    """
    return crops * crop * crop * (6 + 12 + 8 * width)
