"""Per-layer latency, measured on this machine and cached per (device, shape, form).

A latency target is priced layer by layer: each candidate replacement is timed alone on an input
of the shape its layer sees in the model, at the batch size the user deploys with (median of
repeated calls after a warm-up). The whole model's latency is then predicted as the dense
model's, measured, minus what each layer's choice saves, and measured again once the plan is
applied. Timings are cached in ``$NETCOMPRESS_CACHE`` (default ``~/.cache/netcompress``)
under a key naming the processor, torch's version and threads, the module's type and tensor
shapes, and the input shape, so a second plan for the same model costs no timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from netcompress._core.atomic import atomic_write_bytes

__all__ = ["LatencyTable", "median_seconds"]


def median_seconds(call: Callable[[], object], *, repeats: int = 15, warmup: int = 3) -> float:
    """The median wall-clock time of ``call()`` over ``repeats`` calls, after ``warmup`` calls."""
    with torch.no_grad():
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _machine() -> str:
    return f"{platform.machine()} {platform.processor() or platform.node()} torch {torch.__version__} " \
           f"threads {torch.get_num_threads()}"


def _form(module: nn.Module) -> str:
    """What decides a module's speed: its and its submodules' types and geometry, its tensors' shapes and dtypes."""
    shape_of = ("kernel_size", "stride", "padding", "dilation", "groups", "mode")  # what the weights' shapes omit
    parts = [f"{name}:{type(m).__name__}:{[getattr(m, a, None) for a in shape_of]}" for name, m in module.named_modules()]
    parts += [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in module.state_dict().items()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


class LatencyTable:
    """Seconds per call of modules on given input shapes, measured once and kept in a JSON cache file."""

    def __init__(self, path: str | os.PathLike | None = None, *, repeats: int = 15):
        root = Path(os.environ.get("NETCOMPRESS_CACHE", Path.home() / ".cache" / "netcompress"))
        self.path = Path(path) if path is not None else root / "latency.json"
        self.repeats = repeats
        self.machine = _machine()
        self.entries: dict[str, float] = {}
        self.writable = not self.path.exists()  # a file there that is not this cache is never overwritten
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict) and all(isinstance(v, float) for v in loaded.values()):
                self.entries, self.writable = loaded, True
        except (OSError, ValueError):  # no cache yet, or a file this version cannot read: measure again
            pass

    def seconds(self, module: nn.Module, shape: tuple[int, ...]) -> float:
        """Seconds per call of ``module`` (eval mode, no gradients) on a random input of ``shape``."""
        key = f"{self.machine}|{_form(module)}|{tuple(shape)}"
        if key not in self.entries:
            parameter = next(module.parameters(), None)
            dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
            device = parameter.device if parameter is not None else torch.device("cpu")
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            was = module.training
            module.eval()
            try:
                self.entries[key] = median_seconds(lambda: module(x), repeats=self.repeats)
            finally:
                module.train(was)
        return self.entries[key]

    def save(self) -> None:
        """Write the cache (atomically); a cache that cannot be written is only a lost speed-up."""
        if not self.writable:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(self.entries).encode())
        except OSError:
            pass
