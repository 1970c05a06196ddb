"""Reading a user's target data and model for the command line, without unpickling anything.

* ``.pt`` — a tensor (or a tuple/list/dict whose first tensor is the input), read with
  ``torch.load(..., weights_only=True)``;
* ``.npy`` / ``.npz`` — NumPy arrays, read with ``allow_pickle=False`` (in an ``.npz`` the
  array named ``x`` or else the first one);
* a folder of images — PNG/JPEG/… read with Pillow (the ``images`` extra) as float RGB in
  [0, 1], resized to ``image_size`` when given.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["batches", "build_model", "read_data", "read_labels"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


def _read_images(folder: Path, image_size: tuple[int, int] | None) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading a folder of images needs Pillow; pip install 'netcompress[images]'") from None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert("RGB")
            if image_size is not None:
                image = image.resize((image_size[1], image_size[0]))
            images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1))
    if len({tuple(i.shape) for i in images}) > 1:
        raise ValueError(f"images in {folder} differ in size; pass --image-size H W to resize them")
    return torch.stack(images)


def read_data(path: str | Path, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The target inputs stored at ``path`` as one tensor (see the module docstring for formats)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data path {path} does not exist")
    if path.is_dir():
        return _read_images(path, image_size)
    suffix = path.suffix.lower()
    try:
        if suffix == ".pt":
            return _first_tensor(torch.load(path, map_location="cpu", weights_only=True), path)
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise ValueError(f"{path} holds no arrays")
                return torch.from_numpy(archive["x" if "x" in archive.files else archive.files[0]])
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} cannot be read as {suffix} data: it holds Python objects besides tensors, "
            "which netcompress never unpickles; save a plain tensor"
        ) from None
    except (OSError, EOFError, RuntimeError) as error:
        raise ValueError(f"{path} cannot be read as {suffix} data ({str(error).splitlines()[0]})") from None
    except ValueError as error:
        raise ValueError(f"{path} cannot be read as {suffix} data ({error})") from None
    raise ValueError(f"data {path} must be a .pt, .npy or .npz file or a folder of images")


def read_labels(path: str | Path | None, data_path: str | Path, count: int) -> torch.Tensor:
    """Integer class labels for fine-tuning: from ``path``, or the array ``y`` of an ``.npz`` data file."""
    if path is None:
        data_path = Path(data_path)
        if data_path.suffix.lower() == ".npz":
            with np.load(data_path, allow_pickle=False) as archive:
                if "y" in archive.files:
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


def build_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Call the factory ``package.module:function`` and load safetensors ``weights`` into the model."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model {spec!r} must look like package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r} for --model ({error})") from None
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attribute!r} for --model") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"weights {weights} cannot be read as safetensors ({error})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"weights {weights} do not fit {spec} ({str(error).splitlines()[0]})") from None
    return model
