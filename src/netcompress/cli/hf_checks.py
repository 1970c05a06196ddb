"""What ``compress --hf DIR`` checks in a model directory before transformers reads anything.

* ``config.json`` is bounded (:func:`check_config`): a regular file of at most 4 MiB holding a
  JSON object, integer size fields under caps, then (with a model class) a parameter count from a
  model built on the ``meta`` device against the bytes of the weights files;
* the directory must hold tokenizer files (:func:`check_tokenizer_files`);
* every file transformers may open (:data:`READ_SUFFIXES`) must be a regular file, not a FIFO,
  socket or device.

Needs ``transformers`` only for the parameter count (:func:`require_transformers`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

__all__ = ["READ_SUFFIXES", "check_config", "check_tokenizer_files", "require_transformers", "refuse_random_weights"]


# config.json: its size fields by name (nested configs included), and their caps. Counts of repeated
# modules (layers, heads, experts) are capped low because building each costs time even on `meta`; the
# largest released models have 126 layers, 128 heads and 384 experts. Any other size field (hidden,
# intermediate and vocabulary sizes, positions, …) is capped at 2**24; the parameter count then bounds them together.
MAX_CONFIG_BYTES = 4 << 20
MAX_REPEATED = 1024
# The sizes every transformers architecture that has them reads as whole numbers (others are capped only).
CORE_SIZES = frozenset({"num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                        "num_key_value_heads", "vocab_size", "max_position_embeddings", "n_layer", "n_head", "n_embd",
                        "n_positions", "d_model", "num_layers", "num_heads", "d_ff", "d_kv"})
MAX_SIZE = 1 << 24
REPEATED_FIELD = re.compile(r"(layers?|heads?|experts)$")
SIZE_FIELD = re.compile(r"^(num_\w+|n_\w+|max_position_embeddings|dim|d_model|d_ff|d_kv|\w+_(size|sizes|dim|length|rank)|"
                        r"\w*(layers?|heads?|experts|positions|channels))$")
SWITCH_PREFIXES = ("tie_", "use_", "is_", "scale_", "add_", "output_", "return_", "share_", "do_", "apply_")
MIN_BITS_PER_PARAMETER = 1  # 4-bit and ternary checkpoints hold more; a config asking for more is not these weights
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# A directory holds a tokenizer when it has one of these (byte-level tokenizers need only tokenizer_config.json).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")
TOKENIZER_SUFFIXES = (".model", ".tiktoken")
READ_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".safetensors", ".bin", ".jinja")  # what transformers may open


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("--hf needs transformers; install it with pip install 'netcompress[hf]'") from None
    return transformers


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def _check_files_are_regular(folder: Path) -> None:
    """Refuse a FIFO, socket or device among the files transformers may open, which would block it or never end."""
    from netcompress._core.files import require_regular

    for entry in sorted(folder.iterdir()):
        if entry.suffix in READ_SUFFIXES and not entry.is_dir():
            require_regular(entry, "--hf file")


def _integers(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


def _check_fields(data: dict, path: Path, where: str = "") -> None:
    for key, value in data.items():
        name = f"{where}{key}"
        if isinstance(value, dict):
            _check_fields(value, path, f"{name}.")
            continue
        if not isinstance(key, str) or not SIZE_FIELD.match(key) or key.startswith(SWITCH_PREFIXES) or value is None:
            continue
        cap = MAX_REPEATED if REPEATED_FIELD.search(key) else MAX_SIZE
        for item in _integers(value):
            # Only the sizes every architecture reads as whole numbers must be one; elsewhere a name that looks
            # like a size may hold words (GPT-Neo's attention_layers: ["global", "local"], Mamba's "auto" rank)
            # or a sentinel (DeBERTa's max_relative_positions = -1): neither allocates anything.
            if type(item) is not int:  # bool is an int to Python, not to a size
                if key not in CORE_SIZES:
                    continue
                raise ValueError(f"config.json {path} gives {name} as {_json_text(item)}, where transformers reads a "
                                 "whole number; write it as an integer")
            if item > cap or (item < 0 and key in CORE_SIZES):
                raise ValueError(f"config.json {path} gives {name} = {item:,}, outside the 0 to {cap:,} netcompress "
                                 "reads; fix the field (a real model's value is far smaller)")


def _json_text(value: object) -> str:
    import json

    return json.dumps(value)[:40]


def _weight_bytes(folder: Path) -> int:
    """The bytes of the weights files transformers would read in ``folder``: single files or an index's shards."""
    from netcompress._core.files import read_json, require_regular

    total = 0
    for name in WEIGHT_INDEXES:
        if (folder / name).exists():
            index = read_json(folder / name, "weights index")
            shards = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(shards, dict) or not all(isinstance(v, str) for v in shards.values()):
                raise ValueError(f"weights index {folder / name} has no weight_map of tensor names to shard files; "
                                 "write it again with save_pretrained")
            for shard in sorted(set(shards.values())):
                if Path(shard).name != shard:
                    raise ValueError(f"weights index {folder / name} names shard {shard!r} outside {folder}; "
                                     "shards must sit beside the index")
                total += require_regular(folder / shard, "weights shard").stat().st_size
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            total += require_regular(folder / name, "weights file").stat().st_size
    return total


def _meta_parameters(auto, config) -> int:
    """The parameters ``auto.from_config(config)`` holds, counted on a model built on the ``meta`` device."""
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_config(folder: str | os.PathLike, class_name: str | None = None) -> dict:
    """Bound ``folder/config.json`` before any model is built; returns its JSON object.

    Without transformers: the file is a regular one of at most 4 MiB holding a JSON object, and every
    size field (a name ending in size, dim, layers, heads, experts, positions, …, at any depth) is a
    whole number (or a list of them) from 0 to 2**24, counts of repeated modules (layers, heads,
    experts) at most 1,024. With ``class_name`` (an ``AutoModel…`` class) also the parameter count:
    the model is built on the ``meta`` device (no memory) with every layer count at 1 and at 2, the
    count extrapolated to the configured layers, and refused when the weights files hold less than
    one bit a parameter.
    """
    from netcompress._core.files import read_json

    folder = Path(folder)
    path = folder / "config.json"
    data = read_json(path, "config.json", limit=MAX_CONFIG_BYTES)
    if not isinstance(data, dict):
        raise ValueError(f"config.json {path} is not a JSON object of settings; write it again with save_pretrained")
    _check_fields(data, path)
    if class_name is None:
        return data
    transformers = require_transformers()
    auto = getattr(transformers, class_name)
    stored = _weight_bytes(folder)
    if stored == 0:
        raise ValueError(f"--hf {folder} holds no weights ({', '.join(WEIGHT_FILES)} or a sharded index); "
                         "give the directory save_pretrained wrote")
    layers = {k: v for k, v in data.items() if REPEATED_FIELD.search(k) and k.endswith(("layer", "layers"))
              and type(v) is int and v > 1}

    def build(**changes) -> int:
        try:
            config = (transformers.AutoConfig.for_model(**{**data, **changes}) if isinstance(data.get("model_type"), str)
                      else transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                                   trust_remote_code=False, **changes))
            return _meta_parameters(auto, config)
        except Exception as error:
            raise ValueError(f"{class_name} cannot be built from config.json {path} ({_first_line(error)})") from None

    try:  # one layer, then each layer count at 2: a count linear in the layers, without building them all
        one = build(**dict.fromkeys(layers, 1))
        per_layer = {k: build(**{**dict.fromkeys(layers, 1), k: 2}) - one for k in layers}
        count = one + sum((layers[k] - 1) * per_layer[k] for k in layers)
    except ValueError:  # a config that ties other fields to the layer count: build it whole (≤ 1,024 layers)
        per_layer, count = {}, build()
    if count * MIN_BITS_PER_PARAMETER > 8 * stored:
        field = max(per_layer, key=lambda k: (layers[k] - 1) * per_layer[k], default=None)
        if field is None or (layers[field] - 1) * per_layer[field] < count / 2:
            given = [f"{k} = {v:,}" for k, v in data.items() if SIZE_FIELD.match(k) and type(v) is int][:4]
            what = ", ".join(given) or "its size fields"
        else:
            what = f"{field} = {layers[field]:,} layers of {per_layer[field]:,} parameters"
        raise ValueError(f"config.json {path} describes {count:,} parameters ({what}), but the weights in {folder} "
                         f"hold {stored:,} bytes, under {MIN_BITS_PER_PARAMETER} bit a parameter; fix config.json "
                         "to the model the weights were saved from")
    return data


def check_tokenizer_files(folder: str | os.PathLike) -> None:
    """Refuse a model directory without the files a tokenizer is read from (transformers would build an empty one)."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir()}
    if not (names & set(TOKENIZER_FILES) or any(n.endswith(TOKENIZER_SUFFIXES) for n in names)):
        raise ValueError(f"--hf {folder} holds no tokenizer files (tokenizer.json, or the vocabulary its tokenizer "
                         "reads: vocab.txt, vocab.json and merges.txt, a SentencePiece *.model, or "
                         "tokenizer_config.json); save the model's tokenizer there with tokenizer.save_pretrained")


def refuse_random_weights(info: dict, source: str, class_name: str, fix: str) -> None:
    """Refuse a load where transformers would initialise some weights at random (missing or mismatched keys)."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        first = missing[0] if missing else mismatched[0][0] if isinstance(mismatched[0], tuple) else mismatched[0]
        raise ValueError(f"{source} lacks weights {class_name} needs ({len(missing) + len(mismatched)} tensor(s), "
                         f"first {first!r}), which it would initialise at random; {fix}")
