"""Finding layers by name and swapping them in place."""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

__all__ = ["SUPPORTED", "resolve_layers", "replace_module", "progress_disabled"]

SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def resolve_layers(
    model: nn.Module, layers: Iterable[str] | str | None, accepts: tuple[type[nn.Module], ...] = SUPPORTED
) -> dict[str, nn.Module]:
    """Map the requested layer names (or ``"re:<regex>"`` patterns) to the model's modules.

    ``None`` selects every module whose exact type is in ``accepts`` (default ``nn.Linear``
    and ``nn.Conv2d``; exact, so a replacement is never compressed twice by accident). An
    unknown name or a module of another type raises ``ValueError`` naming it.
    """
    modules = dict(model.named_modules())
    kinds = " or ".join(t.__name__ for t in accepts)

    def _is_supported(module: nn.Module) -> bool:
        return type(module) in accepts

    if layers is None:
        selected = {name: m for name, m in modules.items() if _is_supported(m)}
        if not selected:
            raise ValueError(f"the model has no {kinds} layer to compress")
        return selected
    if isinstance(layers, str):
        layers = [layers]
    selected: dict[str, nn.Module] = {}
    for request in layers:
        if request.startswith("re:"):
            pattern = re.compile(request[3:])
            hits = {n: m for n, m in modules.items() if n and pattern.fullmatch(n) and _is_supported(m)}
            if not hits:
                raise ValueError(f"pattern {request!r} matches no {kinds} layer of the model")
            selected.update(hits)
            continue
        if request not in modules or request == "":
            raise ValueError(
                f"layer {request!r} does not exist in the model; use a name from model.named_modules()"
            )
        module = modules[request]
        if not _is_supported(module):
            raise ValueError(f"layer {request!r} is a {type(module).__name__}; this method takes only {kinds} layers")
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
