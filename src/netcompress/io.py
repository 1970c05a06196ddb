"""Saving a compressed model as safetensors weights plus a JSON manifest, and loading it back.

``save(model, path)`` makes a directory ``path`` holding

* ``model.safetensors``: the whole ``state_dict`` of the compressed model;
* ``manifest.json``: the type and shape of every layer (see :mod:`netcompress.modules`),
  so that replaced, factorized, pruned-to-size and quantized layers can be rebuilt;
* ``report.json`` (when a report is given).

``load(model, path)`` takes a freshly built *original* architecture, rebuilds every
layer whose description differs from the manifest's, and loads the weights strictly. Nothing is
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
from .modules import build, describe
from .report import Report

__all__ = ["apply_manifest", "atomic_write_bytes", "load", "manifest", "read_report", "save"]

FORMAT = "netcompress.manifest"
VERSION = 2
WEIGHTS, MANIFEST, REPORT = "model.safetensors", "manifest.json", "report.json"


def _umask_mode(full: int) -> int:
    """``full`` (0o666 for files, 0o777 for directories) under the process umask, as open() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return full & ~mask


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def manifest(model: nn.Module) -> dict:
    """The architecture record of ``model``: a description of every layer netcompress knows."""
    layers = {name: d for name, m in model.named_modules() if name and (d := describe(m)) is not None}
    return {"format": FORMAT, "version": VERSION, "layers": layers}


def apply_manifest(model: nn.Module, record: object, source: str) -> None:
    """Rebuild, in ``model``, every layer whose description differs from ``record`` (parents first)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{source} is not a netcompress manifest (its 'format' is not {FORMAT!r})")
    if record.get("version") != VERSION:
        raise ValueError(f"{source} has version {record.get('version')!r}; this netcompress reads version {VERSION}")
    layers = record.get("layers")
    if not isinstance(layers, dict):
        raise ValueError(f"{source} is corrupt: 'layers' must be an object of layer name → description")
    for name, entry in layers.items():
        try:
            current = model.get_submodule(name) if isinstance(name, str) and name else None
        except AttributeError:
            current = None
        if current is None:
            raise ValueError(f"{source} describes layer {name!r}, which this model does not have; build the original architecture")
        if describe(current) != entry:
            replace_module(model, name, build(entry, f"{source}, layer {name!r}"))


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
        (staging / MANIFEST).write_text(json.dumps(manifest(model), indent=2))
        if report is not None:
            (staging / REPORT).write_text(report.to_json())
        os.chmod(staging, _umask_mode(0o777))  # mkdtemp makes 0700 directories
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
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is corrupt: not valid JSON ({error})") from None


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Re-apply the replacements saved at ``path`` to ``model`` (a fresh original architecture) and load the weights."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory written by netcompress.save")
    apply_manifest(model, _read_manifest(path), str(path / MANIFEST))
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
