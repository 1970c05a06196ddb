"""``netcompress rank train`` and ``netcompress rank score``: a quality network learned from rankings.

``rank train --images DIR --out OUT`` distorts every photograph of ``DIR`` at five levels of the
four kinds (:mod:`netcompress.rankings`), trains the paper's Shallow network on the ranked groups
(fast Siamese) and writes ``OUT/ranker.safetensors`` and ``OUT/ranker.json``. ``rank score --model
OUT IMAGE...`` prints each image's quality score (larger is better; the mean over random crops).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from netcompress.cli.inputs import _first_line, _open_image, checked_size, image_files

__all__ = ["add_rank_commands", "rank"]

FORMAT, VERSION = "netcompress.ranker", 1
WEIGHTS, CONFIG = "ranker.safetensors", "ranker.json"
MAX_CROP, MAX_WIDTH = 1024, 1024


def add_rank_commands(commands, common: argparse.ArgumentParser) -> None:
    """The ``rank`` command and its ``train`` and ``score`` subcommands."""
    rank_parser = commands.add_parser("rank", parents=[common], help="learn image quality from rankings and score images")
    actions = rank_parser.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", parents=[common], help="train a quality network on ranked distortions")
    train.add_argument("--images", required=True, help="a folder of photographs (reference images)")
    train.add_argument("--out", required=True, help="output directory (ranker.safetensors, ranker.json)")
    train.add_argument("--crop", type=int, default=64, help="side of the square crops (default 64, at least 48)")
    train.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    train.add_argument("--groups", type=int, default=4, help="ranked groups of 5 crops per step (default 4)")
    train.add_argument("--width", type=int, default=32, help="channels of the Shallow network (default 32)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--force", action="store_true",
                       help="write into a directory rank train did not write; only its two files are replaced")
    score = actions.add_parser("score", parents=[common], help="print the quality score of images")
    score.add_argument("--model", required=True, help="directory written by `netcompress rank train`")
    score.add_argument("images", nargs="+", help="image files")
    score.add_argument("--crops", type=int, default=16, help="random crops averaged per image (default 16)")
    score.add_argument("--json", action="store_true", help="print one JSON object mapping each image to its score")


def read_photograph(file: Path) -> np.ndarray:
    """An image file as a uint8 H×W×3 array, refusing what is not an image, a bomb or too large."""
    from PIL import Image

    with _open_image(file, Image) as image:
        checked_size(file, image)
        try:
            return np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as error:
            raise ValueError(f"image {file} cannot be decoded ({_first_line(error)})") from None


def _photographs(folder: Path, crop: int) -> list[np.ndarray]:
    """Every image of ``folder``, each at least ``crop`` pixels on each side."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    photographs = []
    for file in image_files(folder):
        image = read_photograph(file)
        if min(image.shape[:2]) < crop:
            raise ValueError(f"image {file} is {image.shape[1]}×{image.shape[0]} pixels, smaller than the {crop}-pixel "
                             "crop; remove it or pass a smaller --crop")
        photographs.append(image)
    return photographs


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force and not (out / CONFIG).is_file():
        raise ValueError(f"{out} is a non-empty directory that rank train did not write; choose a new or empty "
                         f"directory, or pass --force to replace only {WEIGHTS} and {CONFIG} in it")


def _positive(name: str, value: int, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be an integer from 1 to {limit:,}, got {value!r}")
    return value


def _train(args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import save_file

    from netcompress.rankings import RankedSet, Shallow, train_ranker
    from netcompress.storage.atomic import made_directories, staged_file

    out = Path(args.out)
    _check_target(out, args.force)
    for name, value, limit in (("--steps", args.steps, 1_000_000), ("--groups", args.groups, 1024),
                               ("--width", args.width, MAX_WIDTH), ("--crop", args.crop, MAX_CROP)):
        _positive(name, value, limit)
    torch.manual_seed(args.seed)
    model = Shallow(args.crop, width=args.width)  # refuses a crop too small before any image is read
    photographs = _photographs(Path(args.images), args.crop)
    ranked = RankedSet(photographs, crop=args.crop, seed=args.seed)
    history = train_ranker(model, ranked, steps=args.steps, groups=args.groups, seed=args.seed)
    config = {"format": FORMAT, "version": VERSION, "crop": args.crop, "width": args.width, "steps": args.steps,
              "groups": args.groups, "seed": args.seed, "images": len(photographs), "kinds": list(ranked.kinds),
              "first_loss": history.losses[0], "last_loss": history.losses[-1]}
    with made_directories(out), staged_file(out / CONFIG) as config_tmp, staged_file(out / WEIGHTS) as weights_tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights_tmp)
        config_tmp.write_text(json.dumps(config, indent=2))
    print(f"trained on {len(photographs)} photographs, {args.steps} steps: ranking loss {history.losses[0]:.4f} → "
          f"{history.losses[-1]:.4f}; wrote {out / WEIGHTS} and {out / CONFIG}")


def load_ranker(folder: Path):
    """The Shallow network ``rank train`` wrote in ``folder``, and its crop size."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from netcompress.rankings import Shallow
    from netcompress.storage.files import read_json

    config = read_json(folder / CONFIG, "ranker description") if (folder / CONFIG).is_file() else None
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(f"{folder} holds no {CONFIG} written by `netcompress rank train`")
    crop, width = _positive("crop", config.get("crop"), MAX_CROP), _positive("width", config.get("width"), MAX_WIDTH)
    model = Shallow(crop, width=width)
    try:
        state = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{folder / WEIGHTS} cannot be read as safetensors ({_first_line(error)})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{folder / WEIGHTS} does not fit the network {CONFIG} describes "
                         f"({str(error).strip().splitlines()[-1].strip()})") from None
    return model.eval(), crop


def _score(args: argparse.Namespace) -> None:
    from netcompress.rankings import score_image

    _positive("--crops", args.crops, 4096)
    model, crop = load_ranker(Path(args.model))
    scores = {}
    for name in args.images:
        file = Path(name)
        if not file.is_file():
            raise ValueError(f"{file} is not an image file")
        scores[name] = score_image(model, read_photograph(file), crop, crops=args.crops)
    if args.json:
        print(json.dumps(scores))
        return
    width = max(len(n) for n in scores)
    print(f"{'image'.ljust(width)}  quality score (larger is better)")
    for name, value in scores.items():
        print(f"{name.ljust(width)}  {value:.4f}")


def rank(args: argparse.Namespace) -> None:
    """Run ``rank train`` or ``rank score``."""
    {"train": _train, "score": _score}[args.action](args)
