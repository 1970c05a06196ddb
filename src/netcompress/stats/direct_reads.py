"""Layers whose weight a parent computes with directly, seen during the first forward call of ``collect``.

A parent that computes ``F.linear(x, self.qkv.weight, self.qkv.bias)`` (as torchvision's Swin does)
never calls ``qkv`` as a module, so its hooks see nothing: :class:`_DirectReads`, a torch function
mode, notes who passed the weight to which function, and :func:`_direct_reason` says so in
``LayerStats.read_directly`` / ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from netcompress._core.sources import weight_sources

__all__: list[str] = []


# Tensor functions that read only a weight's metadata, not its values: not a computation with it.
_METADATA = frozenset({"__get__", "__len__", "__format__", "__repr__", "size", "dim", "numel", "nelement", "stride",
                       "element_size", "data_ptr", "storage_offset", "untyped_storage", "get_device", "type",
                       "is_floating_point", "is_complex", "is_contiguous", "is_nonzero", "_is_view"})


def _function_name(func: Callable) -> str:
    import torch.nn.functional as F

    name = getattr(func, "__name__", repr(func))
    return f"F.{name}" if hasattr(F, name) else f"torch.{name}" if hasattr(torch, name) else f"Tensor.{name}"


class _DirectReads(TorchFunctionMode):
    """Which recorded layers' weights a torch function receives outside the layer's own call.

    A parent that computes ``F.linear(x, self.qkv.weight, self.qkv.bias)`` never calls ``qkv``
    as a module, so its hooks see nothing; this mode, active for the first forward call of
    :func:`collect`, sees the weight passed to ``F.linear`` and notes who passed it (the innermost
    module then running that is not the layer or inside it).
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module]):
        super().__init__()
        self.watched = {id(p): name for name, layer in layers.items() for p in weight_sources(layer)}
        self.running: list[str] = []
        self.found: dict[str, tuple[str, str]] = {}  # layer → (the module that read its weight, the function)
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):  # takes no Python hooks
                continue
            self.handles.append(module.register_forward_pre_hook(self._enter(name), prepend=True))
            self.handles.append(module.register_forward_hook(self._leave(name), always_call=True))

    def _enter(self, name: str):
        def hook(module, args) -> None:
            self.running.append(name)
        return hook

    def _leave(self, name: str):
        def hook(module, args, output) -> None:
            if self.running and self.running[-1] == name:
                self.running.pop()
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.watched and getattr(func, "__name__", "") not in _METADATA:
            for value in (*args, *kwargs.values()):
                for tensor in (value if isinstance(value, (list, tuple)) else (value,)):
                    layer = self.watched.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
                    if layer is None or layer in self.found or layer in self.running:
                        continue
                    reader = next((n for n in reversed(self.running) if not n.startswith(f"{layer}.")), "")
                    self.found[layer] = (reader, _function_name(func))
        return func(*args, **kwargs)


def _direct_reason(layer: str, reader: str, function: str, called: bool) -> str:
    who = f"its parent {reader!r}" if reader else "the model's forward"
    if called:
        return f"its weight is also read directly by {who} ({function})"
    return f"{who} computes with its weight directly ({function}), so netcompress saw no inputs"
