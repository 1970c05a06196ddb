"""A plain, seeded supervised fine-tuning loop that keeps compression intact.

Pruned layers multiply their weights by a mask in ``forward`` and quantized layers
compute their weights from fixed codes, so ordinary training keeps pruned weights
at zero and codes on their grid; it only moves the surviving weights, the shared
code words (their gradients summed over the weights that share them) and the biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import progress_disabled

__all__ = ["accuracy", "finetune"]




def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled (inputs, labels) mini-batches for one epoch; the order depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(x), generator=generator)
    return [(x[i], y[i]) for i in order.split(batch_size)]


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
             batch_size: int = 128, weight_decay: float = 0.0, schedule: str = "constant", seed: int = 0,
             progress: bool | None = None) -> nn.Module:
    """Train ``model`` on (x, y) with Adam and cross-entropy for ``epochs``; returns it in eval mode.

    ``schedule="cosine"`` decays the learning rate to zero over the run; ``"constant"`` keeps it.
    Pruning masks and quantization codes are kept by construction (see the module docstring).
    """
    from tqdm.auto import tqdm

    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if epochs < 0 or lr <= 0:
        raise ValueError(f"finetune needs epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"finetune needs as many labels as inputs (got {len(x)} inputs, {len(y)} labels)")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) if schedule == "cosine" else None
    model.train()
    for epoch in tqdm(range(epochs), desc="finetune", unit="epoch", disable=progress_disabled(progress)):
        for xb, yb in batches(x, y, batch_size, seed=seed, epoch=epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            if decay is not None:
                decay.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum())
                  for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True))
    return 100.0 * correct / len(y)
