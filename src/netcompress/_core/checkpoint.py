"""Training checkpoints: written atomically, read back without unpickling code, verified before anything is loaded.

A checkpoint is a dict of tensors and numbers (``torch.save``; read with ``weights_only=True``)
that carries, besides what a resumed run needs:

* ``run``: the *fingerprint* of the run that wrote it: its settings (learning rate, epochs,
  batch size, schedule, seed, loss terms…) and the identity of its data (:func:`data_identity`),
  as JSON values;
* ``architecture``: per model, every state-dict key with its shape and dtype;
* ``optimizer_structure``: per optimizer, its parameter groups (how many parameters each, which
  hyperparameters) and every parameter's shape.

:func:`verify_checkpoint` compares all of it, and checks every payload tensor's type, shape and
dtype, against the current call *before* the caller copies anything into a model or an optimizer:
resuming a checkpoint of another run, another architecture or a malformed file raises one
``ValueError`` naming the file and the first difference, and leaves the model untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping

import torch

__all__ = ["FORMAT", "VERSION", "architecture", "checkpoint_header", "data_identity", "length_of", "module_digest",
           "optimizer_structure", "read_checkpoint", "settings_of", "tensor_digest", "verify_checkpoint", "verify_run",
           "write_checkpoint"]

FORMAT, VERSION = "netcompress.checkpoint", 1
_FIX = "pass the same settings and data, or another checkpoint path"


def write_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (state dicts, tensors, numbers, lists) to ``path`` under a temporary name, then rename it."""
    from netcompress._core.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | os.PathLike | None) -> dict | None:
    """The state written at ``path`` (``None`` when there is no such file), loaded with ``weights_only=True``.

    Only a regular file is opened (a FIFO or a device is refused without blocking); a file that
    is not a checkpoint (truncated, another format, pickled code) is one ``ValueError`` naming it.
    """
    from netcompress._core.files import open_regular

    if path is None or not os.path.lexists(path):
        return None
    head = b""
    try:
        with open_regular(path, "checkpoint") as handle:
            head = handle.read(4)
            handle.seek(0)
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except ValueError as error:
        if str(error).startswith("checkpoint "):
            raise
        raise _unreadable(path, error, head) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError, TypeError,
            AttributeError, ImportError, MemoryError, OverflowError, IndexError) as error:
        raise _unreadable(path, error, head) from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint netcompress wrote; "
                         "delete it or pass another checkpoint path")
    return state


def _unreadable(path, error: BaseException, head: bytes) -> ValueError:
    """One sentence for a file torch.load refused, by what it is (torch's own messages name no file and run long)."""
    if head != b"PK\x03\x04":  # netcompress writes torch.save's zip archives
        reason = "it is not a torch.save archive, so not a checkpoint netcompress wrote"
    elif isinstance(error, pickle.UnpicklingError):
        reason = "it holds Python objects besides tensors, which netcompress never unpickles"
    else:
        reason = "it is truncated or damaged"
    return ValueError(f"checkpoint {path} cannot be read as a checkpoint: {reason}; delete it or pass another "
                      "checkpoint path")


# --- fingerprints -------------------------------------------------------------------------------------------------

def tensor_digest(tensors: Iterable[torch.Tensor], digest=None) -> str:
    """SHA-256 (hex) over each tensor's dtype, shape and bytes, in order."""
    digest = digest or hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, values): a teacher's identity."""
    digest = hashlib.sha256()
    state = module.state_dict()
    digest.update(json.dumps(list(state)).encode())
    return tensor_digest(state.values(), digest)


def length_of(data) -> int | None:
    """``len(data)``, or None where it has none (a DataLoader over an unsized IterableDataset raises TypeError)."""
    try:
        return len(data)
    except TypeError:
        return None


def data_identity(data) -> dict:
    """What a checkpoint records of a run's data, to refuse resuming on other data; it never draws from ``data``.

    * ``(inputs, labels)`` tensors (or any tuple/list of tensors): SHA-256 over every tensor
      (dtype, shape, all bytes) and their lengths; it covers the whole data.
    * a list or tuple of batches: SHA-256 over the tensors of every batch.
    * a ``DataLoader``: its batch size and its dataset's type and length; a ``TensorDataset``'s
      tensors are hashed whole. Batches are not drawn: that would advance the loader's shuffling
      generator, and a dataset's own random augmentation would make the digest differ between runs.
    * any other iterable: its type and its length when it has one.
    """
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return {"kind": "tensors", "lengths": [len(t) if t.dim() else 1 for t in data],
                "sha256": tensor_digest(data)}
    identity: dict = {"kind": f"{type(data).__module__}.{type(data).__qualname__}",
                      "length": length_of(data)}
    if isinstance(data, (tuple, list)):
        identity["sha256"] = tensor_digest(_tensors_in(list(data)))
    from torch.utils.data import DataLoader, TensorDataset

    dataset = getattr(data, "dataset", None)
    if isinstance(data, DataLoader) and dataset is not None:
        identity["batch_size"] = data.batch_size
        identity["dataset"] = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
        identity["dataset_length"] = length_of(dataset)
        if isinstance(dataset, TensorDataset):
            identity["dataset_sha256"] = tensor_digest(dataset.tensors)
    return identity


def _tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors_in(item)]
    if isinstance(value, Mapping):
        return [t for key in sorted(value, key=str) for t in _tensors_in(value[key])]
    return []


def settings_of(module: object) -> dict:
    """A loss term's or regularizer's identity: its type, and (for netcompress's own) its public plain settings.

    Terms defined elsewhere are recorded by type only: their attributes may be state (counters, caches).
    """
    kind = type(module)
    described: dict = {"type": f"{kind.__module__}.{kind.__qualname__}"}
    if kind.__module__.startswith("netcompress."):
        for key, value in sorted(vars(module).items()):
            if not key.startswith("_") and key not in ("training", "ranks_before", "ranks_after", "skipped") \
                    and _plain(value):
                described[key] = value
    return described


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return False


def architecture(state: Mapping[str, torch.Tensor]) -> list[list]:
    """``[[key, shape, dtype], …]`` of a state dict, in its order."""
    return [[key, list(value.shape), str(value.dtype)] for key, value in state.items()]


def optimizer_structure(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Per parameter group: the sorted hyperparameter names and each parameter's shape."""
    return [{"hyperparameters": sorted(k for k in group if k != "params"),
             "parameters": [list(p.shape) for p in group["params"]]} for group in optimizer.param_groups]


def checkpoint_header(run: dict, models: Mapping[str, Mapping[str, torch.Tensor]],
                      optimizers: Mapping[str, torch.optim.Optimizer]) -> dict:
    """The fields every checkpoint carries: format, version, the run's fingerprint, architectures, optimizers."""
    return {"format": FORMAT, "version": VERSION, "run": _json(run),
            "architecture": {name: architecture(state) for name, state in models.items()},
            "optimizer_structure": {name: optimizer_structure(opt) for name, opt in optimizers.items()}}


def _json(value):
    """``value`` as the JSON values a checkpoint stores (tuples become lists), so stored and current compare equal."""
    return json.loads(json.dumps(value, default=repr))


# --- verification -------------------------------------------------------------------------------------------------

def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat: dict = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "…"


def verify_run(path, stored, current: dict, run: str = "run") -> None:
    """Refuse, naming the first differing setting, a checkpoint whose run fingerprint differs from ``current``."""
    if not isinstance(stored, dict):
        raise ValueError(f"checkpoint {path} records no settings of the {run} that wrote it; delete it or pass "
                         "another checkpoint path")
    mine, theirs = _flat(_json(current)), _flat(stored)
    for key in list(mine) + [k for k in theirs if k not in mine]:
        if key not in theirs or key not in mine or theirs[key] != mine[key]:
            then = _shown(theirs[key]) if key in theirs else "(not set)"
            now = _shown(mine[key]) if key in mine else "(not set)"
            raise ValueError(f"checkpoint {path} was written by a {run} with {key}={then}, not {now}; {_FIX}")


def _malformed(path, what: str) -> ValueError:
    return ValueError(f"checkpoint {path} is malformed: {what}; delete it or pass another checkpoint path")


def _check_tensors(path, name: str, found, expected: list[list]) -> None:
    if not isinstance(found, Mapping) or list(found) != [key for key, _, _ in expected]:
        raise _malformed(path, f"its {name!r} tensors are not the ones its architecture lists")
    for key, shape, dtype in expected:
        value = found[key]
        if not isinstance(value, torch.Tensor) or list(value.shape) != shape or str(value.dtype) != dtype:
            raise _malformed(path, f"{name} tensor {key!r} is not {dtype} {tuple(shape)}")


def _check_architecture(path, name: str, stored, current: list[list]) -> None:
    if not isinstance(stored, list):
        raise _malformed(path, f"it lists no architecture of the {name}")
    stored_keys = {entry[0]: entry for entry in stored if isinstance(entry, list) and len(entry) == 3}
    if len(stored_keys) != len(stored):
        raise _malformed(path, f"its architecture of the {name} is not a list of [key, shape, dtype]")
    for key, shape, dtype in current:
        if key not in stored_keys:
            raise ValueError(f"checkpoint {path} was written for a {name} without the tensor {key!r}: another "
                             f"architecture; {_FIX}")
        _, their_shape, their_dtype = stored_keys[key]
        if their_shape != shape or their_dtype != dtype:
            raise ValueError(f"checkpoint {path} was written for a {name} whose tensor {key!r} is {their_dtype} "
                             f"{tuple(their_shape) if isinstance(their_shape, list) else their_shape}, not {dtype} "
                             f"{tuple(shape)}: another architecture; {_FIX}")
    extra = [key for key in stored_keys if key not in {k for k, _, _ in current}]
    if extra:
        raise ValueError(f"checkpoint {path} was written for a {name} with the tensor {extra[0]!r}, which this one "
                         f"lacks: another architecture; {_FIX}")
    if [entry[0] for entry in stored] != [key for key, _, _ in current]:
        raise ValueError(f"checkpoint {path} was written for a {name} whose tensors come in another order; {_FIX}")


def _check_optimizer(path, name: str, stored_structure, found, optimizer: torch.optim.Optimizer) -> None:
    current = optimizer_structure(optimizer)
    if stored_structure != current:
        raise ValueError(f"checkpoint {path} was written with an optimizer of other parameter groups or shapes "
                         f"({name}: {_shown(stored_structure)}, not {_shown(current)}); {_FIX}")
    reference = optimizer.state_dict()
    if not isinstance(found, Mapping) or set(found) != {"state", "param_groups"} \
            or not isinstance(found["param_groups"], list) or not isinstance(found["state"], Mapping):
        raise _malformed(path, f"its {name!r} is not an optimizer's state")
    shapes = {}
    for theirs, ours, group in zip(found["param_groups"], reference["param_groups"], optimizer.param_groups,
                                   strict=False):
        if not isinstance(theirs, Mapping) or set(theirs) != set(ours) or theirs.get("params") != ours["params"]:
            raise _malformed(path, f"a parameter group of its {name!r} is not the optimizer's")
        for key, value in theirs.items():
            if key != "params" and type(value) is not type(ours[key]) and not (
                    isinstance(value, (int, float)) and isinstance(ours[key], (int, float))):
                raise _malformed(path, f"{name} setting {key!r} is a {type(value).__name__}")
        shapes.update({index: p.shape for index, p in zip(ours["params"], group["params"], strict=True)})
    if len(found["param_groups"]) != len(reference["param_groups"]):
        raise _malformed(path, f"its {name!r} has {len(found['param_groups'])} parameter groups, not "
                         f"{len(reference['param_groups'])}")
    for index, entry in found["state"].items():
        if index not in shapes or not isinstance(entry, Mapping):
            raise _malformed(path, f"its {name!r} holds state for a parameter {index!r} it does not have")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                if value.dim() and value.shape != shapes[index] or not value.is_floating_point():
                    raise _malformed(path, f"{name} state {key!r} of parameter {index} is {value.dtype} "
                                           f"{tuple(value.shape)}, not float {tuple(shapes[index])}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _malformed(path, f"{name} state {key!r} of parameter {index} is a {type(value).__name__}")


def verify_checkpoint(path, state: dict, *, run: dict, models: Mapping[str, Mapping[str, torch.Tensor]],
                      optimizers: Mapping[str, torch.optim.Optimizer],
                      generators: Mapping[str, torch.Tensor] = {},  # noqa: B006 (read only)
                      counters: Mapping[str, tuple[int, int]] = {},  # noqa: B006 (read only)
                      float_lists: Mapping[str, str] = {},  # noqa: B006 (read only): name -> counter it is as long as
                      state_dicts: Mapping[str, Mapping] = {}) -> None:  # noqa: B006 (read only)
    """Check all of ``state`` against the current call; raise one ``ValueError`` naming ``path`` on any difference.

    ``run`` is the current fingerprint (compared field by field); ``models`` the current state
    dicts (the checkpoint's architecture and tensors must match their keys, shapes and dtypes);
    ``optimizers`` the current optimizers (groups, hyperparameters, per-parameter state shapes);
    ``generators`` example random states (same dtype and shape); ``counters`` integer fields with
    their allowed ``(low, high)``; ``float_lists`` lists of numbers, each as long as a counter;
    ``state_dicts`` other dicts whose keys must equal those of the given example. Nothing is loaded.
    """
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} was not written by this version of netcompress (it has no "
                         f"'format': {FORMAT!r}); delete it or pass another checkpoint path")
    version = state.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ValueError(f"checkpoint {path} has version {_shown(version)}, not {VERSION}; delete it or pass "
                         "another checkpoint path")
    verify_run(path, state.get("run"), run)
    architectures = state.get("architecture")
    structures = state.get("optimizer_structure")
    if not isinstance(architectures, Mapping) or not isinstance(structures, Mapping):
        raise _malformed(path, "it lists no architecture or optimizer structure")
    for name, current in models.items():
        expected = architecture(current)
        _check_architecture(path, name, architectures.get(name), expected)
        _check_tensors(path, name, state.get(name), expected)
    for name, optimizer in optimizers.items():
        _check_optimizer(path, name, structures.get(name), state.get(name), optimizer)
    for name, example in generators.items():
        value = state.get(name)
        if not isinstance(value, torch.Tensor) or value.dtype != example.dtype or value.shape != example.shape:
            raise _malformed(path, f"{name!r} is not a random generator's state")
    for name, (low, high) in counters.items():
        value = state.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _malformed(path, f"{name!r} is {repr(value)[:40] if name in state else 'missing'}, not an integer "
                                   f"from {low} to {high}")
    for name, counter in float_lists.items():
        value = state.get(name)
        if not isinstance(value, list) or len(value) != state[counter] \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise _malformed(path, f"{name!r} is not a list of {state[counter]} numbers")
    for name, example in state_dicts.items():
        value = state.get(name)
        if not isinstance(value, Mapping) or set(value) != set(example):
            raise _malformed(path, f"{name!r} is not the state its run keeps")
        for key, item in example.items():
            if isinstance(item, (int, float)) and not isinstance(item, bool) and (
                    isinstance(value[key], bool) or not isinstance(value[key], (int, float))):
                raise _malformed(path, f"{name} entry {key!r} is not a number")
            if isinstance(item, list) and not isinstance(value[key], list):
                raise _malformed(path, f"{name} entry {key!r} is not a list")
