"""Quantized layers: integer codes with a scale (and zero point) per tensor, channel or input group,
or codes into shared codebooks (k-means); the float weight is rebuilt from them."""

from __future__ import annotations

import math

import torch
from torch import nn

from netcompress._core.description import Entry, conv_fields, describable, linear_fields
from netcompress._core.sizes import stored_form
from netcompress._core.tensors import ROW_BLOCK_ELEMENTS, row_blocks, weight_rows
from netcompress.prune.modules import PRUNABLE
from netcompress.quantize import kernels

__all__ = [
    "QuantizedLayer",
    "input_codes",
    "QuantizedConv2d",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "SCHEMES",
    "quantized_like",
]

# Layers a quantizer takes: an embedding table quantizes row by row (QuantizedEmbedding).
QUANTIZABLE = (*PRUNABLE, nn.Embedding)
SCHEMES = ("symmetric", "asymmetric", "codebook")


def input_codes(bits: int, symmetric: bool) -> tuple[int, int]:
    """The code range of a ``bits``-bit input grid: ``[−2^(b−1), 2^(b−1) − 1]`` centred on zero, else ``[0, 2^b − 1]``."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)


class QuantizedLayer(nn.Module):
    """Shared body: integer codes with per-group scales, or codes into per-row-group codebooks."""

    # Bookkeeping properties that TorchScript need not (and cannot) compile; ``weight`` is compiled.
    __jit_unused_properties__ = ["bits", "levels", "per_tensor"]


    def _init_codes(self, shape: tuple[int, ...], scheme: str, bits: int, group_size: int | None, levels: int | None,
                    codebook_rows: int, per_tensor: bool, masked: bool, bias: bool):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        out, per_row = shape[0], math.prod(shape[1:])
        self.scheme, self.code_bits = scheme, bits
        self.group_size = per_row if group_size is None else group_size
        self.codebook_rows = codebook_rows
        # The symmetric grid's zero point is the constant 2^(bits−1): zero is code 2^(bits−1).
        self.zero_code = 1 << (bits - 1) if scheme == "symmetric" else 0
        self.register_buffer("codes", torch.zeros(shape, dtype=torch.uint8))
        if scheme == "codebook":
            self.codebook = nn.Parameter(torch.zeros(math.ceil(out / codebook_rows), levels or (1 << bits)))
            self.register_parameter("scale", None)
            self.register_buffer("zero_point", None)
        else:
            if per_row % self.group_size:
                raise ValueError(f"group_size {self.group_size} does not divide the {per_row} inputs per row")
            groups = (1 if per_tensor else out, per_row // self.group_size)
            self.register_parameter("codebook", None)
            self.scale = nn.Parameter(torch.ones(groups))
            self.register_buffer("zero_point", torch.zeros(groups, dtype=torch.uint8) if scheme == "asymmetric" else None)
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool) if masked else None)
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None

    @property
    def levels(self) -> int:
        """Number of distinct code values per group."""
        return self.codebook.shape[1] if self.codebook is not None else 1 << self.code_bits

    @property
    def per_tensor(self) -> bool:
        return self.scale is not None and self.scale.shape[0] == 1 and self.codes.shape[0] > 1

    @property
    def bits(self) -> float:
        """Stored bits per kept weight: the code plus its share of scales, zero points and codebooks."""
        kept = int(self.mask.sum()) if self.mask is not None else self.codes.numel()
        extra = 0
        for leaf in ("scale", "zero_point", "codebook"):
            t = getattr(self, leaf)
            if t is not None:  # as save writes it: scales in float16 where exact, zero points packed
                form = stored_form(self, leaf, t)
                extra += t.numel() * (16 if form == "float16" else form if form else 8 * t.element_size())
        return max(1, math.ceil(math.log2(self.levels))) + extra / max(kept, 1)

    def _grid_fields(self) -> dict:
        """How the layer stores its weights (and, when quantized, its input), for its description."""
        fields = {"scheme": self.scheme, "bits": self.code_bits, "levels": self.levels, "group_size": self.group_size,
                  "codebook_rows": self.codebook_rows, "per_tensor": self.per_tensor}
        if getattr(self, "input_scale", None) is not None:
            fields |= {"input_bits": self.input_bits, "input_symmetric": self.input_symmetric}  # set by quantize_inputs
        return fields

    def quantize_inputs(self, bits: int, symmetric: bool = False) -> QuantizedLayer:
        """Round every input onto a fixed ``bits``-bit grid before the product (static activation quantization).

        The grid (``input_scale``, ``input_zero_point``) starts as the unit grid; :meth:`set_input_grid`
        sets it from the target sample (:func:`netcompress.quantize.activations.input_grid`).
        """
        self.input_bits, self.input_symmetric = int(bits), bool(symmetric)
        self.input_quant_min, self.input_quant_max = input_codes(bits, symmetric)
        device = self.codes.device
        self.register_buffer("input_scale", torch.ones(1, device=device))
        self.register_buffer("input_zero_point", torch.zeros(1, dtype=torch.int32, device=device))
        return self

    def set_input_grid(self, scale: float, zero_point: int) -> None:
        """The input grid ``x ≈ (q − zero_point)·scale`` (after :meth:`quantize_inputs`)."""
        with torch.no_grad():
            self.input_scale.fill_(scale)
            self.input_zero_point.fill_(zero_point)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded onto the input grid (itself when the layer does not quantize its input)."""
        scale, zero = getattr(self, "input_scale", None), getattr(self, "input_zero_point", None)
        if scale is None or zero is None:
            return x
        if x.dtype == torch.float32:  # torch's op: exported to ONNX as QuantizeLinear → DequantizeLinear
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, self.input_quant_min, self.input_quant_max)
        return self.round_input(x)

    def round_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded onto the input grid in plain float operations (any dtype; ONNX exports them as such)."""
        s, z = self.input_scale.to(x.dtype), self.input_zero_point.to(x.dtype)
        return (torch.round(x / s) + z).clamp(self.input_quant_min, self.input_quant_max).sub(z).mul(s)

    @torch.jit.unused
    def _kernel(self, x: torch.Tensor) -> kernels.Prepared | None:
        """The operands of this layer's fast path for inputs like ``x``, prepared once per state (``None``: decode)."""
        prepared = getattr(self, "_prepared", None)
        if prepared is None or prepared.key != kernels.state_key(self, x):
            prepared = kernels.prepare(self, x)
            self._prepared = prepared
        return prepared

    @staticmethod
    def _with_inputs(layer: QuantizedLayer, entry: Entry) -> QuantizedLayer:
        """``layer`` with the input grid its description names, if any (the grid's values come with the weights)."""
        if entry.get("input_bits") is None:
            return layer
        bits = entry.integer("input_bits")
        if bits > 8:
            raise entry.fail(f"field 'input_bits' must be 1 to 8, got {bits}")
        return layer.quantize_inputs(bits, entry.flag("input_symmetric"))

    @staticmethod
    def _grid(entry: Entry, rows: int, per_row: int) -> dict:
        """The checked storage fields of a layer with ``rows`` output rows of ``per_row`` weights."""
        levels = entry.integer("levels")
        if levels > 256:
            raise entry.fail(f"field 'levels' must be at most 256 (8-bit codes), got {levels}")
        scheme = entry.choice("scheme", SCHEMES)
        bits = entry.integer("bits")
        if bits > 8 or levels > 1 << bits or (scheme != "codebook" and levels != 1 << bits):
            raise entry.fail(f"fields 'bits' {bits} and 'levels' {levels} disagree (levels ≤ 2^bits ≤ 256)")
        group_size, codebook_rows = entry.integer("group_size"), entry.integer("codebook_rows")
        if per_row % group_size or codebook_rows > rows:
            raise entry.fail(f"field 'group_size' {group_size} must divide the {per_row} weights of a row and "
                             f"'codebook_rows' {codebook_rows} must be at most the {rows} rows")
        return {"scheme": scheme, "bits": bits, "levels": levels, "group_size": group_size,
                "codebook_rows": codebook_rows, "per_tensor": entry.flag("per_tensor")}

    def _rows(self, codes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Dequantized values of ``codes`` (…, per_row) that belong to output rows ``rows`` (…)."""
        codebook = self.codebook
        if codebook is not None:
            book = codebook[torch.div(rows, self.codebook_rows, rounding_mode="floor")]
            return book.gather(-1, codes.long())
        scale = self.scale
        if scale is None:  # unreachable: the affine schemes always have a scale (refines the type for TorchScript)
            raise RuntimeError("a quantized layer has neither a codebook nor a scale")
        index = rows if scale.shape[0] > 1 else torch.zeros_like(rows)
        shape = list(codes.shape[:-1]) + [int(scale.shape[1]), self.group_size]
        values = codes.reshape(shape).to(scale.dtype)  # a new tensor: the steps below work on it in place
        zero_point = self.zero_point
        if zero_point is not None:
            values.sub_(zero_point[index].to(scale.dtype).unsqueeze(-1))
        else:
            values.sub_(self.zero_code)
        if torch.is_grad_enabled() and scale.requires_grad:  # autograd keeps the codes for the scale's gradient
            return (values * scale[index].unsqueeze(-1)).reshape(codes.shape)
        return values.mul_(scale[index].unsqueeze(-1)).reshape(codes.shape)

    def freeze(self) -> QuantizedLayer:
        """Keep the decoded float weight for layouts no low-bit kernel takes (fast, 4 bytes per weight).

        The codes stay the source of truth: the kept weight is rebuilt when they, the scales or
        the codebook change in place, and is never saved. :meth:`unfreeze` drops it.
        """
        self.frozen = True
        return self

    def unfreeze(self) -> QuantizedLayer:
        """Decode the weight on every call again (the memory of :meth:`freeze` is freed)."""
        self.frozen, self._dense = False, None
        return self

    @torch.jit.unused
    def _inference_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The kept decoded weight of a frozen layer (rebuilt if the stored tensors changed), else ``None``."""
        if not getattr(self, "frozen", False):
            return None
        key = [x.device]
        for t in (self.codes, self.scale, self.zero_point, self.codebook, self.mask):
            key += [None] if t is None else [t.data_ptr(), t._version]
        dense = getattr(self, "_dense", None)
        if dense is None or dense[0] != key:
            with torch.no_grad():
                dense = (key, self.weight)
            self._dense = dense
        return dense[1]

    @torch.jit.unused
    def _needs_gradient(self, x: torch.Tensor) -> bool:
        """Whether this call must be differentiable (training the scales or codebook, or back into ``x``)."""
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters(recurse=False))

    @property
    def weight(self) -> torch.Tensor:
        out = self.codes.shape[0]
        rows = torch.arange(out, device=self.codes.device)
        weight = self._rows(self.codes.reshape(out, -1), rows).reshape(self.codes.shape)
        mask = self.mask
        return weight * mask if mask is not None else weight


@describable
class QuantizedLinear(QuantizedLayer):
    """A Linear layer whose weights are integer codes with per-group scales, or codes into codebooks."""

    def __init__(self, in_features: int, out_features: int, *, scheme: str = "symmetric", bits: int = 8,
                 group_size: int | None = None, levels: int | None = None, codebook_rows: int = 1,
                 per_tensor: bool = False, bias: bool = True, masked: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_codes((out_features, in_features), scheme, bits, group_size, levels, codebook_rows, per_tensor,
                         masked, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return nn.functional.linear(self._quantize_input(x), self.weight, self.bias)
        return self._inference(x)

    @torch.jit.unused
    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """A low-bit kernel where one takes this layout (:mod:`~netcompress.quantize.kernels`), else the decoded weight."""
        if self._needs_gradient(x):
            return nn.functional.linear(self._quantize_input(x), self.weight, self.bias)
        prepared = self._kernel(x)
        if prepared is not None and prepared.kind == "w8a8":  # rounds the input itself, onto the same grid
            return prepared.linear(x, self.bias)
        x = self._quantize_input(x)
        if prepared is not None:
            return prepared.linear(x, self.bias)
        dense = self._inference_weight(x)
        if dense is not None or self.codes.numel() <= ROW_BLOCK_ELEMENTS:
            return nn.functional.linear(x, self.weight if dense is None else dense, self.bias)
        # A large layer (a language model's head) decoded a block of output rows at a time: its float
        # weight is never held whole.
        y = x.new_empty(*x.shape[:-1], self.out_features)
        for rows in row_blocks(self.out_features, self.in_features):
            bias = None if self.bias is None else self.bias[rows]
            y[..., rows] = nn.functional.linear(x, weight_rows(self, rows).to(x.dtype), bias)
        return y

    def describe(self) -> dict:
        return {**linear_fields(self), **self._grid_fields(), "bias": self.bias is not None,
                "masked": self.mask is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> QuantizedLinear:
        in_features, out_features = entry.linear_size()
        return cls._with_inputs(cls(in_features, out_features, **cls._grid(entry, out_features, in_features),
                                    bias=entry.flag("bias"), masked=entry.flag("masked")), entry)


@describable
class QuantizedConv2d(QuantizedLayer):
    """A Conv2d layer whose weights are integer codes with per-group scales, or codes into codebooks."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], *, scheme: str = "symmetric",
                 bits: int = 8, group_size: int | None = None, levels: int | None = None, codebook_rows: int = 1,
                 per_tensor: bool = False, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1,
                 bias: bool = True, masked: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, tuple(kernel_size)
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_codes(shape, scheme, bits, group_size, levels, codebook_rows, per_tensor, masked, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            y = self._pointwise_integer(x)
            if y is not None:
                return y
        x = self._quantize_input(x)
        weight = self.weight if torch.jit.is_scripting() else self._conv_weight(x)
        return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.jit.unused
    def _pointwise_integer(self, x: torch.Tensor) -> torch.Tensor | None:
        """A w8a8 1×1 convolution (stride 1, no padding) as an int8 product over the channels, else ``None``.

        A pointwise convolution is a Linear layer applied at every position: the positions become
        rows (channels last) and the w8a8 kernel of :mod:`~netcompress.quantize.kernels` takes them.
        """
        if getattr(self, "input_scale", None) is None or self.kernel_size != (1, 1) or self.stride != (1, 1) \
                or self.padding != (0, 0) or self.groups != 1 or x.dim() != 4 or self._needs_gradient(x):
            return None
        prepared = self._kernel(x)
        if prepared is None or prepared.kind != "w8a8":
            return None
        n, _, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, -1)
        return prepared.linear(rows, self.bias).reshape(n, h, w, -1).permute(0, 3, 1, 2)

    @torch.jit.unused
    def _conv_weight(self, x: torch.Tensor) -> torch.Tensor:
        dense = None if self._needs_gradient(x) else self._inference_weight(x)
        return self.weight if dense is None else dense

    def describe(self) -> dict:
        return {**conv_fields(self), "groups": self.groups, **self._grid_fields(), "bias": self.bias is not None,
                "masked": self.mask is not None}

    @classmethod
    def from_description(cls, entry: Entry) -> QuantizedConv2d:
        args, groups = entry.conv_args(), entry.integer("groups")
        if args["in_channels"] % groups or args["out_channels"] % groups:
            raise entry.fail(f"field 'groups' {groups} must divide in_channels and out_channels")
        per_row = args["in_channels"] // groups * math.prod(args["kernel_size"])
        grid = cls._grid(entry, args["out_channels"], per_row)
        return cls._with_inputs(cls(args.pop("in_channels"), args.pop("out_channels"), args.pop("kernel_size"), **grid,
                                    **args, groups=groups, bias=entry.flag("bias"), masked=entry.flag("masked")), entry)


@describable
class QuantizedEmbedding(QuantizedLayer):
    """An Embedding table stored as codes: each looked-up row is dequantized on its own.

    Rows play the part of output channels and the embedding dimension that of inputs, so
    ``group_size`` groups consecutive entries of one row, as torchao groups embedding tables.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, scheme: str = "symmetric", bits: int = 8,
                 group_size: int | None = None, levels: int | None = None, codebook_rows: int = 1,
                 per_tensor: bool = False, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self._init_codes((num_embeddings, embedding_dim), scheme, bits, group_size, levels, codebook_rows,
                         per_tensor, False, False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._rows(self.codes[input], input)

    def describe(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx, **self._grid_fields()}

    @classmethod
    def from_description(cls, entry: Entry) -> QuantizedEmbedding:
        size = (entry.integer("num_embeddings"), entry.integer("embedding_dim"))
        entry.refuse_larger(size[0] * size[1], f"a {size[0]}×{size[1]} embedding table")
        padding_idx = entry.get("padding_idx")
        if padding_idx is not None and entry.integer("padding_idx", low=0) >= size[0]:
            raise entry.fail(f"field 'padding_idx' {padding_idx} is not a row of the {size[0]}-row table")
        return cls(*size, **cls._grid(entry, *size), padding_idx=padding_idx)


def quantized_like(layer: nn.Module, *, scheme: str, bits: int, group_size: int | None = None,
                   levels: int | None = None, codebook_rows: int = 1, per_tensor: bool = False,
                   masked: bool = False) -> nn.Module:
    """An empty quantized layer with ``layer``'s shape, hyper-parameters, device and dtype."""
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    common = dict(scheme=scheme, bits=bits, group_size=group_size, levels=levels, codebook_rows=codebook_rows,
                  per_tensor=per_tensor)
    if isinstance(layer, (nn.Embedding, QuantizedEmbedding)):
        module = QuantizedEmbedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx, **common)
    elif isinstance(layer, (nn.Conv2d, QuantizedConv2d)):
        module = QuantizedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                 padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                                 bias=layer.bias is not None, masked=masked, **common)
    else:
        module = QuantizedLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, masked=masked,
                                 **common)
    return module.to(**factory)


