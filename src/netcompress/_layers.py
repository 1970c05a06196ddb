"""Which layers netcompress understands, finding them by name, and swapping them in place.

This module is the one place that decides what a layer *is* for every method, for
:func:`~netcompress.collect`, for structured tracing and for the Report:

* ``nn.Linear`` / ``nn.Conv2d`` and their subclasses whose ``forward`` is the standard one;
* convolutions whose padding is applied before the product (string padding such as
  ``"same"``, a non-zero ``padding_mode``, or a known *static same-padding* wrapper such as
  EfficientNet's ``Conv2dStaticSamePadding``): they are seen as a plain convolution on the
  explicitly padded input, and their replacement is wrapped in :class:`Padded`;
* netcompress's own replacement layers, which only the methods that take them compress again.

Everything else with a weight matrix is a *candidate* that the Report lists as left dense,
with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._description import Entry, describable, replacement_types

__all__ = [
    "DENSE",
    "Padded",
    "candidate_layers",
    "explicit_names",
    "explicit_padding",
    "plain_layer",
    "progress_disabled",
    "replace_module",
    "resolve_layers",
    "unsupported_reason",
]


# The layers every method understands: a weight matrix applied to inputs collect() can observe.
DENSE = (nn.Linear, nn.Conv2d)
PADDING_MODES = ("constant", "reflect", "replicate", "circular")


@describable
class Padded(nn.Module):
    """``layer(pad(x))``: a convolution whose padding is applied explicitly before it.

    Used for replacements of 'same'-padded, circular/reflect-padded and statically padded
    (TensorFlow-style, possibly asymmetric) convolutions, so every replacement computes
    exactly what the original did.
    """

    def __init__(self, padding: tuple[int, int, int, int], mode: str, layer: nn.Module):
        super().__init__()
        self.padding, self.mode, self.layer = tuple(int(p) for p in padding), mode, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(F.pad(x, self.padding, self.mode) if self.mode != "constant" else F.pad(x, self.padding))

    def describe(self) -> dict:
        # Its inner layer is described under "<name>.layer" and rebuilt after it.
        return {"padding": list(self.padding), "mode": self.mode}

    @classmethod
    def from_description(cls, entry: Entry) -> Padded:
        return cls(entry.integers("padding", 4, 0), entry.choice("mode", PADDING_MODES), nn.Identity())


def _static_padding(module: nn.Module) -> tuple[int, int, int, int] | None:
    """The (left, right, top, bottom) padding of a known static same-padding Conv2d wrapper."""
    pad = getattr(module, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        return tuple(int(p) for p in pad.padding)
    if pad is not None and type(pad).__name__ == "Identity" and not list(pad.parameters()):
        return (0, 0, 0, 0)
    return None


def explicit_padding(module: nn.Module) -> tuple[tuple[int, int, int, int], str] | None:
    """``((left, right, top, bottom), mode)`` when a Conv2d's padding must be applied before the product, else None."""
    if not isinstance(module, nn.Conv2d):
        return None
    if type(module).forward is not nn.Conv2d.forward and not isinstance(module, replacement_types()):
        static = _static_padding(module)
        return (static, "constant") if static is not None and module.padding == (0, 0) else None
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        mode = {"zeros": "constant"}.get(module.padding_mode, module.padding_mode)
        return tuple(module._reversed_padding_repeated_twice), mode
    return None


def _standard_forward(module: nn.Module) -> bool:
    for base in (nn.Linear, nn.Conv2d, nn.Embedding):
        if isinstance(module, base):
            return type(module).forward is base.forward or explicit_padding(module) is not None
    return False


def innermost(model: nn.Module, types: tuple[type[nn.Module], ...]) -> dict[str, nn.Module]:
    """The modules of ``types`` that hold no other module of ``types`` (a low-rank pair's two halves,
    not the pair), by name: each computation counted once."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, types) and not any(isinstance(c, types) for c in m.modules() if c is not m)}


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that holds a weight matrix (or is a netcompress replacement): what the Report accounts for."""
    own = replacement_types()
    found: dict[str, nn.Module] = {}
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") or prefix == "" for prefix in inside):
            continue
        weight = module._parameters.get("weight")
        if isinstance(module, own) or (isinstance(weight, torch.Tensor) and weight.dim() >= 2):
            found[name] = module
            inside.append(name)
    return found


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = module._parameters.get("weight")
        if isinstance(weight, torch.Tensor):
            owners.setdefault(id(weight), []).append(name)
    return owners


def unsupported_reason(model: nn.Module, name: str, module: nn.Module, accepts: tuple[type[nn.Module], ...],
                       owners: dict[int, list[str]] | None = None) -> str | None:
    """Why a method that takes ``accepts`` cannot compress this layer (None when it can)."""
    own = replacement_types()
    if isinstance(module, own):
        return None if type(module) in accepts else f"already compressed ({type(module).__name__})"
    kinds = tuple(t for t in accepts if t not in own)
    if not isinstance(module, kinds):
        return f"a {type(module).__name__} is not taken by this method (it takes {', '.join(t.__name__ for t in kinds)})"
    if not _standard_forward(module):
        return f"{type(module).__name__} overrides forward, so netcompress cannot tell what it computes"
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if name and isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention reads this projection's weight directly instead of calling it"
    owners = _shared_weights(model) if owners is None else owners
    sharing = [n for n in owners.get(id(module._parameters.get("weight")), []) if n != name]
    if sharing:
        return f"its weight is shared with {sharing[0]!r} (tied weights)"
    return None


def plain_layer(module: nn.Module) -> nn.Module:
    """The layer as the method sees it: for an explicitly padded conv, a plain unpadded Conv2d sharing its weights."""
    if explicit_padding(module) is None:
        return module
    plain = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, 0,
                      module.dilation, module.groups, module.bias is not None, device=module.weight.device,
                      dtype=module.weight.dtype)
    plain.weight, plain.bias = module.weight, module.bias
    return plain


def resolve_layers(
    model: nn.Module,
    layers: Iterable[str] | str | None,
    accepts: tuple[type[nn.Module], ...] = DENSE,
    exclude: Iterable[str] | str | None = None,
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Map the requested layer names (or ``"re:<regex>"`` patterns) to the model's modules.

    Returns ``(selected, skipped)``: the layers the method will compress, and for the other
    candidate layers of the default selection (``layers=None``) or of a pattern, the reason
    each is left as it is. A layer named explicitly that the method cannot take raises
    ``ValueError`` with the reason; so does an unknown name.
    """
    modules = dict(model.named_modules())
    candidates = candidate_layers(model)
    owners = _shared_weights(model)
    excluded = set(_match(modules, exclude, "exclude")) if exclude is not None else set()
    selected: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}

    def consider(name: str, explicit: bool) -> None:
        if name in excluded:
            skipped[name] = "excluded"
            return
        reason = unsupported_reason(model, name, modules[name], accepts, owners)
        if reason is None:
            selected[name] = modules[name]
        elif explicit:
            raise ValueError(f"layer {name!r} cannot be compressed by this method: {reason}")
        else:
            skipped[name] = reason

    if layers is None:
        for name in candidates:
            consider(name, explicit=False)
    else:
        for request in [layers] if isinstance(layers, str) else list(layers):
            if request.startswith("re:"):
                for name in _match(modules, request, "layers", candidates):
                    consider(name, explicit=False)
            elif request in modules and (request or request in candidates):
                consider(request, explicit=True)
            else:
                raise ValueError(f"layer {request!r} does not exist in the model; use a name from model.named_modules()")
    for name in candidates:
        if name not in selected and name not in skipped:
            skipped[name] = "not selected"
    if not selected:
        detail = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:3])
        raise ValueError(f"no layer of the model can be compressed by this method ({detail or 'no weight layers'})")
    return selected, skipped


def _match(modules: dict[str, nn.Module], requests: Iterable[str] | str, what: str,
           pool: dict[str, nn.Module] | None = None) -> list[str]:
    pool = modules if pool is None else pool
    names: list[str] = []
    for request in [requests] if isinstance(requests, str) else list(requests):
        if request.startswith("re:"):
            pattern = re.compile(request[3:])
            hits = [n for n in pool if n and pattern.fullmatch(n)]
            if not hits:
                raise ValueError(f"{what} pattern {request!r} matches no layer of the model")
            names += hits
        elif request in modules and request:
            names.append(request)
        else:
            raise ValueError(f"{what} names layer {request!r}, which the model does not have")
    return names


def explicit_names(layers: Iterable[str] | str | None) -> set[str]:
    """The layer names requested one by one (not by ``"re:"`` pattern)."""
    if layers is None:
        return set()
    return {n for n in ([layers] if isinstance(layers, str) else list(layers)) if not n.startswith("re:")}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` of ``model`` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for our ``progress`` flag (``None``: show only on a terminal)."""
    return None if progress is None else not progress
