"""``netcompress rank train`` and ``netcompress rank score``: a quality network learned from rankings.

``rank train --images DIR --out OUT`` distorts every photograph of ``DIR`` at five levels of the
four kinds (:mod:`netcompress.rankings`), trains the paper's Shallow network on the ranked groups
(fast Siamese) and writes ``OUT/ranker.safetensors`` and ``OUT/ranker.json``. ``rank score --model
OUT IMAGE...`` prints each image's quality score (larger is better; the mean over random crops).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from netcompress.cli.inputs import _first_line, _open_image, checked_size, image_files

__all__ = ["add_rank_commands", "rank"]

FORMAT, VERSION = "netcompress.ranker", 1
WEIGHTS, CONFIG = "ranker.safetensors", "ranker.json"
MAX_CROP, MAX_WIDTH = 1024, 1024
MAX_STEPS, MAX_GROUPS = 1_000_000, 1024


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
    ours = {f".{WEIGHTS}.next"}  # what an interrupted rank train leaves (see storage.atomic.write_vouched)
    if out.is_dir() and any(e.name not in ours and not _temporary(e) for e in out.iterdir()) and not force \
            and not (out / CONFIG).is_file():
        raise ValueError(f"{out} is a non-empty directory that rank train did not write; choose a new or empty "
                         f"directory, or pass --force to replace only {WEIGHTS} and {CONFIG} in it")


def _temporary(entry: Path) -> bool:
    from netcompress._core.atomic import temporary_of

    return temporary_of(entry, (CONFIG, WEIGHTS, f".{WEIGHTS}.next"))


def _vouching(out: Path) -> tuple[dict, dict] | None:
    """The weights digest the ranker description in ``out`` vouches for, as ``write_vouched`` reads it."""
    from netcompress._core.files import read_json

    try:
        config = read_json(out / CONFIG, "ranker description", 1 << 20)
    except ValueError:
        return None
    digests = config.get("sha256") if isinstance(config, dict) and config.get("format") == FORMAT else None
    return ({k: v for k, v in digests.items() if isinstance(v, str)}, {}) if isinstance(digests, dict) else None


def _positive(name: str, value: int, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be an integer from 1 to {limit:,}, got {value!r}")
    return value


def _train(args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import save_file

    from netcompress._core.atomic import write_vouched
    from netcompress.rankings import RankedSet, Shallow, train_ranker

    out = Path(args.out)
    _check_target(out, args.force)
    for name, value, limit in (("--steps", args.steps, MAX_STEPS), ("--groups", args.groups, MAX_GROUPS),
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
    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    def write_config(tmp: Path, digests: dict[str, str], removes: dict[str, str]) -> None:
        tmp.write_text(json.dumps({**config, "sha256": digests}, indent=2))

    # The weights are staged, then ranker.json (which names their SHA-256) is renamed into place: the one switch.
    write_vouched(out, {WEIGHTS: lambda tmp: save_file(state, tmp)}, CONFIG, write_config, lambda: _vouching(out),
                  (WEIGHTS,))
    print(f"trained on {len(photographs)} photographs, {args.steps} steps: ranking loss {history.losses[0]:.4f} → "
          f"{history.losses[-1]:.4f}; wrote {out / WEIGHTS} and {out / CONFIG}")


# What ``rank score`` may allocate for a ranker a description asks for (rule 13: checked before anything is
# built): its float32 parameters, and the scoring batch's activations (see ``shallow_scoring_bytes``).
MAX_RANKER_BYTES = 1 << 30  # 268M parameters; a Shallow network of width 1024 on 227-pixel crops has 170M
MAX_SCORING_BYTES = 2 << 30  # 16 crops of 227 pixels through width 32 take 0.2 GiB
MAX_WEIGHTS_HEADER = 1 << 20  # the safetensors header of the Shallow network's ten tensors is ~1 KB
MIN_CROP = 48  # the smallest crop the Shallow network can take (two 4× poolings and a 3×3 convolution)


def _field(config: dict, file: Path, name: str, low: int, high: int) -> int:
    value = config.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = "missing" if name not in config else f"{json.dumps(value)[:40]}"
        raise ValueError(f"ranker description {file}: {name!r} must be an integer from {low:,} to {high:,}, got "
                         f"{shown}; write it again with `netcompress rank train`")
    return value


def _check_description(config: object, file: Path) -> tuple[int, int]:
    """``(crop, width)`` of a ranker description, every field checked; one ``ValueError`` naming the field otherwise."""
    from netcompress.rankings import KINDS

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{file} is not a ranker description written by `netcompress rank train` (no 'format': "
                         f"{FORMAT!r}); pass the directory rank train wrote")
    _field(config, file, "version", VERSION, VERSION)
    unknown = sorted(set(config) - set(_DESCRIPTION_FIELDS))
    if unknown:
        raise ValueError(f"ranker description {file}: field {unknown[0][:40]!r} is not one rank train writes; "
                         "write it again with `netcompress rank train`")
    for name, low, high in (("steps", 1, MAX_STEPS), ("groups", 1, MAX_GROUPS), ("seed", -(1 << 63), (1 << 64) - 1),
                            ("images", 1, 1 << 31)):
        _field(config, file, name, low, high)
    kinds = config.get("kinds")
    if not isinstance(kinds, list) or not kinds or len(set(map(repr, kinds))) != len(kinds) \
            or not all(isinstance(k, str) and k in KINDS for k in kinds):
        raise ValueError(f"ranker description {file}: 'kinds' must be a list of distinct distortions from "
                         f"{', '.join(KINDS)}, got {json.dumps(kinds)[:60] if 'kinds' in config else 'missing'}; "
                         "write it again with `netcompress rank train`")
    digests = config.get("sha256", {})
    if not (isinstance(digests, dict) and set(digests) <= {WEIGHTS}
            and all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in digests.values())):
        raise ValueError(f"ranker description {file}: 'sha256' must map {WEIGHTS} to its SHA-256 in hexadecimal, got "
                         f"{json.dumps(digests)[:60]}; write it again with `netcompress rank train`")
    for name in ("first_loss", "last_loss"):
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"ranker description {file}: {name!r} must be a finite loss >= 0, got "
                             f"{json.dumps(value)[:40] if name in config else 'missing'}; "
                             "write it again with `netcompress rank train`")
    return _field(config, file, "crop", MIN_CROP, MAX_CROP), _field(config, file, "width", 1, MAX_WIDTH)


_DESCRIPTION_FIELDS = ("format", "version", "crop", "width", "steps", "groups", "seed", "images", "kinds",
                       "first_loss", "last_loss", "sha256")


def load_ranker(folder: Path, crops: int = 16):
    """The Shallow network ``rank train`` wrote in ``folder``, and its crop size; each file checked before use.

    Every field of ``ranker.json`` is checked (type, range; a field rank train does not write is
    refused). Before anything is built, the network it describes must fit ``MAX_RANKER_BYTES``
    (float32 parameters), scoring ``crops`` crops with it must fit ``MAX_SCORING_BYTES`` (see
    :func:`~netcompress.rankings.networks.shallow_scoring_bytes`), and ``ranker.safetensors`` must be a
    regular file of the size those parameters take. Every refusal is one ``ValueError`` naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from netcompress._core.atomic import vouched
    from netcompress._core.files import read_bytes, read_json, require_regular
    from netcompress.rankings import Shallow
    from netcompress.rankings.networks import shallow_parameters, shallow_scoring_bytes

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--model {folder} is not a directory; pass the directory `netcompress rank train` wrote "
                         f"(it holds {CONFIG} and {WEIGHTS})")
    if not (folder / CONFIG).exists():
        raise ValueError(f"{folder} holds no {CONFIG} written by `netcompress rank train`; pass the directory "
                         "rank train wrote")
    description = folder / CONFIG
    config = read_json(description, "ranker description", 1 << 20)
    crop, width = _check_description(config, description)
    parameters = shallow_parameters(crop, width)
    if 4 * parameters > MAX_RANKER_BYTES:
        raise ValueError(f"ranker description {description}: 'crop' {crop} and 'width' {width} describe a network of "
                         f"{parameters:,} parameters ({4 * parameters / 2**30:.1f} GiB), more than the "
                         f"{MAX_RANKER_BYTES >> 30} GiB a ranker may take; train a narrower ranker or smaller crops")
    needed, most = shallow_scoring_bytes(crop, width, crops), MAX_SCORING_BYTES // shallow_scoring_bytes(crop, width, 1)
    if needed > MAX_SCORING_BYTES:
        fix = f"pass at most --crops {most}" if most else "train a narrower ranker or smaller crops"
        raise ValueError(f"scoring --crops {crops} crops with the ranker of {description} ('crop' {crop}, 'width' "
                         f"{width}) needs about {needed / 2**30:.1f} GiB, more than the {MAX_SCORING_BYTES >> 30} GiB "
                         f"cap; {fix}")
    weights = folder / WEIGHTS
    digest = config.get("sha256", {}).get(WEIGHTS)  # checked by _check_description
    if digest is not None:  # in place, or staged by a rank train cut short after its switch
        found = vouched(folder, WEIGHTS, digest)
        if found is None:
            require_regular(weights, "ranker weights")
            raise ValueError(f"ranker weights {weights} are not the ones {CONFIG} was written with (their SHA-256 "
                             "differs); train the ranker again")
        weights = found
    require_regular(weights, "ranker weights")
    size, least = weights.stat().st_size, 4 * parameters
    if not least <= size <= least + MAX_WEIGHTS_HEADER:
        raise ValueError(f"ranker weights {weights} is {size:,} bytes, but the {parameters:,} float32 parameters "
                         f"{CONFIG} describes ('crop' {crop}, 'width' {width}) take {least:,} bytes plus a header; "
                         "the ranker is corrupt: train it again")
    data = read_bytes(weights, "ranker weights", least + MAX_WEIGHTS_HEADER)
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"ranker weights {weights} cannot be read as safetensors ({_first_line(error)}); "
                         "train the ranker again") from None
    del data
    model = Shallow(crop, width=width)
    expected = model.state_dict()
    for name, tensor in expected.items():
        found = state.get(name)
        if found is None or found.shape != tensor.shape or found.dtype != tensor.dtype:
            got = "missing" if found is None else f"{found.dtype} {tuple(found.shape)}"
            raise ValueError(f"ranker weights {weights} do not fit the network {CONFIG} describes: tensor {name!r} "
                             f"is {got}, not {tensor.dtype} {tuple(tensor.shape)}; train the ranker again")
        if not bool(found.isfinite().all()):
            raise ValueError(f"ranker weights {weights} hold non-finite values in {name!r}; the ranker is corrupt: "
                             "train it again")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ValueError(f"ranker weights {weights} hold tensor {extra[0][:60]!r}, which the network {CONFIG} "
                         "describes does not have; train the ranker again")
    model.load_state_dict(state)
    return model.eval(), crop


def _score(args: argparse.Namespace) -> None:
    from netcompress._core.files import require_regular
    from netcompress.rankings import score_image

    _positive("--crops", args.crops, 4096)
    model, crop = load_ranker(Path(args.model), crops=args.crops)
    scores = {}
    for name in args.images:
        file = require_regular(name, "image")  # one that does not exist, a folder or a pipe: one sentence each
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
