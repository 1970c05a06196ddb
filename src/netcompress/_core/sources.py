"""Where a layer's weight comes from: its own parameter, a re-parametrisation's, a tied one, or its parent's code.

* re-parametrisations by ``torch.nn.utils.prune`` (``weight_orig`` × ``weight_mask``),
  ``weight_norm`` / ``spectral_norm`` (a forward pre-hook) and ``torch.nn.utils.parametrize``:
  which tensors they compute (:func:`reparametrized`) and from which parameters (:func:`weight_sources`);
* whether those parameters are trained, and giving a replacement the same flags (:func:`copy_trainability`);
* weights shared between layers (tied weights), and layers whose parent's class reads their
  weight directly in its source (:func:`read_in_source`).

What the layer computes with is :func:`netcompress._core.layers.effective_tensor`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["copy_trainability", "read_in_source", "reparametrized", "trainable", "weight_sources"]


def _hook_tensor(hook: object) -> tuple[str, str] | None:
    """(tensor name, the torch utility) of a forward pre-hook that recomputes a tensor before each call."""
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if isinstance(hook, prune.BasePruningMethod):
        return hook._tensor_name, "torch.nn.utils.prune"
    if isinstance(hook, WeightNorm):
        return hook.name, "torch.nn.utils.weight_norm"
    if isinstance(hook, SpectralNorm):
        return hook.name, "torch.nn.utils.spectral_norm"
    return None


def reparametrized(module: nn.Module) -> dict[str, str]:
    """Tensor name → the torch utility re-parametrising it (``{"weight": "torch.nn.utils.prune"}``); ``{}`` if none.

    Such a layer holds no plain ``weight`` parameter: its weight is computed from others
    (``weight_orig`` × ``weight_mask``, ``g·v/‖v‖``, a parametrization's ``original``) before
    each call.
    """
    from torch.nn.utils import parametrize

    found: dict[str, str] = {}
    if parametrize.is_parametrized(module):
        for tensor, chain in module.parametrizations.items():
            weight_norm = any(type(p).__name__ == "_WeightNorm" for p in chain)
            found[tensor] = ("torch.nn.utils.parametrizations.weight_norm" if weight_norm
                             else "torch.nn.utils.parametrize")
    for hook in module._forward_pre_hooks.values():
        known = _hook_tensor(hook)
        if known is not None:
            found.setdefault(*known)
    return found


def weight_sources(module: nn.Module, name: str = "weight") -> list[nn.Parameter]:
    """The parameters the layer's ``weight`` (or ``bias``) is computed from: itself, or ``weight_orig``,
    ``weight_g``/``weight_v``, a parametrization's ``original`` and its own parameters."""
    return [p for key, p in module.named_parameters()
            if key == name or key.startswith(f"{name}_") or key.startswith(f"parametrizations.{name}.")]


def trainable(module: nn.Module, name: str = "weight") -> bool | None:
    """Whether the layer's ``weight`` (or ``bias``) is trained: any of its :func:`weight_sources` requires grad.

    ``None`` when the layer has no such parameter (a replacement without a ``weight``: then any
    of its parameters but the bias decides for the weight).
    """
    sources = weight_sources(module, name)
    if not sources and name == "weight":
        sources = [p for key, p in module.named_parameters() if key.rpartition(".")[2] != "bias"]
    return any(p.requires_grad for p in sources) if sources else None


def copy_trainability(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give ``new``'s parameters the ``requires_grad`` of what they replace in ``old``; returns ``new``.

    A parameter named ``bias`` takes the flag of ``old``'s bias; every other one (factors, codebooks,
    scales: all derived from the weight) the flag of ``old``'s weight. A layer the user froze
    stays frozen, a trainable one stays trainable (an integer tensor cannot require grad and is left).
    """
    weight, bias = trainable(old, "weight"), trainable(old, "bias")
    for key, parameter in new.named_parameters():
        flag = bias if key.rpartition(".")[2] == "bias" and bias is not None else weight
        if flag is None or (flag and not (parameter.is_floating_point() or parameter.is_complex())):
            continue
        parameter.requires_grad_(flag)
    return new


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """id of each parameter a layer's weight comes from (itself, or ``weight_orig``…) → the layers it comes into."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = module._parameters.get("weight")
        sources = [weight] if isinstance(weight, torch.Tensor) else (
            weight_sources(module) if "weight" in reparametrized(module) else [])
        for source in sources:
            owners.setdefault(id(source), []).append(name)
    return owners


def read_in_source(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """Layers whose parent's class reads their weight directly in its source (``self.qkv.weight``), with the reason.

    What ``compress`` knows without data (with data, :func:`~netcompress.collect` sees the reads
    themselves): torchvision's Swin passes ``self.qkv.weight`` to ``F.linear`` and never calls
    ``qkv``, so a replacement without an equivalent ``weight`` would be computed with by no one.
    A parent whose source cannot be read is taken to call its children.
    """
    import inspect

    sources: dict[type, str] = {}
    found: dict[str, str] = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        if not child:
            continue
        kind = type(model.get_submodule(parent_name) if parent_name else model)
        if kind not in sources:
            try:
                sources[kind] = inspect.getsource(kind)
            except (OSError, TypeError):
                sources[kind] = ""
        if re.search(rf"\.{re.escape(child)}\s*\.\s*weight\b", sources[kind]):
            found[name] = (f"its parent {parent_name or 'the model'!r} reads its weight directly "
                           f"(self.{child}.weight in {kind.__name__})")
    return found
