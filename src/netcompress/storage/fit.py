"""Whether a manifest's layer description may replace a layer of the fresh original model.

The architecture fingerprint says what each layer *was*; a description says what ``load``
will build in its place. A compression changes a layer's representation (factors, masks,
codes) and may shrink its widths (structured pruning), but never its geometry: a kernel,
stride, padding, dilation, a normalisation's epsilon or an embedding's padding row are the
original's, or the model computes something else. A forged description that keeps the
fingerprint but changes a stride would load silently and change the outputs; here it is one
sentence naming the layer and the field, checked before anything is built.
"""

from __future__ import annotations

from torch import nn

from netcompress._core.description import conv_fields, linear_fields
from netcompress._core.layers import explicit_padding

__all__ = ["check_fits"]

_WIDTHS = ("in_features", "out_features", "in_channels", "out_channels", "num_features")
_KINDS = {"in_features": "a linear layer", "in_channels": "a convolution", "num_features": "a normalisation",
          "num_embeddings": "an embedding", "mode": "an explicitly padded convolution"}


def _fields(module: nn.Module) -> dict | None:
    """The description fields ``module`` fixes (as :func:`describe` writes them), by the kind of layer it is."""
    if isinstance(module, nn.Linear):
        return linear_fields(module)
    if isinstance(module, nn.Conv2d):
        padded = explicit_padding(module)
        fields = {**conv_fields(module), "groups": module.groups}
        if padded is not None:  # its replacement is Padded(pad, mode, conv with no padding of its own)
            fields.update(padding=[0, 0], explicit=padded)
        return fields
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"num_features": module.num_features, "eps": module.eps, "momentum": module.momentum,
                "affine": module.affine, "track_running_stats": module.track_running_stats}
    if isinstance(module, nn.Embedding):
        return {"num_embeddings": module.num_embeddings, "embedding_dim": module.embedding_dim,
                "padding_idx": module.padding_idx}
    return None


def _kind(entry: dict) -> str:
    return next((kind for key, kind in _KINDS.items() if key in entry), f"a {entry.get('type')}")


def check_fits(entry: dict, fresh: nn.Module, where: str) -> None:
    """Raise ``ValueError`` unless the description ``entry`` may stand where ``fresh`` (the original layer) is.

    Widths may shrink (structured pruning), nothing else may change; a depthwise
    convolution stays depthwise when its channels shrink.
    """
    hint = "build the original architecture, or save the model again"
    fields = _fields(fresh)
    kind = next((key for key in _KINDS if key in entry), None)
    if fields is None or kind is None or (kind != "mode" and kind not in fields) \
            or (kind == "mode" and "in_channels" not in fields):
        raise ValueError(f"{where}: it describes {_kind(entry)}, but this model's layer is a {type(fresh).__name__}; "
                         f"{hint}")
    if "mode" in entry:  # Padded: the explicit padding of the original, its inner layer checked under '.layer'
        expected = fields.get("explicit")
        if expected is None or [entry.get("padding"), entry.get("mode")] != [list(expected[0]), expected[1]]:
            raise ValueError(f"{where}: field 'padding' {entry.get('padding')!r} ({entry.get('mode')!r}) is not "
                             f"the padding this model's {type(fresh).__name__} applies; {hint}")
        return
    for key, value in entry.items():
        if key not in fields or key in ("type", "explicit"):
            continue
        original = fields[key]
        if key in _WIDTHS:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= original:
                raise ValueError(f"{where}: field {key!r} is {value!r}, but this model's layer has {original} "
                                 f"(pruning may only shrink it); {hint}")
        elif key == "groups":
            depthwise = fields["groups"] == fields["in_channels"] and value == entry.get("in_channels")
            if value != original and not depthwise:
                raise ValueError(f"{where}: field 'groups' is {value!r}, but this model's layer has {original}; {hint}")
        elif value != (list(original) if isinstance(original, tuple) else original):
            raise ValueError(f"{where}: field {key!r} is {value!r}, but this model's layer has {original!r}; "
                             "a compression never changes it; " + hint)
    if "in_channels" in entry and "groups" not in entry and fields["groups"] != 1:
        raise ValueError(f"{where}: it describes an ungrouped convolution, but this model's layer has groups "
                         f"{fields['groups']}; {hint}")
