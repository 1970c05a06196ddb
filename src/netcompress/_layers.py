"""Finding layers by name and swapping them in place."""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

__all__ = ["SUPPORTED", "resolve_layers", "replace_module", "progress_disabled"]

SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def _is_supported(module: nn.Module) -> bool:
    # Exact types only: a replacement (LowRankLinear, …) is not compressed twice by accident.
    return type(module) in SUPPORTED


def resolve_layers(model: nn.Module, layers: Iterable[str] | str | None) -> dict[str, nn.Module]:
    """Map the requested layer names (or ``"re:<regex>"`` patterns) to the model's modules.

    ``None`` selects every ``nn.Linear`` and ``nn.Conv2d``. An unknown name or a
    module of another type raises ``ValueError`` naming it.
    """
    modules = dict(model.named_modules())
    if layers is None:
        selected = {name: m for name, m in modules.items() if _is_supported(m)}
        if not selected:
            raise ValueError("the model has no nn.Linear or nn.Conv2d layer to compress")
        return selected
    if isinstance(layers, str):
        layers = [layers]
    selected: dict[str, nn.Module] = {}
    for request in layers:
        if request.startswith("re:"):
            pattern = re.compile(request[3:])
            hits = {n: m for n, m in modules.items() if n and pattern.fullmatch(n) and _is_supported(m)}
            if not hits:
                raise ValueError(f"pattern {request!r} matches no nn.Linear or nn.Conv2d layer of the model")
            selected.update(hits)
            continue
        if request not in modules or request == "":
            raise ValueError(
                f"layer {request!r} does not exist in the model; use a name from model.named_modules()"
            )
        module = modules[request]
        if not _is_supported(module):
            raise ValueError(
                f"layer {request!r} is a {type(module).__name__}; only nn.Linear and nn.Conv2d layers are supported"
            )
        selected[request] = module
    return selected


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` of ``model`` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for our ``progress`` flag (``None``: show only on a terminal)."""
    return None if progress is None else not progress
