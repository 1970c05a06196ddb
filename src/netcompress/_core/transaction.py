"""All or nothing: undo every change to a model when the work inside the block fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["all_or_nothing", "evaluating"]


@contextmanager
def all_or_nothing(model: nn.Module, values: bool = True) -> Iterator[None]:
    """Run the block; if it raises, put ``model`` back exactly as it was, then re-raise.

    Restores the module tree (children swapped by ``replace_module``), every parameter and
    buffer object, and their data, dtype and device. With ``values`` (for blocks that write
    into the model's tensors: ``load_state_dict`` copies in place) the values are snapshotted,
    at the cost of one copy of the model's tensors while the block runs. Without it (compression,
    which only swaps modules) nothing is copied: each tensor's version counter shows that no
    value was written in place, and a block that did write one is reported, not silently kept.
    """
    snapshot = []
    for module in model.modules():
        tensors = [(k, t) for k, t in (*module._parameters.items(), *module._buffers.items()) if t is not None]
        saved = {
            "_modules": dict(module._modules),
            "_parameters": dict(module._parameters),
            "_buffers": dict(module._buffers),
            "requires_grad": {k: p.requires_grad for k, p in module._parameters.items() if p is not None},
            # a tensor without a version counter (inference mode) is copied whatever ``values`` says
            "data": {k: t.detach().clone() for k, t in tensors if values or _version(t) is None},
            "versions": {} if values else {k: _version(t) for k, t in tensors if _version(t) is not None},
        }
        snapshot.append((module, saved))
    try:
        yield
    except BaseException as error:
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
        written = [f"{type(module).__name__}.{k}" for module, saved in snapshot for k, v in saved["versions"].items()
                   if _version(saved["_parameters"].get(k, saved["_buffers"].get(k))) != v]
        if written:
            raise RuntimeError(f"the model could not be put back: {written[0]} was written in place during the "
                               f"failed call ({error})") from error
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


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place write counter (``None`` for an inference tensor, which keeps none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None
