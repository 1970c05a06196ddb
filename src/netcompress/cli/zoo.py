"""Models from a model zoo for ``--model``: an architecture from torchvision, timm or transformers, weights from the user.

Three forms, each built without downloading anything and without unpickling anything:

* ``--model torchvision:NAME --weights FILE`` — ``torchvision.models.get_model(NAME, weights=None)``
  (every ``weights…`` argument of the builder set to None, so that detection models do not fetch
  their ImageNet backbone either): the architecture at random initialisation, into which the
  state dict ``FILE`` (``.safetensors``, or a ``torch.save``'d ``.pt``/``.pth`` read with
  ``weights_only=True``) is loaded strictly, as for a factory's model
  (:func:`netcompress.cli.inputs.read_weights`).
* ``--model timm:NAME --weights FILE`` — ``timm.create_model(NAME, pretrained=False)`` (a
  pretrained tag such as ``resnet18.a1_in1k`` is accepted, ``hf-hub:`` and other sources are not),
  then the state dict ``FILE`` loaded in the same way.
* ``--model transformers:CLASS --weights DIR`` — ``CLASS`` is a model class of ``transformers``
  (``AutoModel``, ``AutoModelForSequenceClassification``, ``BertModel``, …) and ``DIR`` a local
  directory as ``save_pretrained`` writes it: ``config.json`` (bounded by
  :func:`netcompress.cli.hf_checks.check_config` before transformers reads it) and ``model.safetensors``
  (or a sharded ``model.safetensors.index.json``), read with ``from_pretrained(DIR,
  local_files_only=True, use_safetensors=True, trust_remote_code=False)`` in float32. A directory
  holding only pickled weights (``pytorch_model.bin``) is refused, and so is a class that would
  initialise some of its weights at random because ``DIR`` lacks them.

``--weights`` is required in every form: an architecture at random initialisation is not what
anybody compresses. Every refusal is one sentence naming the argument and the fix, raised as
``ValueError``. torchvision, timm and transformers are imported only when such a model is built.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from types import ModuleType

from torch import nn

__all__ = ["build", "ZOO_PREFIXES", "build_zoo_model", "is_zoo_spec"]

ZOO_PREFIXES = ("torchvision", "timm", "transformers")
# The pip command that installs each zoo's package.
INSTALL = {"torchvision": "pip install torchvision", "timm": "pip install timm",
           "transformers": "pip install 'netcompress[hf]'"}
# Suggested when a transformers class name is close to none of the model classes.
COMMON_CLASSES = ("AutoModel", "AutoModelForSequenceClassification", "AutoModelForCausalLM", "AutoModelForMaskedLM")
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def is_zoo_spec(spec: str) -> bool:
    """Whether the ``--model`` value ``spec`` names a zoo model (``torchvision:…``, ``timm:…``, ``transformers:…``)."""
    prefix, colon, _ = spec.partition(":")
    return bool(colon) and prefix in ZOO_PREFIXES


def _close(name: str, candidates: list[str], count: int = 3) -> list[str]:
    """Up to ``count`` of ``candidates`` close to ``name`` (compared without case), best first."""
    lowered: dict[str, str] = {}
    for candidate in candidates:
        lowered.setdefault(candidate.lower(), candidate)
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=count, cutoff=0.6)]


def _did_you_mean(matches: list[str]) -> str:
    return f"did you mean {', '.join(matches)}?" if matches else ""


def _require(package: str, spec: str) -> ModuleType:
    """Import ``package`` for ``spec``, or refuse in one sentence saying how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except Exception as error:  # ImportError, or torchvision's RuntimeError against a torch it was not built for
        import torch

        raise ValueError(
            f"--model {spec} needs {package}, which is not importable here ({type(error).__name__}: "
            f"{_first_line(error)}); install a {package} that imports against the installed torch "
            f"{torch.__version__}: {INSTALL[package]}"
        ) from None


def _require_weights(spec: str, weights: str | Path | None) -> str | Path:
    if weights is None:
        raise ValueError(f"--model {spec} needs --weights FILE, the trained state dict (.safetensors, or a "
                         "torch.save'd model.state_dict() as .pt/.pth): netcompress builds the architecture "
                         "without downloading anything, and a randomly initialised model is not worth compressing")
    return weights


def _load_state(model: nn.Module, spec: str, weights: str | Path) -> nn.Module:
    """Load the state dict ``weights`` into ``model`` strictly, as :func:`netcompress.cli.inputs.build_model` does."""
    from netcompress.cli.inputs import _load_weights, read_weights

    _load_weights(model, read_weights(weights), spec, weights)
    return model


def _torchvision(name: str, spec: str, weights: str | Path | None) -> nn.Module:
    torchvision = _require("torchvision", spec)
    models = torchvision.models
    known = list(models.list_models())
    if name.lower() not in known:
        raise ValueError(f"--model {spec}: torchvision has no model {name!r}; "
                         + (_did_you_mean(_close(name, known)) or "see torchvision.models.list_models()"))
    weights = _require_weights(spec, weights)
    builder = models.get_model_builder(name.lower())
    # weights=None alone still downloads the ImageNet backbone of detection and segmentation models.
    no_downloads = {p: None for p in inspect.signature(builder).parameters if p.startswith("weights")}
    try:
        model = models.get_model(name.lower(), **no_downloads)
    except Exception as error:
        raise ValueError(f"torchvision cannot build --model {spec} ({type(error).__name__}: "
                         f"{_first_line(error)})") from None
    return _load_state(model, spec, weights)


def _timm(name: str, spec: str, weights: str | Path | None) -> nn.Module:
    timm = _require("timm", spec)
    if ":" in name or "/" in name:
        raise ValueError(f"--model {spec} names a model timm would fetch from elsewhere, and netcompress downloads "
                         "nothing; give a timm architecture (timm:resnet18) and its weights as --weights FILE")
    if not timm.is_model(name):
        raise ValueError(f"--model {spec}: timm has no model {name!r}; "
                         + (_did_you_mean(_close(name, list(timm.list_models()))) or "see timm.list_models()"))
    weights = _require_weights(spec, weights)
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as error:
        raise ValueError(f"timm cannot build --model {spec} ({type(error).__name__}: {_first_line(error)})") from None
    return _load_state(model, spec, weights)


def _model_class(transformers: ModuleType, name: str, spec: str) -> type:
    """The transformers model class ``name`` (an ``AutoModel…`` class or a ``PreTrainedModel``), or one sentence."""
    if not name.isidentifier():
        raise ValueError(f"--model {spec} must name a transformers model class, e.g. transformers:AutoModel")
    try:
        found = getattr(transformers, name, None)
    except Exception as error:  # the lazy module imports the class's module, which may need more packages
        raise ValueError(f"transformers.{name} for --model {spec} cannot be imported ({type(error).__name__}: "
                         f"{_first_line(error)})") from None
    is_model = isinstance(found, type) and hasattr(found, "from_pretrained") and (
        name.startswith("AutoModel") or issubclass(found, transformers.PreTrainedModel))
    if is_model:
        return found
    common = f"give a model class, e.g. {', '.join(COMMON_CLASSES)}"
    if found is not None:
        raise ValueError(f"--model {spec}: transformers.{name} is not a model class with from_pretrained; {common}")
    candidates = [n for n in dir(transformers) if "Model" in n and n[:1].isupper()]
    matches = _close(name, candidates)
    raise ValueError(f"--model {spec}: transformers has no class {name!r}; "
                     + (_did_you_mean(matches) if matches else common))


def _transformers(name: str, spec: str, weights: str | Path | None) -> nn.Module:
    transformers = _require("transformers", spec)
    cls = _model_class(transformers, name, spec)
    if weights is None:
        raise ValueError(f"--model {spec} needs --weights DIR, a local model directory as save_pretrained writes it "
                         "(config.json and model.safetensors); netcompress downloads nothing")
    folder = Path(weights)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a directory"
        raise ValueError(f"--weights {folder} {what}; --model {spec} takes a local model directory as "
                         "save_pretrained writes it (config.json and model.safetensors)")
    if not (folder / "config.json").exists():
        raise ValueError(f"--weights {folder} has no config.json, so it is not a transformers model directory; "
                         "give the directory save_pretrained wrote")
    names = {entry.name for entry in folder.iterdir()}
    if not names & set(SAFETENSORS_FILES):
        pickled = sorted(names & set(PICKLE_FILES))
        if pickled:
            raise ValueError(f"--weights {folder} holds only pickled weights ({', '.join(pickled)}), which netcompress "
                             "never unpickles; save them as model.safetensors (model.save_pretrained(DIR) writes it) "
                             "from a Python you trust")
        raise ValueError(f"--weights {folder} holds no model.safetensors; give the directory save_pretrained wrote")
    return _load_pretrained(transformers, cls, name, spec, folder)


def _load_pretrained(transformers: ModuleType, cls: type, name: str, spec: str, folder: Path) -> nn.Module:
    """``cls.from_pretrained(folder)`` offline, from safetensors, in float32, after bounding ``config.json``."""
    import torch
    from packaging.version import Version

    from netcompress._core.files import require_regular
    from netcompress.cli.hf_checks import READ_SUFFIXES, check_config, refuse_random_weights

    for entry in sorted(folder.iterdir()):  # a named pipe or device would block transformers or never end
        if entry.suffix in READ_SUFFIXES and not entry.is_dir():
            require_regular(entry, "--weights file")
    # The parameter count of config.json against the bytes of the weights (a base model's for a concrete class).
    check_config(folder, name if name.startswith("AutoModel") else "AutoModel")
    dtype = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    log = transformers.utils.logging
    bars_were_on = log.is_progress_bar_enabled()
    log.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False,
            output_loading_info=True, **{dtype: torch.float32})
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, …
        raise ValueError(f"{name} cannot load --weights {os.fspath(folder)} ({type(error).__name__}: "
                         f"{_first_line(error)})") from None
    finally:
        if bars_were_on:
            log.enable_progress_bar()
    refuse_random_weights(info, f"--weights {folder}", name,
                          "give --model the transformers class the checkpoint was saved as")
    return model.eval()


BUILDERS = {"torchvision": _torchvision, "timm": _timm, "transformers": _transformers}


def build_zoo_model(spec: str, weights: str | Path | None) -> nn.Module:
    """The model ``spec`` (``torchvision:NAME``, ``timm:NAME`` or ``transformers:CLASS``) holding ``weights``.

    See the module docstring for each form. Nothing is downloaded and nothing is unpickled; every
    refusal (a package that does not import, an unknown name with its close matches, missing or
    unfitting ``--weights``) is one sentence, raised as ``ValueError``.
    """
    prefix, colon, name = spec.partition(":")
    if not colon or prefix not in BUILDERS:
        raise ValueError(f"--model {spec} is not a zoo model; give torchvision:NAME, timm:NAME or transformers:CLASS")
    if not name.strip():
        raise ValueError(f"--model {spec} names no model; give one after the colon, e.g. {prefix}:"
                         + ("AutoModel" if prefix == "transformers" else "resnet18"))
    return BUILDERS[prefix](name.strip(), spec, weights)


def build(spec: str, weights: str | Path | None) -> nn.Module:
    """What ``--model SPEC --weights W`` builds: a zoo architecture (:func:`build_zoo_model`) or a user factory."""
    from netcompress.cli.inputs import build_model

    return build_zoo_model(spec, weights) if is_zoo_spec(spec) else build_model(spec, weights)
