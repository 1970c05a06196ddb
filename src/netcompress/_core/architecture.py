"""The fingerprint of a model's *original* architecture, recorded in manifests and checked on load.

A fingerprint maps each layer name to what the layer was before compression: its kind
(``linear``, ``conv2d``, ``batchnorm``, ``embedding``) and its sizes. It can be computed from
a compressed model, because netcompress's replacement layers know the sizes of the layer
they replaced (a rank-``r`` ``LowRankLinear`` still has ``in_features``/``out_features``),
and from a freshly built original model, so :func:`check` compares the two before ``load``
changes anything.

Structured pruning (``activation``, ``channel``) leaves *plain* layers that are smaller than
the originals, and a plain layer cannot tell what size it had. Its entry is marked
``"exact": false``: on load its sizes may be at most the fresh model's, and only in pairs a
pruning can make (an output removed somewhere is read by an input removed somewhere).
A replaced module that carries the attribute ``_netcompress_original`` (set by ``load`` on
the layers it rebuilds, and by anything that wants an exact record) is recorded exactly.
"""

from __future__ import annotations

from torch import nn

__all__ = ["ORIGINAL", "check", "fingerprint", "remember_original"]

ORIGINAL = "_netcompress_original"
_SIZES = {"linear": ("in", "out"), "conv2d": ("in", "out"), "batchnorm": ("features",), "embedding": ("num", "dim")}
_PLAIN = {nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d}


def _resizable(module: nn.Module) -> bool:
    """A layer structured pruning leaves smaller without a record: plain, or plain but for a mask."""
    return type(module) in _PLAIN or getattr(type(module), "masked", False)


def _kernel(module: nn.Module) -> list[int] | None:
    for candidate in (module, getattr(module, "down", None)):
        size = getattr(candidate, "kernel_size", None)
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return [int(s) for s in size]
    return None


def _entry(module: nn.Module) -> dict | None:
    """What ``module`` was before compression, or None when it is not a layer netcompress compresses."""
    original = getattr(module, ORIGINAL, None)
    if isinstance(original, dict):
        return dict(original)
    inner = module.__dict__.get("_modules", {}).get("layer")
    if type(module).__name__ == "Padded" and inner is not None:  # an explicitly padded conv's replacement
        return _entry(inner)
    exact = not _resizable(module)
    own = type(module).__module__.startswith("netcompress.")  # our replacements know the sizes they replaced
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"kind": "batchnorm", "features": int(module.num_features), "exact": exact}
    if isinstance(module, nn.Embedding) or own and hasattr(module, "num_embeddings"):
        return {"kind": "embedding", "num": int(module.num_embeddings), "dim": int(module.embedding_dim), "exact": True}
    if isinstance(module, nn.Linear) or own and hasattr(module, "in_features") and hasattr(module, "out_features"):
        return {"kind": "linear", "in": int(module.in_features), "out": int(module.out_features), "exact": exact}
    if isinstance(module, nn.Conv2d) or own and hasattr(module, "in_channels") and hasattr(module, "out_channels"):
        entry = {"kind": "conv2d", "in": int(module.in_channels), "out": int(module.out_channels), "exact": exact}
        if hasattr(module, "groups"):
            entry["groups"] = int(module.groups)
        kernel = _kernel(module)
        return entry if kernel is None else {**entry, "kernel": kernel}
    return None


def fingerprint(model: nn.Module) -> dict[str, dict]:
    """Layer name → original kind and sizes, for every compressible layer (not their insides)."""
    found = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if "" in found or any(".".join(parts[:i]) in found for i in range(1, len(parts))):
            continue  # inside a layer already recorded (a low-rank pair, a padded wrapper)
        entry = _entry(module)
        if entry is not None:
            found[name] = entry
    return found


def remember_original(new: nn.Module, old: nn.Module) -> None:
    """Record on ``new`` the exact original entry of ``old``, the layer it replaces."""
    entry = _entry(old)
    if entry is not None:
        setattr(new, ORIGINAL, {**entry, "exact": True})


def _show(entry: dict) -> str:
    kind = entry.get("kind")
    if kind == "linear":
        return f"Linear({entry.get('in')}→{entry.get('out')})"
    if kind == "conv2d":
        kernel = entry.get("kernel")
        kernel = "×".join(map(str, kernel)) if isinstance(kernel, list) and kernel else "?×?"
        groups = f", groups {entry.get('groups')}" if entry.get("groups", 1) != 1 else ""
        return f"Conv2d({entry.get('in')}→{entry.get('out')}, {kernel}{groups})"
    if kind == "batchnorm":
        return f"BatchNorm({entry.get('features')})"
    if kind == "embedding":
        return f"Embedding({entry.get('num')}×{entry.get('dim')})"
    return f"an unknown layer kind {kind!r}"


def _compare(saved: object, fresh: dict) -> dict[str, str] | None:
    """None when ``saved`` does not fit ``fresh``; else which sizes pruning shrank ({size: "shrunk"})."""
    if not isinstance(saved, dict) or saved.get("kind") != fresh["kind"]:
        return None
    for key in ("kernel", "groups"):
        if key in saved and key in fresh and saved[key] != fresh[key]:
            return None
    shrunk = {}
    for key in _SIZES[fresh["kind"]]:
        value = saved.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        if value != fresh[key]:
            if saved.get("exact", True) is not False or not 1 <= value < fresh[key]:
                return None
            shrunk[key] = "shrunk"
    return shrunk


def check(model: nn.Module, recorded: object, source: str) -> dict[str, dict]:
    """Raise ``ValueError`` naming the first layer where ``model`` differs from the ``recorded`` fingerprint.

    Returns the fingerprint of ``model`` (the exact originals, for :func:`remember_original`).
    """
    if not isinstance(recorded, dict):
        raise ValueError(f"{source} is corrupt: its 'architecture' must be an object of layer name → description")
    fresh = fingerprint(model)
    hint = "build the architecture the file was saved from"
    outputs, inputs = [], []
    for name, entry in fresh.items():
        if name not in recorded:
            raise ValueError(f"{source} was saved from another architecture: this model's layer {name!r} "
                             f"({_show(entry)}) is not in it; {hint}")
        shrunk = _compare(recorded[name], entry)
        if shrunk is None:
            saved = recorded[name] if isinstance(recorded[name], dict) else {}
            raise ValueError(f"{source} was saved from another architecture: layer {name!r} was {_show(saved)} there "
                             f"and is {_show(entry)} here; {hint}")
        if "out" in shrunk:
            outputs.append(name)
        if "in" in shrunk or "features" in shrunk:
            inputs.append(name)
    extra = [name for name in recorded if name not in fresh]
    if extra:
        raise ValueError(f"{source} was saved from another architecture: its layer {extra[0]!r} is not in this model; "
                         f"{hint}")
    # Pruning removes a unit's output together with the inputs that read it: one without the other is another model.
    if bool(outputs) != bool(inputs):
        name = (outputs or inputs)[0]
        raise ValueError(f"{source} was saved from another architecture: layer {name!r} was "
                         f"{_show(recorded[name])} there and is {_show(fresh[name])} here; {hint}")
    return fresh
