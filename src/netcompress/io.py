"""Saving a compressed model as safetensors weights plus a JSON manifest, and loading it back.

``save(model, path)`` makes a directory ``path`` holding

* ``model.safetensors``: the whole ``state_dict`` of the compressed model;
* ``manifest.json``: which layers were replaced, by what, with which rank;
* ``report.json`` (when a report is given).

``load(model, path)`` takes a freshly built *original* architecture, rebuilds the
replacements named in the manifest and loads the weights strictly. Nothing is
unpickled. The directory is written under a temporary name and renamed into
place, so an interrupted save never leaves a half-written result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._layers import replace_module
from .lowrank import LowRankConv2d, LowRankLinear, build_low_rank
from .report import Report

__all__ = ["atomic_write_bytes", "load", "read_report", "save"]

FORMAT = "netcompress.manifest"
VERSION = 1
WEIGHTS, MANIFEST, REPORT = "model.safetensors", "manifest.json", "report.json"
_REPLACEMENTS = {"LowRankLinear": (LowRankLinear, nn.Linear), "LowRankConv2d": (LowRankConv2d, nn.Conv2d)}


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _manifest(model: nn.Module) -> dict:
    replacements = {}
    for name, module in model.named_modules():
        if isinstance(module, (LowRankLinear, LowRankConv2d)):
            replacements[name] = {"type": type(module).__name__, "rank": module.rank, "bias": module.up.bias is not None}
    return {"format": FORMAT, "version": VERSION, "replacements": replacements}


def save(model: nn.Module, path: str | os.PathLike, report: Report | None = None) -> Path:
    """Write ``model`` (compressed in place by :func:`compress`) to the directory ``path``.

    An existing directory at ``path`` is replaced only once the new one is complete.
    Returns the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory; choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, staging / WEIGHTS, metadata={"format": FORMAT})
        (staging / MANIFEST).write_text(json.dumps(_manifest(model), indent=2))
        if report is not None:
            (staging / REPORT).write_text(report.to_json())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not file.is_file():
        raise ValueError(f"{path} has no {MANIFEST}; it was not written by netcompress.save")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is corrupt: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{file} is not a netcompress manifest (its 'format' is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{file} has version {manifest.get('version')!r}; this netcompress reads version {VERSION}")
    if not isinstance(manifest.get("replacements"), dict):
        raise ValueError(f"{file} is corrupt: 'replacements' must be an object of layer name → replacement")
    return manifest


def _rebuild(model: nn.Module, name: str, entry: object, file: Path) -> None:
    if not isinstance(entry, dict) or entry.get("type") not in _REPLACEMENTS:
        raise ValueError(f"{file}: replacement of layer {name!r} has an unknown type; expected one of {', '.join(_REPLACEMENTS)}")
    rank, bias = entry.get("rank"), entry.get("bias")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 or not isinstance(bias, bool):
        raise ValueError(f"{file}: replacement of layer {name!r} needs a positive integer 'rank' and a boolean 'bias'")
    _, original_type = _REPLACEMENTS[entry["type"]]
    try:
        original = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{file} replaces layer {name!r}, which this model does not have; build the original architecture") from None
    if type(original) is not original_type:
        raise ValueError(
            f"{file} replaces layer {name!r} with a {entry['type']}, but the model's layer is a "
            f"{type(original).__name__}, not an {original_type.__name__}"
        )
    replace_module(model, name, build_low_rank(original, rank, bias))


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Re-apply the replacements saved at ``path`` to ``model`` (a fresh original architecture) and load the weights."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory written by netcompress.save")
    manifest = _read_manifest(path)
    for name, entry in manifest["replacements"].items():
        _rebuild(model, name, entry, path / MANIFEST)
    try:
        state = load_file(path / WEIGHTS)
    except (SafetensorError, FileNotFoundError, OSError) as error:
        raise ValueError(f"{path / WEIGHTS} cannot be read as safetensors ({error})") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise ValueError(f"{path / WEIGHTS} does not fit the model ({first}); build the same original architecture") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path / WEIGHTS} does not match the model (missing: {result.missing_keys[:5]}, "
            f"unexpected: {result.unexpected_keys[:5]}); build the same original architecture"
        )
    return model


def read_report(path: str | os.PathLike) -> Report:
    """The :class:`Report` saved beside a compressed model."""
    file = Path(path) / REPORT
    if not file.is_file():
        raise ValueError(f"{path} holds no {REPORT}; save it with netcompress.save(model, path, report)")
    return Report.from_json(file.read_text())
