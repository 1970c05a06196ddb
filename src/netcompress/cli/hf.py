"""Hugging Face models for ``netcompress compress --hf DIR --text FILE``: loading, calibration text, save_pretrained.

* The model is read from the local directory ``DIR`` (``config.json`` and weights, as
  ``save_pretrained`` writes them) with ``transformers.AutoModel`` (or the ``--hf-class`` given,
  e.g. ``AutoModelForMaskedLM``), in float32 and eval mode, with ``local_files_only=True`` and
  ``trust_remote_code=False``: nothing is downloaded and no code from the directory runs. A model
  whose class would initialise weights ``DIR`` lacks (at random) is refused.
* The calibration data is a UTF-8 text file, one sample per line (blank lines skipped), tokenised
  with the model's own tokenizer (``AutoTokenizer`` on ``DIR``), truncated to ``--max-length``
  tokens, sorted by length and padded per batch (so that little padding enters the statistics), with
  the attention masks: each batch is a dict of keyword inputs.
* ``--save-pretrained DIR2`` also writes the compressed model as a plain Hugging Face directory
  (``save_pretrained``: config, safetensors weights, tokenizer), loadable with ``from_pretrained``
  alone. That needs every compressed layer to stay a plain layer of the original shape: masked
  pruning (``magnitude``, ``sparsegpt``) is written with its zeros, quantization with its dequantised
  float weights; low-rank and structured methods change the architecture and are refused before
  any work.

Before transformers reads anything, ``config.json`` is bounded (:func:`~.hf_checks.check_config`:
integer size fields under caps, then a parameter count from a model built on the ``meta`` device
against the bytes of the weights files), the directory must hold tokenizer files
(:func:`~.hf_checks.check_tokenizer_files`), and every file transformers may open must be a regular
file (those checks are :mod:`.hf_checks`); the tokenizer it builds is then measured on the
calibration text (:meth:`HFSource.check_text`) before the model is loaded.

Tied weights (an LM head sharing the input embedding matrix) are never compressed: ``compress``
leaves both layers dense with the reason "tied weights" in the Report, so the tie survives.
Needs ``transformers`` (``pip install 'netcompress[hf]'``), imported only here.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from netcompress.cli.hf_checks import (
    _check_files_are_regular,
    _first_line,
    check_config,
    check_tokenizer_files,
    refuse_random_weights,
    require_transformers,
)

__all__ = ["DEFAULT_CLASS", "DEFAULT_MAX_LENGTH", "HFSource", "check_arguments", "read_text", "shapes",
           "staged_pretrained"]


DEFAULT_CLASS = "AutoModel"
DEFAULT_MAX_LENGTH = 128
# Options of `compress` that describe tensors or images, which --hf does not take.
NOT_WITH_HF = {"model": "--model", "weights": "--weights", "data": "--data", "labels": "--labels",
               "image_size": "--image-size", "mean": "--mean", "std": "--std", "preset": "--preset"}
ONLY_WITH_HF = {"text": "--text", "max_length": "--max-length", "hf_class": "--hf-class",
                "save_pretrained": "--save-pretrained"}


MAX_TEXT_BYTES = 1 << 30  # calibration needs a few thousand lines; a gigabyte is far more
MIN_VOCABULARY = 16  # the empty tokenizer transformers builds without files holds only its 5 special tokens
MAX_UNKNOWN_SHARE = 0.5
CHECKED_LINES = 256  # the lines of --text that check_text tokenizes to measure the unknown share
# The family whose methods keep every layer plain and of its original shape once masks and codes are folded.
FOLDABLE_FAMILY = "layer"


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def check_arguments(args: argparse.Namespace, steps: list[dict]) -> list[str] | None:
    """Refuse, before the model is read, what ``compress --hf`` cannot do (or HF options without ``--hf``).

    Also bounds ``config.json``'s size fields (:func:`check_config`, without transformers), refuses
    special files transformers would open and a directory without tokenizer files.
    Returns the calibration lines of ``--text`` (None without ``--hf``).
    """
    if not args.hf:
        given = [flag for key, flag in ONLY_WITH_HF.items() if getattr(args, key, None) is not None]
        if given:
            raise ValueError(f"{given[0]} goes with --hf DIR (a Hugging Face model directory)")
        return None
    given = [flag for key, flag in NOT_WITH_HF.items() if getattr(args, key, None) is not None]
    if given:
        what = "the model" if given[0] in ("--model", "--weights") else "the calibration data as --text FILE"
        raise ValueError(f"--hf takes {what}, so {given[0]} does not go with it")
    if args.text is None:
        raise ValueError("--hf needs calibration text: --text FILE, one sample per line")
    if args.max_length is not None and args.max_length <= 0:
        raise ValueError(f"--max-length must be positive, got {args.max_length}")
    if any("finetune" in step for step in steps):
        raise ValueError("fine-tuning steps need labelled tensors, which --hf does not take; "
                         "drop the finetune steps from the recipe")
    folder = Path(args.hf)
    if not folder.is_dir():
        raise ValueError(f"--hf {folder} is not a directory; give a local Hugging Face model directory "
                         "(as save_pretrained writes it)")
    if not (folder / "config.json").exists():  # a FIFO or device there is refused by check_config, unread
        raise ValueError(f"--hf {folder} has no config.json, so it is not a Hugging Face model directory")
    if _same(Path(args.output), folder):
        raise ValueError(f"-o {args.output} is the --hf directory; write the compressed model to a directory "
                         "of its own")
    if args.ncz and _same(Path(args.ncz).parent, folder):
        raise ValueError(f"--ncz {args.ncz} is inside the --hf directory; write the container elsewhere")
    if args.save_pretrained is not None:
        _check_pretrained_target(Path(args.save_pretrained), args, steps)
    lines = read_text(args.text)
    _check_files_are_regular(folder)
    check_config(folder)
    check_tokenizer_files(folder)
    return lines


def _check_pretrained_target(path: Path, args: argparse.Namespace, steps: list[dict]) -> None:
    from netcompress.compress import METHODS

    for step in steps:
        chosen = METHODS[step["method"]] if "method" in step else None
        if chosen is not None and chosen.family != FOLDABLE_FAMILY:
            raise ValueError(
                f"--save-pretrained writes plain layers of the original shapes, which {chosen.name!r} does not keep "
                "(it changes the architecture); use masked pruning (magnitude, sparsegpt) or quantization "
                "(uniform, kmeans, gptq, …), or load -o with nc.load"
            )
    for other, flag in ((args.output, "-o"), (args.ncz, "--ncz")):
        if other is not None and _same(path, Path(other)):
            raise ValueError(f"--save-pretrained {path} is the {flag} path; give it a directory of its own")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"--save-pretrained {path} exists and is not an empty directory; choose a new or empty "
                         "directory (netcompress never writes over a model directory)")


def read_text(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of the UTF-8 text file ``path``, stripped: one calibration sample each."""
    from netcompress._core.files import read_bytes

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--text {path} is a directory; give a text file")
    try:
        text = read_bytes(path, "--text", MAX_TEXT_BYTES).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"--text {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"--text {path} holds no text; give one calibration sample per line")
    return lines


class HFSource:
    """A Hugging Face model directory, its tokenizer and the class that loads it."""

    def __init__(self, folder: str | os.PathLike, class_name: str | None = None):
        self.transformers = require_transformers()
        self.folder = Path(folder)
        self.class_name = class_name or DEFAULT_CLASS
        auto = getattr(self.transformers, self.class_name, None) if self.class_name.startswith("AutoModel") else None
        if auto is None or not hasattr(auto, "from_pretrained"):
            raise ValueError(f"--hf-class {self.class_name} is not a transformers AutoModel class; give e.g. "
                             "AutoModel, AutoModelForMaskedLM or AutoModelForCausalLM")
        self.auto = auto
        with self._quiet():
            check_config(self.folder, self.class_name)
            try:
                self.tokenizer = self.transformers.AutoTokenizer.from_pretrained(
                    str(self.folder), local_files_only=True, trust_remote_code=False)
            except Exception as error:  # transformers raises OSError, ValueError, KeyError, …
                raise ValueError(f"--hf {self.folder} has no tokenizer AutoTokenizer can read "
                                 f"({_first_line(error)})") from None

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """No progress bars from transformers while it reads the directory (its warnings still show)."""
        log = self.transformers.utils.logging
        bars_were_on = log.is_progress_bar_enabled()
        log.disable_progress_bar()
        try:
            yield
        finally:
            if bars_were_on:
                log.enable_progress_bar()

    def load_model(self) -> nn.Module:
        """The model in float32 and eval mode; refused if the class would initialise weights at random."""
        from packaging.version import Version

        dtype = "dtype" if Version(self.transformers.__version__) >= Version("4.56") else "torch_dtype"
        with self._quiet():
            try:
                model, info = self.auto.from_pretrained(
                    str(self.folder), local_files_only=True, trust_remote_code=False, output_loading_info=True,
                    **{dtype: torch.float32})
            except Exception as error:
                raise ValueError(f"{self.class_name} cannot load --hf {self.folder} ({_first_line(error)})") from None
        refuse_random_weights(info, f"--hf {self.folder}", self.class_name,
                              "give the --hf-class the checkpoint was saved as")
        return model.eval()

    def check_text(self, lines: list[str], max_length: int | None = None, text: str | os.PathLike = "--text") -> None:
        """Refuse a tokenizer with a tiny vocabulary, or one that reads ``lines`` mostly as its unknown token.

        Measured on the first :data:`CHECKED_LINES` of the user's calibration text: more than half
        of their (non-special) tokens unknown means the tokenizer is not the one the model was
        trained with.
        """
        tokenizer = self.tokenizer
        size = len(tokenizer)
        if size < MIN_VOCABULARY:
            raise ValueError(f"the tokenizer of --hf {self.folder} has only {size} token(s); give the directory the "
                             "tokenizer files the model was saved with (tokenizer.json or its vocabulary files)")
        # A sample is enough for a share (batches() tokenizes every line again for calibration).
        ids = tokenizer(lines[:CHECKED_LINES], truncation=True,
                        max_length=max_length or DEFAULT_MAX_LENGTH)["input_ids"]
        unknown, special = tokenizer.unk_token_id, set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
        tokens = [t for row in ids for t in row if t not in special]
        share = sum(t == unknown for t in tokens) / len(tokens) if tokens and unknown is not None else 0.0
        if not tokens or share > MAX_UNKNOWN_SHARE:
            what = "to no token" if not tokens else f"{share:.0%} of its {len(tokens):,} tokens to {tokenizer.unk_token!r}"
            raise ValueError(f"the tokenizer of --hf {self.folder} maps --text {text} {what}; give the directory the "
                             "tokenizer the model was trained with, or text in the model's language")

    def batches(self, lines: list[str], batch_size: int, max_length: int | None, model: nn.Module) -> list[dict]:
        """Keyword-input batches for ``model``: sorted by length, truncated, padded per batch, with attention masks."""
        if batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {batch_size}")
        tokenizer = self.tokenizer
        if tokenizer.pad_token is None:  # GPT-2 and other causal LMs: any token pads, the attention mask hides it
            fill = tokenizer.eos_token or tokenizer.unk_token
            if fill is None:
                raise ValueError(f"the tokenizer of {self.folder} has no padding, end or unknown token to pad with; "
                                 "use --batch-size 1")
            tokenizer = self.transformers.AutoTokenizer.from_pretrained(
                str(self.folder), local_files_only=True, trust_remote_code=False, pad_token=fill)
        length = max_length or DEFAULT_MAX_LENGTH
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < length:
            length = limit  # beyond it the model has no position embeddings
        counts = tokenizer(lines, truncation=True, max_length=length)["input_ids"]
        order = sorted(range(len(lines)), key=lambda i: len(counts[i]))
        ordered = [lines[i] for i in order]
        takes = _keyword_inputs(model)
        out = []
        for start in range(0, len(ordered), batch_size):
            batch = tokenizer(ordered[start:start + batch_size], padding=True, truncation=True, max_length=length,
                              return_tensors="pt")
            out.append({k: v for k, v in batch.items() if takes is None or k in takes})
        return out

    def load_hint(self, output: str | os.PathLike) -> str:
        return (f"load it with: nc.load(transformers.{self.class_name}.from_pretrained({str(self.folder)!r}), "
                f"{str(output)!r})")


def _keyword_inputs(model: nn.Module) -> set[str] | None:
    """The keyword arguments ``model.forward`` names, or None when it takes any (``**kwargs``)."""
    parameters = inspect.signature(model.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@contextlib.contextmanager
def staged_pretrained(model: nn.Module, source: HFSource, path: str | os.PathLike,
                      original: dict[str, tuple[int, ...]]) -> Iterator[None]:
    """Write ``model`` with its masks and codes folded (``save_pretrained``) under a temporary name beside ``path``.

    The directory is renamed onto ``path`` when the block succeeds (``path`` new or empty), else removed.
    ``original`` is the original model's state-dict shapes, which the folded model must have exactly.
    """
    from netcompress._core.atomic import made_directories, umask_mode
    from netcompress._core.layers import replacement_types
    from netcompress.storage.onnx import dense_layers

    path = Path(path)
    with made_directories(path.parent):
        staged = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            os.chmod(staged, umask_mode(0o777))  # mkdtemp makes a 0700 directory; give the usual permissions
            with dense_layers(model):
                left = next(((n, m) for n, m in model.named_modules() if isinstance(m, replacement_types())), None)
                folded = shapes(model)
                if left is not None or folded != original:
                    where = (f"layer {left[0]!r} is a {type(left[1]).__name__}" if left is not None else
                             f"tensor {next(k for k in {*folded, *original} if folded.get(k) != original.get(k))!r} "
                             "differs")
                    raise ValueError(f"--save-pretrained needs plain layers of the original shapes, but {where}; "
                                     "load -o with nc.load instead")
                options = {"safe_serialization": True} if "safe_serialization" in inspect.signature(
                    model.save_pretrained).parameters else {}
                with source._quiet():
                    model.save_pretrained(str(staged), **options)
            source.tokenizer.save_pretrained(str(staged))
            for file in staged.rglob("*"):
                if file.is_file():  # some writers stage 0600 temporary files; give the usual permissions
                    os.chmod(file, umask_mode(0o666))
            yield
            if path.is_dir():
                path.rmdir()  # empty, as checked before any work; a file put there since makes this fail
            os.rename(staged, path)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)  # our own temporary directory
            raise
