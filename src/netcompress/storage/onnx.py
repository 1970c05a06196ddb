"""Exporting a compressed model to ONNX, checked with onnxruntime against PyTorch before it is kept.

``export_onnx(model, example, "model.onnx", check_data=batches)`` traces ``model`` (in eval mode)
with ``example``, writes an ONNX file whose batch axis is dynamic, runs it with onnxruntime on
``example`` and on every batch of ``check_data``, and compares each output with PyTorch's. The
file appears only when the outputs agree: it is written under a temporary name beside ``path``
and renamed into place after the check, so a failed export or check leaves nothing behind.

What the file holds, layer by layer:

* low-rank layers (:class:`~netcompress.LowRankLinear`, :class:`~netcompress.LowRankConv2d`) stay
  two layers, so the file keeps their smaller size and cost;
* structured pruning (``channel``, ``activation``) left plain, smaller layers: exported as they are;
* masked layers (``magnitude``, ``sparsegpt``, …) are exported as plain layers whose pruned weights
  are zero: ONNX has no sparse weights, so the file is as large as the dense model's;
* weight-only quantized layers are exported as plain layers holding their dequantised float weights
  (the values PyTorch computes with), so any ONNX runtime runs them; the file is float-sized;
* w8a8 layers (``nc.Uniform(bits=8, activations=8)``) are exported as ONNX Runtime's own quantizer
  writes them (:mod:`netcompress.storage.onnx_integer`): int8 weights, the input behind ``QuantizeLinear →
  DequantizeLinear``, which ONNX Runtime fuses into int8 kernels where the graph allows; such a file is
  checked with a relative tolerance of at least :data:`INTEGER_RTOL`. Input grids under 8 bits are float ops.

An existing ``path`` is replaced only if netcompress wrote it (its metadata says so), or with
``overwrite=True``; a directory never is.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used on purpose: it needs
only ``onnx`` (nothing is downloaded), is what ``torch.onnx.export`` does in the older torch versions
netcompress supports (``dynamo=`` is passed only where it exists), and makes the batch axis dynamic
whatever the example's batch size. The torch.export-based exporter, torch 2.9+'s default, needs
``onnxscript`` as well, is several times slower on small models, prints its progress, and fixes a
batch axis traced with a single sample. Deprecated in torch 2.13, the TorchScript exporter is still
there; should a torch drop it, the export fails with a sentence naming torch.onnx.export.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from netcompress._core.atomic import replacing
from netcompress._core.layers import replace_module
from netcompress._core.tensors import model_device_dtype, model_input
from netcompress._core.transaction import evaluating
from netcompress.prune.modules import MaskedConv2d, MaskedLinear
from netcompress.quantize.modules import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear
from netcompress.storage import onnx_integer as integer

__all__ = ["ExportResult", "check_opset", "export_onnx", "is_netcompress_onnx", "require_onnx"]

OWNER_KEY = "netcompress.version"  # the metadata entry that marks a file netcompress wrote
MAX_BYTES = 2 << 30  # one ONNX protobuf file holds at most 2 GiB
ATOL, RTOL = 1e-4, 1e-4
# With int8 layers a value on a rounding boundary may land one step away and move on through the later layers
INTEGER_RTOL = 0.15  # (digits-adapted EfficientNet-Lite0, 50 w8a8 layers: 8.1 % of the largest output, 99.3 % top-1)
INSTALL = "pip install 'netcompress[onnx]'"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduced PyTorch.

    ``max_abs_diff`` is the largest ``|onnxruntime − PyTorch|`` over every output element of
    every batch compared (the example and each batch of ``check_data``); ``max_abs_output``
    the largest ``|PyTorch|``, the scale the relative tolerance applies to.
    """

    path: Path
    bytes: int
    opset: int
    batches: int
    samples: int
    max_abs_diff: float
    max_abs_output: float
    integer_layers: int = 0  # w8a8 layers written as int8 weights behind QuantizeLinear/DequantizeLinear pairs

    def __str__(self) -> str:
        int8 = f", {self.integer_layers} layers in int8" if self.integer_layers else ""
        return (f"wrote {self.path}: {self.bytes:,} bytes{int8}, ONNX opset {self.opset}; onnxruntime vs PyTorch on "
                f"{self.batches} batch(es), {self.samples:,} samples: max abs difference {self.max_abs_diff:.3g} "
                f"(outputs up to {self.max_abs_output:.3g})")


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    check_data: Iterable | None = None,
    opset: int | None = None,
    atol: float = ATOL,
    rtol: float = RTOL,
    overwrite: bool = False,
) -> ExportResult:
    """Write ``model`` to the ONNX file ``path`` and check it with onnxruntime; returns what was measured.

    ``example_input`` is one batch of the model's input tensor (a tuple/list whose first item is
    that tensor also does, as in :func:`~netcompress.compress`); the model is traced with it and
    dimension 0 of the input and of every output becomes a dynamic batch axis. ``check_data``
    are more batches in the same form (the calibration batches, of any batch size), run through
    both onnxruntime and PyTorch. The export is refused, and nothing written, if any output
    differs by more than ``atol + rtol · max|PyTorch output|``. ``opset`` picks the ONNX opset
    (default: torch's). ``model`` is run in eval mode and given back unchanged, each module in
    the mode it had. Models taking keyword inputs (dict batches) are not supported. Needs the
    ``onnx`` extra (``pip install 'netcompress[onnx]'``).
    """
    onnx, ort = require_onnx()
    path = Path(path)
    _check_target(path, overwrite, onnx)
    _check_tolerances(atol, rtol)
    check_opset(opset)
    device, dtype = model_device_dtype(model)
    example = _input(example_input, "example_input", device, dtype)
    with evaluating(model), torch.no_grad():
        expected = _outputs(model, example, f"example_input of shape {tuple(example.shape)}")
        with replacing(path) as staged:
            with dense_layers(model):
                _check_size(model)
                _trace(model, example, expected, staged, opset)
            folded = integer.fold_weight_quantizers(onnx, staged)
            opset_used = _mark(onnx, staged)
            measured = _compare(_session(ort, staged), model, example, expected, check_data, device, dtype)
            # ONNX Runtime requantizes a fused layer's output onto the next layer's grid with its own
            # fixed-point arithmetic: a value on a rounding boundary may land one step away.
            _check_agreement(measured["max_abs_diff"], measured["max_abs_output"], atol,
                             max(rtol, INTEGER_RTOL) if folded else rtol)
    return ExportResult(path=path, bytes=path.stat().st_size, opset=opset_used, integer_layers=folded, **measured)


def is_netcompress_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ONNX file that :func:`export_onnx` wrote (its metadata names netcompress)."""
    onnx, _ = require_onnx()
    return _ours(Path(path), onnx)


def require_onnx():
    """``onnx`` and ``onnxruntime``, imported only when an export is asked for."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"exporting to ONNX needs onnx and onnxruntime ({error.name} is missing); "
                          f"install them with {INSTALL}") from None
    return onnx, onnxruntime


def _ours(path: Path, onnx) -> bool:
    try:
        record = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # not protobuf, truncated, unreadable: in any case not ours
        return False
    return any(prop.key == OWNER_KEY for prop in record.metadata_props)


def _check_target(path: Path, overwrite: bool, onnx) -> None:
    """Refuse a directory, and an existing file netcompress did not write unless ``overwrite``."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the ONNX file a name such as model.onnx")
    if path.exists() and not overwrite and not _ours(path, onnx):
        raise ValueError(f"{path} exists and is not an ONNX file netcompress wrote; choose another path, "
                         "or pass overwrite=True (--force) to replace it")


def _check_tolerances(atol: float, rtol: float) -> None:
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")


def _input(batch: object, what: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The input tensor of ``batch`` (a tensor, or a tuple/list whose first item is one), as the model takes it."""
    if isinstance(batch, Mapping) or (isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Mapping)):
        raise TypeError(f"{what} is a dict of keyword inputs; export_onnx takes models with one tensor input")
    try:
        x = model_input(batch, device, dtype)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what}: {error}") from None
    if x.dim() == 0:
        raise ValueError(f"{what} needs a batch dimension (dimension 0); add one with unsqueeze(0)")
    return x


def check_opset(opset: int | None) -> None:
    """Refuse an opset the TorchScript exporter lacks here, before it runs (it dumps its graph when it fails)."""
    if opset is None:
        return
    try:
        from torch.onnx._constants import ONNX_MIN_OPSET as low
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as high
    except ImportError:  # another torch: let the exporter judge
        low, high = 7, None
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < low or (high is not None and opset > high):
        raise ValueError(f"opset {opset!r} is not one this torch exports to; give an ONNX opset version from {low} "
                         f"to {high if high is not None else 'its newest'}, or leave it out for torch's default")


def _outputs(model: nn.Module, x: torch.Tensor, what: str) -> list[torch.Tensor]:
    """PyTorch's outputs for ``x``, a failure of the model named in one sentence."""
    try:
        return _leaves(model(x))
    except (RuntimeError, ValueError, IndexError) as error:
        raise ValueError(f"the model cannot run on {what} ({_first_line(error)}); "
                         "give inputs of the shape it takes") from error


def _leaves(output: object) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or tuples, lists and dicts of them), in the exporter's order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [leaf for item in output for leaf in _leaves(item)]
    raise TypeError(f"the model returns a {type(output).__name__}; ONNX export needs a model that returns tensors")


# ---------------------------------------------------------------------------------------------
# Plain layers for netcompress's own: what every ONNX runtime executes natively.


def _effective(weight: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(weight.detach().clone(), requires_grad=False)


def _dense_linear(layer: nn.Module, weight: torch.Tensor) -> nn.Linear:
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                      device=weight.device, dtype=weight.dtype)
    plain.weight, plain.bias = _effective(weight), layer.bias
    return plain


def _dense_conv(layer: nn.Module, weight: torch.Tensor) -> nn.Conv2d:
    plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                      layer.dilation, layer.groups, layer.bias is not None,
                      getattr(layer, "padding_mode", "zeros"), device=weight.device, dtype=weight.dtype)
    plain.weight, plain.bias = _effective(weight), layer.bias
    return plain


def _dense(module: nn.Module) -> nn.Module | None:
    """A plain torch layer computing what ``module`` computes, or None if ``module`` is not one to replace."""
    if integer.integer_layer(module):
        return integer.IntegerLayer(module)
    if getattr(module, "input_scale", None) is not None:
        plain = _dense_weights(module)
        return integer.RoundedInput(module, plain)
    return _dense_weights(module)


def _dense_weights(module: nn.Module) -> nn.Module | None:
    """A plain torch layer with ``module``'s effective weight, or None if ``module`` is not one to replace."""
    if isinstance(module, (MaskedLinear, MaskedConv2d)):
        weight = module.weight * module.mask
    elif isinstance(module, (QuantizedLinear, QuantizedConv2d, QuantizedEmbedding)):
        weight = module.weight  # dequantised (and masked) from the codes
    else:
        return None
    if isinstance(module, QuantizedEmbedding):
        return nn.Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx, _weight=_effective(weight))
    if isinstance(module, (MaskedLinear, QuantizedLinear)):
        return _dense_linear(module, weight)
    return _dense_conv(module, weight)


@contextmanager
def dense_layers(model: nn.Module) -> Iterator[None]:
    """Swap masked and quantized layers for plain ones while the block runs, then put the originals back.

    Why: the exported graph then holds ordinary Gemm/Conv/Gather nodes with float weights,
    rather than the mask product or the dequantisation arithmetic evaluated at every run.
    """
    swapped: list[tuple[str, nn.Module]] = []
    try:
        for name, module in list(model.named_modules()):
            if any(name.startswith(f"{done}.") for done, _ in swapped):
                continue  # inside a layer already swapped whole (a padded w8a8 convolution)
            plain = (integer.padded_integer_layer(module) or _dense(module)) if name else None
            if plain is not None:
                replace_module(model, name, plain.train(module.training))
                swapped.append((name, module))
        yield
    finally:
        for name, module in reversed(swapped):
            replace_module(model, name, module)


def _check_size(model: nn.Module) -> None:
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if size >= MAX_BYTES:
        raise ValueError(f"the model's weights take {size / (1 << 30):.1f} GiB as exported, more than the 2 GiB one "
                         "ONNX file holds; netcompress exports only smaller models")


# ---------------------------------------------------------------------------------------------
# Tracing, marking and checking the file.


def _trace(model: nn.Module, example: torch.Tensor, expected: list[torch.Tensor], file: Path,
           opset: int | None) -> None:
    """Write the ONNX graph of ``model`` traced on ``example`` to ``file``, with a dynamic batch axis."""
    outputs = ["output"] if len(expected) == 1 else [f"output_{i}" for i in range(len(expected))]
    # A 0-d output (a scalar) has no batch axis to mark.
    batched = ["input", *(name for name, t in zip(outputs, expected, strict=True) if t.dim() > 0)]
    options = dict(input_names=["input"], output_names=outputs, opset_version=opset,
                   dynamic_axes={name: {0: "batch"} for name in batched})
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False  # the TorchScript exporter: see the module docstring for why
    try:
        with warnings.catch_warnings():
            # We chose the TorchScript exporter knowingly; its deprecation notice is no news to the user.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(model, (example,), str(file), **options)
    except Exception as error:
        raise ValueError(f"torch.onnx.export cannot export this model ({_first_line(error)})") from error


def _mark(onnx, file: Path) -> int:
    """Record in ``file``'s metadata that netcompress wrote it; returns its default-domain opset."""
    from netcompress._core.version import __version__

    record = onnx.load_model(str(file))
    entry = record.metadata_props.add()
    entry.key, entry.value = OWNER_KEY, __version__
    onnx.save_model(record, str(file))
    return next((o.version for o in record.opset_import if o.domain in ("", "ai.onnx")), 0)


def _session(ort, file: Path):
    """An onnxruntime CPU session of ``file``."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failed run is reported in one sentence, not in its log too
    try:
        return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ValueError(f"onnxruntime cannot load the exported model ({_first_line(error)})") from error


def _compare(session, model: nn.Module, example: torch.Tensor, expected: list[torch.Tensor],
             check_data: Iterable | None, device: torch.device, dtype: torch.dtype) -> dict:
    """Run the example and every batch of ``check_data`` through onnxruntime and PyTorch; ExportResult's figures."""
    diff, scale = _difference(session, example, expected, f"example_input of shape {tuple(example.shape)}")
    batches, samples = 1, len(example)
    for index, batch in enumerate(check_data or ()):
        x = _input(batch, f"check_data batch {index}", device, dtype)
        what = f"check_data batch {index} of shape {tuple(x.shape)}"
        d, s = _difference(session, x, _outputs(model, x, what), what)
        diff, scale = _worse(diff, d), max(scale, s)
        batches, samples = batches + 1, samples + len(x)
    return {"batches": batches, "samples": samples, "max_abs_diff": diff, "max_abs_output": scale}


def _difference(session, x: torch.Tensor, expected: list[torch.Tensor], what: str) -> tuple[float, float]:
    """max |onnxruntime − PyTorch| (NaN if they disagree on NaNs) and max |PyTorch| over the outputs for ``x``."""
    try:
        got = session.run(None, {"input": x.detach().cpu().numpy()})
    except Exception as error:
        raise ValueError(f"onnxruntime cannot run the exported model on {what} ({_first_line(error)})") from error
    if len(got) != len(expected):
        raise ValueError(f"the exported model gives {len(got)} output(s) where PyTorch gives {len(expected)}")
    diff = scale = 0.0
    for theirs, reference in zip(got, expected, strict=True):
        ours, reference = torch.from_numpy(theirs).double(), reference.detach().cpu().double()
        if ours.shape != reference.shape:
            raise ValueError(f"on {what} the exported model gives an output of shape {tuple(ours.shape)} where "
                             f"PyTorch gives {tuple(reference.shape)}; the model's graph depends on the batch size")
        if reference.numel():
            same = (ours == reference) | (ours.isnan() & reference.isnan())  # equal infinities and NaNs agree
            delta = (ours - reference).abs().masked_fill(same, 0)
            diff = _worse(diff, float(delta.max()))
            finite = reference[reference.isfinite()]
            scale = max(scale, float(finite.abs().max()) if finite.numel() else 0.0)
    return diff, scale


def _worse(a: float, b: float) -> float:
    """The larger difference, NaN (a disagreement on NaNs) winning."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _check_agreement(diff: float, scale: float, atol: float, rtol: float) -> None:
    limit = atol + rtol * scale
    if not diff <= limit:  # also catches NaN
        raise ValueError(f"onnxruntime's outputs differ from PyTorch's by up to {diff:.3g}, more than the tolerance "
                         f"{limit:.3g} (atol {atol:g} + rtol {rtol:g} × max |output| {scale:.3g}); nothing was "
                         "written")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
