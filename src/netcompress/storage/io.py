"""Saving a compressed model as safetensors weights plus a JSON manifest, and loading it back.

``save(model, path)`` writes into the directory ``path``

* ``model.safetensors``: the whole ``state_dict`` of the compressed model, sub-byte codes packed
  (two 4-bit codes per byte; see :mod:`netcompress.storage.packing`);
* ``manifest.json``: the type and shape of every layer (see :mod:`netcompress._core.description`), so that
  replaced, factorized, pruned-to-size and quantized layers can be rebuilt; a fingerprint of the
  *original* architecture (see :mod:`netcompress._core.architecture`); the SHA-256 of the weights;
* ``report.json`` (when a report is given).

These three names are netcompress's own files; ``save`` never deletes or overwrites any other
file. Each file is written under a temporary name and renamed into place, the manifest last, so
a reader sees either the old save or the new one (a crash between renames leaves weights whose
checksum the old manifest refuses).

``load(model, path)`` takes a freshly built *original* architecture, checks it against the
fingerprint, rebuilds every layer whose description differs from the manifest's (in the dtype
and on the device of the layer it replaces), and loads the weights strictly: all or nothing.
Nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import netcompress._core.architecture as _architecture
from netcompress._core.atomic import atomic_write_bytes, sha256, staged_name, vouched, write_vouched
from netcompress._core.description import build, check_type, describe
from netcompress._core.files import read_json, require_regular
from netcompress._core.layers import replace_module
from netcompress._core.sizes import PACKED_LEAVES
from netcompress._core.sources import copy_trainability
from netcompress._core.transaction import all_or_nothing
from netcompress.report import Report
from netcompress.storage.fit import check_fits
from netcompress.storage.packing import pack_codes, unpack_codes

__all__ = ["apply_manifest", "atomic_write_bytes", "check_save_target", "load", "manifest", "read_report", "save"]

FORMAT = "netcompress.manifest"
VERSION = 5
# 2: no architecture fingerprint (only layer names are checked); 3: codes one per byte; 4: scales in float32
# and zero points one per byte
READABLE = (2, 3, 4, 5)
WEIGHTS, MANIFEST, REPORT = "model.safetensors", "manifest.json", "report.json"
OWN_FILES = (WEIGHTS, MANIFEST, REPORT)


def manifest(model: nn.Module) -> dict:
    """The architecture record of ``model``: every layer netcompress knows, and the original's fingerprint."""
    layers = {}
    for name, module in model.named_modules():
        if not name:
            continue
        entry = describe(module)
        if entry is None and isinstance(getattr(module, _architecture.ORIGINAL, None), dict):
            raise ValueError(f"layer {name!r} is a {type(module).__name__}, which netcompress put there but cannot "
                             "describe; decorate its class with netcompress._core.description.describable")
        if entry is not None:
            layers[name] = entry
    return {"format": FORMAT, "version": VERSION, "layers": layers, "architecture": _architecture.fingerprint(model)}


def _check_record(record: object, source: str) -> dict:
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{source} is not a netcompress manifest (its 'format' is not {FORMAT!r})")
    if record.get("version") not in READABLE:
        raise ValueError(f"{source} has version {record.get('version')!r}; this netcompress reads versions "
                         f"{', '.join(map(str, READABLE))}, so save the model again with it")
    if not isinstance(record.get("layers"), dict):
        raise ValueError(f"{source} is corrupt: 'layers' must be an object of layer name → description")
    return record


def _like(new: nn.Module, *olds: nn.Module) -> nn.Module:
    """``new`` moved to the device and floating dtype of the first of ``olds`` that has tensors.

    Integer codes and boolean masks keep their dtype.
    """
    for old in olds:
        tensors = [*old.parameters(), *old.buffers()]
        floating = [t for t in tensors if t.is_floating_point()]
        if floating:
            return new.to(device=floating[0].device, dtype=floating[0].dtype)
        if tensors:
            return new.to(device=tensors[0].device)
    return new


def _outermost(planned: dict[str, nn.Module], name: str) -> str | None:
    parts = name.split(".")
    return next((p for i in range(1, len(parts)) if (p := ".".join(parts[:i])) in planned), None)


def _plan(model: nn.Module, record: object, source: str, built: dict[str, int] | None = None) -> dict[str, nn.Module]:
    """Check ``record`` against ``model`` and build every replacement layer, changing nothing in ``model``.

    Under ``torch.device("meta")`` this allocates nothing: :func:`load` does that first, to size
    every layer against the weights file before it builds them for real (``built`` collects the
    elements each description builds, including those a later description of a child replaces).
    """
    record = _check_record(record, source)
    originals = None
    if record["version"] >= 3:
        originals = _architecture.check(model, record.get("architecture"), source)
    meta = torch.empty(0).is_meta
    planned: dict[str, nn.Module] = {}
    replaced: dict[str, nn.Module] = {}  # the model's layer that each planned one replaces
    for name, entry in record["layers"].items():
        if not name:
            raise ValueError(f"{source} is corrupt: a layer has an empty name")
        parent = _outermost(planned, name)
        try:
            current = planned[parent].get_submodule(name[len(parent) + 1:]) if parent else model.get_submodule(name)
        except AttributeError:
            current = None
        if current is None:
            raise ValueError(f"{source} describes layer {name!r}, which this model does not have; "
                             "build the original architecture")
        if describe(current) == entry:
            continue
        where = f"{source}, layer {name!r}"
        check_type(entry, where)
        # A wrapper's placeholder child (say nn.Identity) holds no tensors: then the replaced layer decides.
        placeholder = parent is not None and isinstance(current, nn.Identity)
        check_fits(entry, replaced[parent] if placeholder else current, where)
        new = build(entry, where)
        if built is not None:
            built[name] = sum(t.numel() for t in new.state_dict().values())
        if not meta:
            new = _like(new, current, replaced.get(parent, current))
            copy_trainability(new, replaced.get(parent, current) if placeholder else current)
        new.train(current.training)  # a rebuilt layer keeps the train/eval mode of the one it replaces
        if parent:
            replace_module(planned[parent], name[len(parent) + 1:], new)
        else:
            planned[name], replaced[name] = new, current
    if originals is not None:  # a rebuilt layer knows exactly what it replaced, so a re-save records it exactly
        for name, new in planned.items():
            if name in originals:
                setattr(new, _architecture.ORIGINAL, {**originals[name], "exact": True})
    return planned


def _stored_shapes(weights: Path) -> dict[str, list[int]]:
    """Tensor name → shape in a safetensors file, from its header only (safetensors checks it against the file size)."""
    try:
        with safe_open(str(weights), "pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights} cannot be read as safetensors ({error})") from None


def _check_sizes(planned: dict[str, nn.Module], built: dict[str, int], stored: dict[str, list[int]], source: str,
                 weights: Path) -> None:
    """Every tensor of every layer ``load`` would build (sized on ``meta``) must be in the weights file, with its shape.

    Codes and zero points packed below 8 bits are stored as 1-D bytes, at least an eighth of their count (their
    exact packing is checked by :func:`unpack_codes`); and no description may build more than
    8× the elements the file stores under its name (a parent built before its children's
    descriptions replace them). So a forged manifest allocates no more than 8× what the weights hold.
    """
    for name, module in planned.items():
        for key, tensor in module.state_dict().items():
            found = stored.get(f"{name}.{key}")
            count = tensor.numel()
            if key.rsplit(".", 1)[-1] in PACKED_LEAVES and isinstance(found, list) and len(found) == 1 \
                    and -(-count // 8) <= found[0] <= count:
                continue
            if found != list(tensor.shape):
                raise ValueError(f"{source}: layer {name!r} needs {key} of shape {list(tensor.shape)}, but {weights} "
                                 f"stores {found}; the manifest does not belong to these weights, so save the model "
                                 "again")
    for name, count in built.items():
        held = sum(math.prod(shape) for key, shape in stored.items() if key.startswith(f"{name}."))
        if count > 8 * held:
            raise ValueError(f"{source}: layer {name!r} describes {count:,} elements, but {weights} holds "
                             f"{held:,} for it; the manifest does not belong to these weights, so save the model again")


def apply_manifest(model: nn.Module, record: object, source: str) -> None:
    """Rebuild, in ``model``, every layer whose description differs from ``record``.

    Everything is checked and built first (the architecture fingerprint, every description),
    so on an error ``model`` is unchanged. Loading the weights is the caller's part; wrap both
    in :func:`netcompress._core.transaction.all_or_nothing` to undo the swap if the weights fail.
    """
    for name, new in _plan(model, record, source).items():
        replace_module(model, name, new)


def _ignorable(entry: Path) -> bool:
    """A temporary file of a netcompress write (``.name.XXXXXXXX.tmp``, ``.name.next``): never the user's."""
    pattern = r"\..+\.[A-Za-z0-9_]{8}\.tmp|" + "|".join(re.escape(staged_name(name)) for name in OWN_FILES)
    return re.fullmatch(pattern, entry.name) is not None and entry.is_file()


def _vouching(path: Path) -> tuple[dict, dict] | None:
    """What the manifest in ``path`` vouches for (file → SHA-256) and what it removed; None without one.

    A manifest of an older netcompress names no digests for its report: the report in place is taken as its own.
    """
    record = _current_record(path)
    if record is None:
        return None
    digests = record.get("sha256")
    if not isinstance(digests, dict):
        digests = {WEIGHTS: record.get("weights_sha256")}
        files = record.get("files")
        if (path / REPORT).is_file() and (not isinstance(files, list) or REPORT in files):
            digests[REPORT] = sha256(path / REPORT)
    removes = record.get("removes")
    return ({k: v for k, v in digests.items() if isinstance(v, str)},
            {k: v for k, v in removes.items() if isinstance(v, str)} if isinstance(removes, dict) else {})


def _current_record(path: Path) -> dict | None:
    """The manifest in ``path`` if it is a netcompress manifest, else None."""
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        record = read_json(file, "manifest")
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def _previous_files(path: Path) -> tuple[str, ...] | None:
    """The files an earlier ``save`` wrote in ``path`` (from its manifest), or None if ``path`` is not its output."""
    record = _current_record(path)
    if record is None:
        return None
    files = record.get("files")
    if not isinstance(files, list):  # version 2 wrote the weights, the manifest and maybe a report
        return OWN_FILES
    return tuple(f for f in files if f in OWN_FILES)


def check_save_target(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise ``ValueError`` unless :func:`save` may write to ``path``; writes nothing.

    ``path`` may be new, an empty directory or an earlier netcompress output; another non-empty
    directory only with ``overwrite=True``, and then only netcompress's own files in it are replaced.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory; choose another output path")
    if not path.is_dir():
        above = next((p for p in path.absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise ValueError(f"{path} is inside {above}, which is not a directory; choose another output path")
        return
    for own in OWN_FILES:
        if (path / own).exists() and not (path / own).is_file():
            raise ValueError(f"{path / own} exists and is not a file; choose another output directory")
    foreign = any(not _ignorable(entry) for entry in path.iterdir())
    if foreign and not overwrite and _previous_files(path) is None:
        raise ValueError(
            f"{path} is a non-empty directory that netcompress did not write; choose a new or empty directory, "
            f"or pass overwrite=True (--force) to replace only {', '.join(OWN_FILES)} in it"
        )


def save(model: nn.Module, path: str | os.PathLike, report: Report | None = None, *, overwrite: bool = False) -> Path:
    """Write ``model`` (compressed in place by :func:`compress`) to the directory ``path``; returns the path.

    ``path`` may be new, empty, or an earlier output of ``save`` (its files are replaced). A
    non-empty directory that netcompress did not write is refused unless ``overwrite=True``,
    and even then only ``model.safetensors``, ``manifest.json`` and ``report.json`` are replaced:
    no other file is ever deleted or overwritten. On any error the directory is left as it was.
    """
    path = Path(path)
    check_save_target(path, overwrite)
    record = manifest(model)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}  # tied weights need copies
    record["packed"] = pack_codes(model, state)
    report_text = report.to_json() if report is not None else None
    payloads = {WEIGHTS: lambda tmp: save_file(state, tmp, metadata={"format": FORMAT})}
    if report_text is not None:
        payloads[REPORT] = lambda tmp: tmp.write_text(report_text)

    def write_manifest(tmp: Path, digests: dict[str, str], removes: dict[str, str]) -> None:
        # A report of the earlier save would describe another model: it goes (by its digest) after the switch.
        record.update(files=[WEIGHTS, MANIFEST, *([REPORT] if REPORT in digests else [])],
                      weights_sha256=digests[WEIGHTS], sha256=digests, removes=removes)
        tmp.write_text(json.dumps(record, indent=2))

    write_vouched(path, payloads, MANIFEST, write_manifest, lambda: _vouching(path), (WEIGHTS, REPORT))
    return path


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Re-apply the compression saved at ``path`` to ``model``, a fresh original architecture; returns ``model``.

    The manifest's architecture fingerprint is checked first (an error names the first layer
    that differs); on any error ``model`` is left exactly as it was. Rebuilt layers take the
    dtype and device of the layers they replace.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory written by netcompress.save")
    file = path / MANIFEST
    if not file.is_file():
        raise ValueError(f"{path} has no {MANIFEST}; it was not written by netcompress.save")
    record = read_json(file, "manifest")
    weights, expected = path / WEIGHTS, record.get("weights_sha256") if isinstance(record, dict) else None
    found = vouched(path, WEIGHTS, expected) if expected is not None else None  # in place, or staged by a save cut short
    if found is None:
        require_regular(weights, "weights file")
        if expected is not None:
            raise ValueError(f"{weights} is not the file {file} was written with (its SHA-256 differs); "
                             "save the model again")
    weights = found or weights
    with torch.device("meta"):  # size every layer against the file before anything is allocated
        built: dict[str, int] = {}
        sized = _plan(model, record, str(file), built)
    _check_sizes(sized, built, _stored_shapes(weights), str(file), weights)
    planned = _plan(model, record, str(file))
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights} cannot be read as safetensors ({error})") from None
    with all_or_nothing(model):
        for name, new in planned.items():
            replace_module(model, name, new)
        unpack_codes(model, state, record.get("packed"), str(file))
        _load_state(model, state, weights)
    return model


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise ValueError(f"{source} does not fit the model ({first}); build the same original architecture") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source} does not match the model (missing: {result.missing_keys[:5]}, "
            f"unexpected: {result.unexpected_keys[:5]}); build the same original architecture"
        )


def read_report(path: str | os.PathLike) -> Report:
    """The :class:`Report` saved beside a compressed model (the one its manifest vouches for, by SHA-256)."""
    if not Path(path).is_dir():
        raise ValueError(f"{path} is not a directory; pass the directory netcompress.save wrote (it holds {REPORT})")
    record = _current_record(Path(path)) or {}
    file = Path(path) / REPORT
    if isinstance(record.get("sha256"), dict):  # a manifest that says which report is its own
        digest = record["sha256"].get(REPORT)
        if digest is None:  # a report left by an earlier save (one cut short before removing it) is not this one's
            raise ValueError(f"{path} holds no {REPORT} of the model saved there; save it with "
                             "netcompress.save(model, path, report)")
        file = vouched(Path(path), REPORT, digest) or file  # else one edited since: read, checked as any input
    if not file.is_file():
        raise ValueError(f"{path} holds no {REPORT}; save it with netcompress.save(model, path, report)")
    data = read_json(file, "report")
    rows = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{file} is not a netcompress report (it needs a list of layer rows); save it again")
    try:
        return Report.from_dict(data)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{file} cannot be read as a report ({error})") from None
