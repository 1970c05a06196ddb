"""Which layers netcompress understands, finding them by name, and swapping them in place.

This module is the one place that decides what a layer *is* for every method, for
:func:`~netcompress.collect`, for structured tracing and for the Report:

* ``nn.Linear`` / ``nn.Conv2d`` and their subclasses whose ``forward`` is the standard one;
* convolutions whose padding is applied before the product (string padding such as
  ``"same"``, a non-zero ``padding_mode``, or a known *static same-padding* wrapper such as
  EfficientNet's ``Conv2dStaticSamePadding``): they are seen as a plain convolution on the
  explicitly padded input, and their replacement is wrapped in :class:`Padded`;
* netcompress's own replacement layers, which only the methods that take them compress again;
* layers re-parametrised by ``torch.nn.utils.prune`` (``weight_orig`` × ``weight_mask``),
  ``torch.nn.utils.weight_norm`` / ``spectral_norm`` (a forward pre-hook) or
  ``torch.nn.utils.parametrize`` (``parametrizations.weight_norm`` and any other parametrization):
  every method sees them through :func:`plain_layer`, a plain layer holding the *effective*
  weight and bias (what the layer computes with, in eval mode), so they are compressed like the
  equivalent plain layer; the replacement is a plain netcompress layer, the re-parametrisation
  is gone, and the Report's row says so (:func:`~netcompress._core.sources.reparametrized`).

Everything else with a weight matrix is a *candidate* that the Report lists as left dense,
with the reason. Where a layer's weight comes from (re-parametrisations, tied weights, a
parent reading it directly) is read in :mod:`netcompress._core.sources`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._core.description import Entry, describable, replacement_types
from netcompress._core.sources import _hook_tensor, _shared_weights, reparametrized, trainable, weight_sources

__all__ = [
    "DENSE",
    "Padded",
    "candidate_layers",
    "effective_tensor",
    "explicit_names",
    "explicit_padding",
    "plain_layer",
    "progress_disabled",
    "reparametrized_note",
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


# ---- re-parametrised layers: torch.nn.utils.prune, weight_norm, spectral_norm, parametrize -------------------------


@torch.no_grad()
def effective_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """The ``weight`` or ``bias`` the layer computes with (detached), re-parametrisation applied, as in eval mode.

    Recomputed from the re-parametrisation's own tensors (``weight_orig * weight_mask``), never
    read from the attribute the pre-hook last wrote, which is stale after a change to them.
    """
    from torch.nn.utils import parametrize, prune
    from torch.nn.utils.spectral_norm import SpectralNorm

    from netcompress._core.transaction import evaluating

    if parametrize.is_parametrized(module, name):
        with evaluating(module):  # a parametrization's training-mode step (spectral_norm's power iteration) is not run
            return getattr(module, name).detach()
    for hook in module._forward_pre_hooks.values():
        known = _hook_tensor(hook)
        if known is None or known[0] != name:
            continue
        if isinstance(hook, prune.BasePruningMethod):
            return hook.apply_mask(module).detach()
        if isinstance(hook, SpectralNorm):
            return hook.compute_weight(module, do_power_iteration=False).detach()
        return hook.compute_weight(module).detach()
    tensor = getattr(module, name, None)
    return tensor.detach() if isinstance(tensor, torch.Tensor) else None


def _has_weight_matrix(module: nn.Module) -> bool:
    weight = module._parameters.get("weight")
    if isinstance(weight, torch.Tensor):
        return weight.dim() >= 2
    if "weight" not in reparametrized(module):
        return False
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
        return True
    effective = effective_tensor(module, "weight")
    return effective is not None and effective.dim() >= 2


def _expected_weight_shape(module: nn.Module) -> tuple[int, ...] | None:
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    if isinstance(module, nn.Conv2d):
        return (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    if isinstance(module, nn.Embedding):
        return (module.num_embeddings, module.embedding_dim)
    return None


def _reparametrized_reason(module: nn.Module, kinds: dict[str, str]) -> str | None:
    """Why a re-parametrised layer cannot be seen as the equivalent plain layer (None when it can)."""
    utility = ", ".join(sorted(set(kinds.values())))
    if isinstance(module, replacement_types()):
        return f"a netcompress layer re-parametrised by {utility}; remove the re-parametrisation first"
    unknown = sorted(set(kinds) - {"weight", "bias"})
    if unknown:
        return f"its {unknown[0]!r} is re-parametrised by {utility}, which netcompress cannot carry over"
    weight = effective_tensor(module, "weight")
    expected = _expected_weight_shape(module)
    if weight is None or (expected is not None and tuple(weight.shape) != expected):
        shape = "none" if weight is None else "×".join(map(str, weight.shape))
        return f"re-parametrised by {utility} to a weight of shape {shape}, which does not fit the layer"
    return None


def reparametrized_note(module: nn.Module) -> str:
    """The Report's note for a compressed re-parametrised layer ("" for any other)."""
    kinds = reparametrized(module.layer if isinstance(module, Padded) else module)
    if not kinds:
        return ""
    utility = ", ".join(sorted(set(kinds.values())))
    return (f"re-parametrised by {utility}: compressed from the {' and '.join(sorted(kinds))} it computes with; "
            "the replacement is a plain netcompress layer, the re-parametrisation is gone")


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
        if isinstance(module, own) or _has_weight_matrix(module):
            found[name] = module
            inside.append(name)
    return found


def unsupported_reason(model: nn.Module, name: str, module: nn.Module, accepts: tuple[type[nn.Module], ...],
                       owners: dict[int, list[str]] | None = None) -> str | None:
    """Why a method that takes ``accepts`` cannot compress this layer (None when it can)."""
    own = replacement_types()
    if isinstance(module, own):
        if kinds := reparametrized(module):
            return _reparametrized_reason(module, kinds)
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
    kinds = reparametrized(module)
    if kinds:
        reason = _reparametrized_reason(module, kinds)
        if reason is not None:
            return reason
    owners = _shared_weights(model) if owners is None else owners
    weight = module._parameters.get("weight")
    sources = [weight] if weight is not None or not kinds else weight_sources(module)
    sharing = [n for source in sources for n in owners.get(id(source), []) if n != name]
    if sharing:
        return f"its weight is shared with {sharing[0]!r} (tied weights)"
    return None


def plain_layer(module: nn.Module) -> nn.Module:
    """The layer as the method sees it: itself, or a plain ``nn.Linear``/``nn.Conv2d``/``nn.Embedding``.

    An explicitly padded conv is seen as a plain unpadded Conv2d sharing its weights. A
    re-parametrised layer (:func:`reparametrized`) is seen as the plain layer of its *effective*
    weight and bias (:func:`effective_tensor`), fresh parameters that keep the re-parametrised
    ones' ``requires_grad``; its other tensors are shared.
    """
    padding = explicit_padding(module)
    kinds = reparametrized(module) if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)) else {}
    if padding is None and not kinds:
        return module

    def tensor(name: str) -> nn.Parameter | None:
        if name not in kinds:
            return getattr(module, name)
        value = effective_tensor(module, name)
        return None if value is None else nn.Parameter(value.clone(), requires_grad=bool(trainable(module, name)))

    weight, bias = tensor("weight"), tensor("bias") if not isinstance(module, nn.Embedding) else None
    if isinstance(module, nn.Embedding):
        plain = nn.Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx, module.max_norm,
                             module.norm_type, module.scale_grad_by_freq, module.sparse, device="meta")
    elif isinstance(module, nn.Conv2d):
        plain = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                          0 if padding is not None else module.padding, module.dilation, module.groups,
                          bias is not None, device="meta")
    else:
        plain = nn.Linear(module.in_features, module.out_features, bias is not None, device="meta")
    plain.weight = weight
    if not isinstance(module, nn.Embedding):
        plain.bias = bias
    plain.train(module.training)
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
