"""Reading a user's target data, model and weights for the command line, without unpickling anything.

Data:

* ``.pt`` — a tensor (or a tuple/list/dict whose first tensor is the input), read with
  ``torch.load(..., weights_only=True)``;
* ``.npy`` / ``.npz`` — NumPy arrays, read with ``allow_pickle=False`` (in an ``.npz`` the
  array named ``x`` or else the first one);
* a folder of images — PNG/JPEG/… read with Pillow (the ``images`` extra) as float RGB in
  [0, 1], resized to ``image_size`` when given, normalised with :func:`normalize`. Each image's
  size is checked from its header before it is decoded: decompression bombs and images over
  :data:`MAX_IMAGE_PIXELS` are refused, and so is a folder that would need more than
  :data:`MAX_FOLDER_VALUES` floats.

Models come from a factory ``package.module:function`` (importable from the current
directory, as with ``python -m``) or ``path/to/file.py:function``; weights from a
``.safetensors`` file or a ``torch.save``'d state dict (``.pt``/``.pth``), told apart by content.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netcompress._core.files import open_regular, require_regular

__all__ = ["PRESETS", "batches", "build_model", "normalize", "read_data", "read_labels", "read_weights"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 40_000_000  # one image: a 7,700×5,200 photograph; Pillow's own bomb limit is 89 M
MAX_FOLDER_VALUES = 1 << 30  # all images as float32: 4 GiB
MAX_DATA_VALUES = 1 << 31  # one data file: 8 GiB of float32, far more than a calibration sample
PRESETS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}  # torchvision's ImageNet statistics


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _first_tensor(obj: object, path: Path) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        obj = obj.get("x", next(iter(obj.values()), None))
    elif isinstance(obj, (tuple, list)) and obj:
        obj = obj[0]
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds no tensor; save the inputs with torch.save(tensor, path)")
    return obj


def _open_image(file: Path, image):
    """Open ``file`` lazily (only its header is read), refusing what is not an image or is a bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image.DecompressionBombWarning)
            return image.open(file)
    except (image.DecompressionBombError, image.DecompressionBombWarning):
        raise ValueError(f"image {file} declares more pixels than Pillow allows (a decompression bomb); "
                         "remove it from the folder") from None
    except image.UnidentifiedImageError:
        raise ValueError(f"{file} is not an image Pillow can read; remove it from the folder") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"image {file} cannot be read ({_first_line(error)}); remove it from the folder") from None


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by suffix, hidden files left out), sorted; refuses a folder with none.

    An entry with an image's suffix that is not a regular file (a named pipe would block the
    read forever, a device would never end) is refused in one sentence, not skipped.
    """
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for file in files:
        require_regular(file, "image")
    return files


def checked_size(file: Path, image) -> tuple[int, int]:
    """``(width, height)`` of an opened image, refusing one above :data:`MAX_IMAGE_PIXELS` before it is decoded."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image {file} is {width:,}×{height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                         "netcompress reads; shrink it or remove it from the folder")
    return width, height


def _read_images(folder: Path, image_size: tuple[int, int] | None) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading a folder of images needs Pillow; pip install 'netcompress[images]'") from None
    if image_size is not None and not all(isinstance(s, int) and 0 < s <= 16384 for s in image_size):
        raise ValueError(f"image size {image_size} must be two integers from 1 to 16384")
    images, values = [], 0
    for file in image_files(folder):
        with _open_image(file, Image) as image:
            width, height = checked_size(file, image)
            values += 3 * (image_size[0] * image_size[1] if image_size else width * height)
            if values > MAX_FOLDER_VALUES:
                raise ValueError(f"the images in {folder} need more than {4 * MAX_FOLDER_VALUES >> 30} GiB as floats; "
                                 "pass --image-size H W or use fewer images")
            try:
                rgb = image.convert("RGB")
                if image_size is not None:
                    rgb = rgb.resize((image_size[1], image_size[0]))
                array = np.asarray(rgb, dtype=np.float32) / 255.0
            except (OSError, ValueError, SyntaxError) as error:
                raise ValueError(f"image {file} cannot be decoded ({_first_line(error)}); remove it from the folder") from None
            images.append(torch.from_numpy(array).permute(2, 0, 1))
    if len({tuple(i.shape) for i in images}) > 1:
        raise ValueError(f"images in {folder} differ in size; pass --image-size H W to resize them")
    return torch.stack(images)


def _npy_values(handle, source: str) -> int:
    """The element count an ``.npy`` stream's header declares, checked against the bytes that follow it."""
    try:
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"format version {version}")
        shape, _, dtype = read_header[version](handle, max_header_size=1 << 16)
    except (ValueError, OSError, SyntaxError, TypeError) as error:
        raise ValueError(f"{source} cannot be read as .npy data: its header is corrupt ({_first_line(error)})") from None
    if dtype.hasobject:
        raise ValueError(f"{source} cannot be read as .npy data: it holds Python objects, which netcompress never "
                         "unpickles; save a numeric array")
    count = math.prod(shape)
    if count > MAX_DATA_VALUES:
        raise ValueError(f"{source} declares {count:,} values (shape {tuple(shape)}), more than the "
                         f"{MAX_DATA_VALUES:,} netcompress reads; the file is corrupt, or pass a smaller sample")
    return count * dtype.itemsize


def _check_npy(handle, size: int, source: str) -> None:
    """Refuse an ``.npy`` file whose header declares more data than the file holds (before numpy allocates it)."""
    needed = _npy_values(handle, source)
    held = size - handle.tell()
    if needed > held:
        raise ValueError(f"{source} is corrupt: its header declares {needed:,} bytes of data, but it holds {held:,}")
    handle.seek(0)


def _check_npz(archive: np.lib.npyio.NpzFile, path: Path) -> None:
    """Refuse an ``.npz`` member whose header declares more than the member holds, or past the value cap."""
    for name in archive.files:
        info = archive.zip.getinfo(name if name in archive.zip.namelist() else f"{name}.npy")
        with archive.zip.open(info) as member:
            needed = _npy_values(member, f"{path} (array {name!r})")
            held = info.file_size - member.tell()
        if needed > held:
            raise ValueError(f"{path} is corrupt: array {name!r} declares {needed:,} bytes of data, but holds {held:,}")


def _check_pt(handle, path: Path) -> None:
    """Refuse a ``torch.save`` archive whose members declare more than the value cap (before torch reads them)."""
    if handle.read(4) != b"PK\x03\x04":
        handle.seek(0)
        return  # the legacy format: torch checks each storage against the stream as it reads it
    handle.seek(0)
    try:
        with zipfile.ZipFile(handle) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ValueError(f"{path} is corrupt: not a readable torch.save archive ({_first_line(error)})") from None
    if declared > 8 * MAX_DATA_VALUES:
        raise ValueError(f"{path} declares {declared:,} bytes of tensors, more than netcompress reads "
                         f"({8 * MAX_DATA_VALUES:,}); the file is corrupt, or pass a smaller sample")
    handle.seek(0)


def read_data(path: str | Path, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The target inputs stored at ``path`` as one tensor (see the module docstring for formats).

    Only regular files are opened, and every header (``.npy``, each ``.npz`` member, a
    ``torch.save`` archive's members) is checked against the file's size and
    :data:`MAX_DATA_VALUES` before anything is allocated.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data path {path} does not exist")
    if path.is_dir():
        return _read_images(path, image_size)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        raise ValueError(f"data {path} is one image; put the images in a folder and pass the folder")
    if suffix not in (".pt", ".pth", ".npy", ".npz"):
        raise ValueError(f"data {path} must be a .pt, .npy or .npz file or a folder of images")
    try:
        with open_regular(path, "data file") as handle:
            size = os.fstat(handle.fileno()).st_size
            if suffix in (".pt", ".pth"):
                _check_pt(handle, path)
                return _first_tensor(torch.load(handle, map_location="cpu", weights_only=True), path)
            if suffix == ".npy":
                _check_npy(handle, size, str(path))
                return torch.from_numpy(np.load(handle, allow_pickle=False))
            with np.load(handle, allow_pickle=False) as archive:
                if not archive.files:
                    raise ValueError(f"{path} holds no arrays")
                _check_npz(archive, path)
                return torch.from_numpy(archive["x" if "x" in archive.files else archive.files[0]])
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} cannot be read as {suffix} data: it holds Python objects besides tensors, "
            "which netcompress never unpickles; save a plain tensor"
        ) from None
    except (OSError, EOFError, RuntimeError, TypeError, zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"{path} cannot be read as {suffix} data ({_first_line(error)})") from None
    except ValueError as error:
        if str(error).startswith(str(path)) or str(error).startswith(f"data file {path}"):
            raise
        raise ValueError(f"{path} cannot be read as {suffix} data ({_first_line(error)})") from None


def normalize(data: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(data − mean) / std`` per channel (dimension 1) of image batches ``(N, C, H, W)``."""
    if len(mean) != len(std) or not mean:
        raise ValueError(f"--mean and --std need as many values each (got {len(mean)} and {len(std)})")
    if any(s <= 0 for s in std):
        raise ValueError(f"--std values must be positive, got {list(std)}")
    if data.dim() != 4 or data.shape[1] != len(mean):
        raise ValueError(f"--mean/--std give {len(mean)} channel(s) but the data has shape {tuple(data.shape)}; "
                         "normalisation needs images as (N, C, H, W) with one value per channel")
    shape = (1, len(mean), 1, 1)
    data = data if data.is_floating_point() else data.float()
    return (data - torch.tensor(mean, dtype=data.dtype).view(shape)) / torch.tensor(std, dtype=data.dtype).view(shape)


def read_labels(path: str | Path | None, data_path: str | Path, count: int) -> torch.Tensor:
    """Integer class labels for fine-tuning: from ``path``, or the array ``y`` of an ``.npz`` data file."""
    if path is None:
        data_path = Path(data_path)
        if data_path.suffix.lower() == ".npz":
            with open_regular(data_path, "data file") as handle, np.load(handle, allow_pickle=False) as archive:
                if "y" in archive.files:
                    _check_npz(archive, data_path)
                    labels = torch.from_numpy(archive["y"])
                    path = data_path
        if path is None:
            raise ValueError("fine-tuning needs labels; pass --labels FILE or store them as 'y' in an .npz --data file")
    else:
        labels = read_data(path)
    if labels.dim() != 1 or labels.is_floating_point() or len(labels) != count:
        raise ValueError(f"labels in {path} must be {count} integer class indices, one per input")
    return labels.long()


def batches(data: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive float batches of ``data``."""
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if len(data) == 0:
        raise ValueError("the data holds no samples")
    data = data if data.is_floating_point() else data.float()
    return iter(data.split(batch_size))


def _import(module_name: str, attribute: str):
    """The module of a ``--model`` spec: a dotted name importable from the current directory, or a ``.py`` file."""
    if module_name.endswith(".py"):
        file = Path(module_name).resolve()
        if not file.is_file():
            raise ValueError(f"--model file {module_name} does not exist")
        if str(file.parent) not in sys.path:
            sys.path.insert(0, str(file.parent))  # so the file can import its neighbours
        name = f"_netcompress_model_{file.stem}"  # never shadows an installed module of the same name
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses defined in the file look their module up here
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` does: a factory in the current directory needs no PYTHONPATH
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            leaf = module_name.rpartition(".")[2]
            raise ValueError(
                f"cannot import {module_name!r} for --model: it is neither in {cwd} nor installed; run netcompress "
                f"in the folder that holds {module_name.replace('.', '/')}.py, pip install its package, or pass "
                f"path/to/{leaf}.py:{attribute}"
            ) from None
        raise ValueError(f"importing {module_name!r} for --model failed: it needs {error.name!r}, which is not "
                         f"installed (pip install {error.name})") from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save``'d one (``weights_only=True``: never unpickled)."""
    path = require_regular(path, "weights")
    with open_regular(path, "weights") as handle:
        head = handle.read(8)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # a torch.save zip archive, or its legacy pickle
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(f"weights {path} hold Python objects besides tensors, which netcompress never unpickles; "
                             "save model.state_dict() with torch.save, or as .safetensors") from None
        except (OSError, EOFError, RuntimeError, ValueError) as error:
            raise ValueError(f"weights {path} cannot be read as a torch.save file ({_first_line(error)})") from None
        if isinstance(state, dict):  # a training checkpoint keeps the weights under one of these
            inner = next((state[k] for k in ("state_dict", "model_state_dict", "model") if isinstance(state.get(k), dict)), None)
            state = inner if inner is not None else state
        if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                          for k, v in state.items())):
            raise ValueError(f"weights {path} are not a state dict (a mapping of names to tensors); "
                             "save model.state_dict()")
        return state
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"weights {path} cannot be read as safetensors ({_first_line(error)}); give a .safetensors "
                         "file or a torch.save'd state dict (.pt/.pth)") from None


def build_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Call the factory ``package.module:function`` (or ``file.py:function``) and load ``weights`` into the model.
    (:func:`netcompress.cli.zoo.build` also takes ``torchvision:``, ``timm:`` and ``transformers:`` models.)
    """
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute or not attribute.isidentifier():
        raise ValueError(f"model {spec!r} must look like package.module:factory or path/to/file.py:factory")
    try:
        module = _import(module_name, attribute)
    except ValueError:
        raise
    except Exception as error:  # the user's module raised while importing
        raise ValueError(f"importing {module_name!r} for --model failed ({type(error).__name__}: "
                         f"{_first_line(error)})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"module {module_name!r} has no {attribute!r} for --model"
                         + ("" if factory is None else f" that can be called (it is a {type(factory).__name__})"))
    try:
        model = factory()
    except Exception as error:
        raise ValueError(f"the factory {spec} raised {type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, read_weights(weights), spec, weights)
    return model


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], spec: str, source: str | Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else [])
        raise ValueError(f"weights {source} do not fit {spec} ({'; '.join(parts)}); give the weights of this architecture")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"weights {source} hold {key} of shape {tuple(tensor.shape)} where {spec} has "
                             f"{tuple(expected[key].shape)}; give the weights of this architecture")
    model.load_state_dict(state)
