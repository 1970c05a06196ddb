"""Quality scores: reading them, a full-reference stand-in, regression onto them, and LCC/SROCC on held-out images.

RankIQA fine-tunes the ranking network on a few images with human scores (LIVE, TID2013) and
compares it with the same architecture trained on the scores alone. No human-rated database
ships inside a package here, so :func:`full_reference_scores` gives a stand-in that says what it
is: the SSIM of each distorted image against its reference (Wang et al., IEEE TIP 2004). A user
with real scores reads them with :func:`read_scores` (a CSV ``image,score``) and runs the same code.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netcompress._core.layers import progress_disabled
from netcompress.rankings.data import _colour, as_tensor, random_crop
from netcompress.rankings.metrics import lcc, srocc
from netcompress.rankings.train import score_image

__all__ = ["evaluate_scores", "fit_scores", "full_reference_scores", "read_scores"]

MAX_SCORES_BYTES = 16 << 20  # a CSV of a million scored images is far smaller
MAX_SCORE = float(np.finfo(np.float32).max)  # fit_scores computes in float32: a larger score overflows to inf
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # what a spreadsheet writes; no "nan", "1_0"
_DECIMAL_COMMA = re.compile(r"[+-]?[0-9]*,[0-9]+")
_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def _decode(data: bytes, path: Path) -> str:
    """The text of a scores file: UTF-8 (with or without a BOM), or UTF-16/UTF-32 with a BOM (Excel's Unicode text)."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as error:
                raise ValueError(f"scores file {path} starts with a {encoding.upper()} byte-order mark but is not "
                                 f"{encoding.upper()} text ({error.reason}); save it as CSV UTF-8") from None
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise ValueError(f"scores file {path}, line {line}: holds a NUL byte, as UTF-16 or UTF-32 without a "
                         "byte-order mark would (which cannot be told apart from binary data); save it as CSV UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"scores file {path}, line {line}: byte 0x{data[error.start]:02x} is not UTF-8 (a legacy "
                         "encoding such as Windows-1252?); save it as CSV UTF-8") from None


def _separator(header: str, path: Path) -> str:
    """The one separator (comma, semicolon or tab) that splits ``header`` into cells naming ``image`` and ``score``."""
    fits = [d for d in _SEPARATORS
            if {"image", "score"} <= {cell.strip() for cell in next(csv.reader([header], delimiter=d), [])}]
    if not fits:
        raise ValueError(f"scores file {path}, line 1: needs a header naming the columns 'image' and 'score' "
                         f"(separated by commas, semicolons or tabs), got {header[:80]!r}")
    if len(fits) > 1:
        raise ValueError(f"scores file {path}, line 1: the header {header[:80]!r} names 'image' and 'score' when "
                         f"split at {' and at '.join(_SEPARATORS[d] + 's' for d in fits)}; use one separator only")
    return fits[0]


def read_scores(path: str | Path) -> dict[str, float]:
    """``image → score`` from a CSV file with a header naming the columns ``image`` and ``score`` (others ignored).

    The file must be a regular file of at most ``MAX_SCORES_BYTES``. What a spreadsheet writes and
    can be read one way only is accepted: UTF-8 with or without a byte-order mark, UTF-16 or UTF-32
    with one (Excel's "Unicode text"), CRLF or LF line ends, and comma, semicolon or tab separators
    (the one that splits the header into ``image`` and ``score``). Refused, each in one ``ValueError``
    naming the file and the line: other encodings, a header both separators split, a row without
    both cells, an empty or control-character image name, an image scored twice, and a score that
    is not a plain decimal number (``nan``, ``inf``, a decimal comma, which could be a thousands
    separator) or whose magnitude exceeds float32's range (``MAX_SCORE``), where the fit computes.
    """
    from netcompress._core.files import read_bytes

    path = Path(path)
    text = _decode(read_bytes(path, "scores file", MAX_SCORES_BYTES), path)
    if not text.strip():
        raise ValueError(f"scores file {path} is empty; it needs a header 'image,score' and one line per image")
    separator = _separator(text.splitlines()[0], path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator, strict=True)
    scores: dict[str, float] = {}
    try:
        header = [cell.strip() for cell in next(reader)]
        for name in ("image", "score"):
            if header.count(name) > 1:
                raise ValueError(f"scores file {path}, line 1: the header names the column {name!r} twice; keep one")
        image_at, score_at = header.index("image"), header.index("score")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line, or a row of empty cells (spreadsheets write them at the end)
            if len(row) <= max(image_at, score_at):
                raise ValueError(f"scores file {path}, line {line}: has {len(row)} cells, too few for the columns "
                                 "'image' and 'score'; give every image a score")
            image, text_score = row[image_at].strip(), row[score_at].strip()
            scores[_image_name(image, scores, path, line)] = _score(text_score, path, line)
    except csv.Error as error:
        raise ValueError(f"scores file {path}, line {reader.line_num}: cannot be read as CSV ({error}); "
                         "save it again as CSV") from None
    if not scores:
        raise ValueError(f"scores file {path} holds no scores; it needs one line 'image,score' per image")
    return scores


def _image_name(image: str, scores: dict, path: Path, line: int) -> str:
    if not image or len(image) > 4096 or any(ord(c) < 32 or ord(c) == 127 for c in image):
        raise ValueError(f"scores file {path}, line {line}: the image name {image[:60]!r} is empty, longer than "
                         "4,096 characters or holds control characters; name the image file")
    if image in scores:
        raise ValueError(f"scores file {path}, line {line}: image {image[:60]!r} is scored twice; keep one score")
    return image


def _score(text: str, path: Path, line: int) -> float:
    if _DECIMAL_COMMA.fullmatch(text):
        raise ValueError(f"scores file {path}, line {line}: score {text!r} has a decimal comma, which could also "
                         f"separate thousands; write it with a decimal point ({text.replace(',', '.')!r} if so)")
    if len(text) > 64 or not _NUMBER.fullmatch(text):
        raise ValueError(f"scores file {path}, line {line}: score {text[:64]!r} is not a number; write a decimal "
                         "number such as 71.5")
    value = float(text)
    if not abs(value) <= MAX_SCORE:
        raise ValueError(f"scores file {path}, line {line}: score {text!r} is beyond float32's range "
                         f"(±{MAX_SCORE:.3g}), where scores are fitted; rescale the scores")
    return value


def full_reference_scores(reference: np.ndarray, distorted: Sequence[np.ndarray]) -> list[float]:
    """The SSIM of each distorted image against ``reference`` (1 = identical): a stand-in for human scores."""
    from skimage.metrics import structural_similarity

    reference = _colour(reference)
    return [float(structural_similarity(reference, _colour(image), channel_axis=2, data_range=255))
            for image in distorted]


def _crops(images: Sequence[np.ndarray], crop: int, count: int, generator: torch.Generator) -> tuple[torch.Tensor, list]:
    picks, batch = [], []
    for _ in range(count):
        i = int(torch.randint(len(images), (1,), generator=generator))
        batch.append(random_crop(images[i], crop, generator))
        picks.append(i)
    return as_tensor(batch), picks


def _checked_scores(scores: Sequence[float]) -> list[float]:
    """``scores`` as floats, each a real number within float32's range (the dtype the fit computes in)."""
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence | np.ndarray | torch.Tensor):
        raise TypeError(f"scores must be a sequence of numbers, got {type(scores).__name__}")
    values = scores.tolist() if isinstance(scores, (np.ndarray, torch.Tensor)) else list(scores)
    for i, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"scores[{i}] must be a number, got {type(value).__name__} {value!r:.40}")
        if not abs(float(value)) <= MAX_SCORE:
            raise ValueError(f"scores[{i}] = {float(value):g} is not finite in float32 (at most ±{MAX_SCORE:.3g}), the "
                             "dtype fit_scores computes in; rescale the scores")
    return [float(v) for v in values]


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def fit_scores(model: nn.Module, images: Sequence[np.ndarray], scores: Sequence[float], crop: int, *,
               steps: int = 200, batch: int = 16, lr: float = 1e-3, seed: int = 0,
               progress: bool | None = None) -> list[float]:
    """Regress ``model``'s score of random crops onto each image's score (mean squared error); the losses.

    From scratch this is the paper's baseline; from a network trained on rankings, its "ours".
    Scores are standardised (zero mean, unit variance over ``scores``, computed in float64) for
    the fit, which runs in float32: a score beyond float32's range (``scores[i]`` named) and an
    ``lr`` that is not a positive float32 number are refused before training. If training
    diverges (a loss or a weight that is not finite), the model's weights are put back as they
    were and ``ValueError`` names the step and the weight.
    """
    from tqdm.auto import tqdm

    values = _checked_scores(scores)
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a sequence of uint8 arrays, got {type(images).__name__}")
    if len(images) != len(values) or len(images) < 2:
        raise ValueError(f"need at least 2 images and one score each, got {len(images)} images, {len(values)} scores")
    steps, batch, crop = _count("steps", steps), _count("batch", batch), _count("crop", crop)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= MAX_SCORE:
        raise ValueError(f"lr must be a positive number within float32's range, got {lr!r}")
    images = [_colour(image) for image in images]
    small = [i for i, image in enumerate(images) if min(image.shape[:2]) < crop]
    if small:
        raise ValueError(f"image {small[0]} is smaller than the {crop}-pixel crop")
    wide = torch.tensor(values, dtype=torch.float64)
    target = ((wide - wide.mean()) / wide.std().clamp_min(1e-12)).float()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="scores", unit="step", disable=progress_disabled(progress)):
        x, picks = _crops(images, crop, batch, generator)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x).reshape(-1), target[picks])
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    model.eval()
    broken = next((name for name, p in model.state_dict().items()
                   if p.is_floating_point() and not bool(p.isfinite().all())), None)
    if broken is not None or not math.isfinite(losses[-1]):
        model.load_state_dict(before)
        where = f"the weights {broken!r} are not finite" if broken is not None else f"the loss is {losses[-1]}"
        raise ValueError(f"fit_scores diverged: after step {len(losses)} {where} (lr={lr:g}); the model was put back "
                         "as it was: lower lr")
    return losses


def evaluate_scores(model: nn.Module, images: Sequence[np.ndarray], scores: Sequence[float], crop: int,
                    crops: int = 16) -> tuple[float, float]:
    """``(LCC, SROCC)`` of the model's scores (each the mean over ``crops`` random crops) against ``scores``."""
    predicted = [score_image(model, image, crop, crops=crops, seed=i) for i, image in enumerate(images)]
    return lcc(predicted, scores), srocc(predicted, scores)
