"""All or nothing: undo every change to a model when the work inside the block fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["all_or_nothing", "evaluating"]


@contextmanager
def all_or_nothing(model: nn.Module) -> Iterator[None]:
    """Run the block; if it raises, put ``model`` back exactly as it was, then re-raise.

    Restores the module tree (children swapped by ``replace_module``), every parameter and
    buffer object, and their data, dtype and device (``load_state_dict`` copies in place, so
    the values are snapshotted too). Costs one copy of the model's tensors while the block runs.
    """
    snapshot = []
    for module in model.modules():
        saved = {
            "_modules": dict(module._modules),
            "_parameters": dict(module._parameters),
            "_buffers": dict(module._buffers),
            "requires_grad": {k: p.requires_grad for k, p in module._parameters.items() if p is not None},
            "data": {k: t.detach().clone() for k, t in (*module._parameters.items(), *module._buffers.items())
                     if t is not None},
        }
        snapshot.append((module, saved))
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for module, saved in snapshot:
                for attr in ("_modules", "_parameters", "_buffers"):
                    current = getattr(module, attr)
                    current.clear()
                    current.update(saved[attr])
                for key, value in saved["data"].items():
                    tensor = module._parameters.get(key)
                    if tensor is None:
                        tensor = module._buffers[key]
                    tensor.data = value
                for key, flag in saved["requires_grad"].items():
                    module._parameters[key].requires_grad_(flag)
        raise


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Run the block with every module in eval mode, then give each module back its own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
