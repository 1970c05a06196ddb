"""w8a8 layers in ONNX: int8 weights and static input grids as ONNX Runtime's own quantizer writes them.

:func:`netcompress.export_onnx` swaps each w8a8 layer for :class:`IntegerLayer` while it traces,
so the graph holds ``QuantizeLinear → DequantizeLinear`` pairs on the input and on the weight;
:func:`fold_weight_quantizers` then stores each weight as the int8 initializer its
``QuantizeLinear`` would produce. Input grids under 8 bits have no ONNX integer type here and are
written as float rounding (:class:`RoundedInput`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.quantize.kernels import integer_layout
from netcompress.quantize.modules import QuantizedConv2d, QuantizedLinear

__all__ = ["IntegerLayer", "RoundedInput", "fold_weight_quantizers", "integer_layer", "padded_integer_layer"]


class IntegerLayer(nn.Module):
    """What a w8a8 layer computes, as the ONNX graph ONNX Runtime runs with int8 kernels (export only).

    The input goes through ``QuantizeLinear → DequantizeLinear`` on the layer's static grid, the
    weight through the same pair per output channel (int8, zero point 0: the codes ``c − 128``);
    :func:`fold_weight_quantizers` then stores the weight as its int8 initializer. ONNX Runtime
    fuses the ``DequantizeLinear → Conv/Gemm → QuantizeLinear`` groups it finds into QLinearConv /
    QGemm, which compute in int8.
    """

    def __init__(self, layer: nn.Module, padding: tuple[int, int] | None = None):
        super().__init__()
        self.layer = layer
        self.padding = getattr(layer, "padding", None) if padding is None else padding  # explicit zero padding, taken in
        out = layer.codes.shape[0]
        scale = layer.scale.detach().float().expand(out, -1).reshape(out)
        shape = (out,) + (1,) * (layer.codes.dim() - 1)
        self.register_buffer("integer_weight", (layer.codes.to(torch.int32) - 128).float() * scale.reshape(shape))
        self.register_buffer("weight_scale", scale.clone())
        self.register_buffer("weight_zero", torch.zeros(out, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        x = torch.fake_quantize_per_tensor_affine(x, layer.input_scale, layer.input_zero_point,
                                                  layer.input_quant_min, layer.input_quant_max)
        weight = torch.fake_quantize_per_channel_affine(self.integer_weight, self.weight_scale, self.weight_zero,
                                                        0, -128, 127)
        if isinstance(layer, QuantizedLinear):
            return F.linear(x, weight, layer.bias)
        return F.conv2d(x, weight, layer.bias, layer.stride, self.padding, layer.dilation, layer.groups)


class RoundedInput(nn.Module):
    """A layer whose input is rounded onto a grid ONNX has no integer type for (under 8 bits): float ops."""

    def __init__(self, layer: nn.Module, dense: nn.Module):
        super().__init__()
        self.layer, self.dense = layer, dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layer.round_input(x))


def integer_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a w8a8 layer ONNX can hold as int8: 8-bit codes, one scale per row, 8-bit inputs."""
    return (isinstance(module, (QuantizedLinear, QuantizedConv2d)) and integer_layout(module)
            and module.zero_point is None)  # the int8 weight's zero point is 0: symmetric codes



def fold_weight_quantizers(onnx, file: Path) -> int:
    """Store every weight behind a ``QuantizeLinear`` as the int8 initializer it produces; how many there were.

    The exporter writes a w8a8 layer's weight as ``float initializer → QuantizeLinear →
    DequantizeLinear``: the float copy is what makes a file float-sized. It is replaced by the
    QuantizeLinear's output, computed here (round half to even, saturated, as the operator does), so
    the file holds one byte per weight and the graph what ONNX Runtime's own quantizer writes.

    A ``BatchNormalization`` right after such a convolution is folded into it, as the float export
    folds it: its per-channel factor ``γ/√(σ² + ε)`` goes into the weight's scale (its sign into the
    codes) and its shift into the bias. Without that, ONNX Runtime would find ``Conv → BatchNorm``
    where it fuses ``Conv → QuantizeLinear`` into an int8 convolution.
    """
    from onnx import numpy_helper

    record = onnx.load_model(str(file))
    graph = record.graph
    constants = _Constants(graph, numpy_helper)
    folded = 0
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        weight, scale = constants.value(node.input[0]), constants.value(node.input[1])
        zero = constants.value(node.input[2]) if len(node.input) > 2 else None
        readers = constants.readers(node.output[0])
        if weight is None or scale is None or zero is None or zero.dtype != np.int8 or len(readers) != 1 \
                or readers[0].op_type != "DequantizeLinear":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        codes = np.clip(np.rint(weight / scale.reshape(shape)) + zero.reshape(shape if zero.size > 1 else ()),
                        -128, 127).astype(np.int8)
        dequantize = readers[0]
        scale = _fold_batchnorm(graph, constants, dequantize, codes, scale.astype(np.float32), numpy_helper)
        dequantize.input[0] = constants.add(f"{node.input[0]}_int8", codes)
        dequantize.input[1] = constants.add(f"{node.input[0]}_scale", scale)
        graph.node.remove(node)
        folded += 1
    if folded:
        _quantize_outputs(graph, constants, onnx.helper)
        constants.drop_unused()
        onnx.save_model(record, str(file))
    return folded


def _quantize_outputs(graph, constants: _Constants, helper) -> None:
    """Round an int8 convolution's output onto the next layer's grid before its ReLU/ReLU6, as well as after.

    ``Conv → Clip → QuantizeLinear(s, z)``: when the grid's range lies within the clip's, rounding
    first and clipping after gives the same values (the grid saturates where the clip would), so a
    ``QuantizeLinear → DequantizeLinear`` pair on that grid goes between the convolution and the
    clip. ONNX Runtime then finds ``DequantizeLinear → Conv → QuantizeLinear``, which it runs as an
    int8 convolution, where it would otherwise fuse the convolution with its activation in float.
    """
    for conv in [n for n in graph.node if n.op_type in ("Conv", "Gemm")]:
        weight = constants.producers.get(conv.input[1])
        after = constants.readers(conv.output[0])
        if weight is None or weight.op_type != "DequantizeLinear" or len(after) != 1 \
                or after[0].op_type not in ("Clip", "Relu"):
            continue
        activation = after[0]
        readers = constants.readers(activation.output[0])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            continue
        grid = readers[0]
        scale, zero = constants.value(grid.input[1]), constants.value(grid.input[2])
        if scale is None or zero is None or scale.size != 1:
            continue
        info, z, step = np.iinfo(zero.dtype), float(zero.reshape(-1)[0]), float(scale.reshape(-1)[0])
        low, high = (info.min - z) * step, (info.max - z) * step
        floor, ceiling = 0.0, np.inf
        if activation.op_type == "Clip":
            bounds = [constants.value(name) if name else None for name in list(activation.input[1:3]) + [None, None]]
            floor = -np.inf if bounds[0] is None else float(bounds[0].reshape(-1)[0])
            ceiling = np.inf if bounds[1] is None else float(bounds[1].reshape(-1)[0])
        if low < floor - step / 2 or high > ceiling + step / 2:  # within half a step the same code is kept
            continue  # the grid reaches past the clip: rounding first would not give the same values
        rounded, back = f"{conv.output[0]}_quantized", f"{conv.output[0]}_rounded"
        index = list(graph.node).index(conv)
        graph.node.insert(index + 1, helper.make_node("QuantizeLinear", [conv.output[0], grid.input[1], grid.input[2]],
                                                      [rounded]))
        graph.node.insert(index + 2, helper.make_node("DequantizeLinear", [rounded, grid.input[1], grid.input[2]],
                                                      [back]))
        activation.input[0] = back


class _Constants:
    """The constant tensors of a graph (initializers, ``Constant`` nodes, through ``Identity``), and its readers."""

    def __init__(self, graph, numpy_helper):
        self.graph, self.helper = graph, numpy_helper
        self.initializers = {t.name: t for t in graph.initializer}
        self.producers = {o: n for n in graph.node for o in n.output}

    def value(self, name: str) -> np.ndarray | None:
        while name in self.producers and self.producers[name].op_type == "Identity":
            name = self.producers[name].input[0]
        if name in self.initializers:
            return self.helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            return self.helper.to_array(next(a.t for a in node.attribute if a.name == "value"))
        return None

    def readers(self, name: str) -> list:
        return [n for n in self.graph.node if name in n.input]

    def add(self, name: str, array: np.ndarray) -> str:
        while name in self.initializers:
            name += "_"
        tensor = self.helper.from_array(array, name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def drop_unused(self) -> None:
        used = {name for n in self.graph.node for name in n.input} | {o.name for o in self.graph.output}
        for tensor in [t for t in self.graph.initializer if t.name not in used]:
            self.graph.initializer.remove(tensor)


def _fold_batchnorm(graph, constants: _Constants, dequantize, codes: np.ndarray, scale: np.ndarray,
                    numpy_helper) -> np.ndarray:
    """Fold the ``BatchNormalization`` reading ``dequantize``'s convolution into it; the weight's new scale."""
    readers = constants.readers(dequantize.output[0])
    if len(readers) != 1 or readers[0].op_type != "Conv" or readers[0].input[1] != dequantize.output[0]:
        return scale
    conv = readers[0]
    after = constants.readers(conv.output[0])
    if len(after) != 1 or after[0].op_type != "BatchNormalization" or len(after[0].output) != 1:
        return scale
    norm = after[0]
    gamma, beta, mean, var = (constants.value(name) for name in norm.input[1:5])
    if any(v is None for v in (gamma, beta, mean, var)):
        return scale
    epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    factor = (gamma / np.sqrt(var + epsilon)).astype(np.float32)
    bias = constants.value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros_like(mean)
    negative = factor < 0  # the sign goes into the codes (−(−128) saturates to 127: one step on one code)
    codes[negative] = np.clip(-codes[negative].astype(np.int16), -128, 127).astype(np.int8)
    shift = ((bias - mean) * factor + beta).astype(np.float32)
    if len(conv.input) > 2:
        conv.input[2] = constants.add(f"{conv.output[0]}_folded_bias", shift)
    else:
        conv.input.append(constants.add(f"{conv.output[0]}_folded_bias", shift))
    conv.output[0] = norm.output[0]
    graph.node.remove(norm)
    return (np.abs(factor) * np.broadcast_to(scale, factor.shape)).astype(np.float32)


def padded_integer_layer(module: nn.Module) -> IntegerLayer | None:
    """A ``Padded`` w8a8 convolution with symmetric zero padding as one :class:`IntegerLayer` padding itself.

    Zero padding commutes with rounding onto a grid that holds zero exactly, so the input can be
    rounded first and padded by the convolution: ONNX Runtime then finds ``QuantizeLinear →
    DequantizeLinear → Conv`` (and the previous layer's ``Conv → Clip → QuantizeLinear``) with no
    ``Pad`` between them, which it fuses into int8 convolutions. Asymmetric padding stays a ``Pad``.
    """
    inner = getattr(module, "layer", None)
    if type(module).__name__ != "Padded" or module.mode != "constant" or not integer_layer(inner) \
            or not isinstance(inner, QuantizedConv2d) or tuple(inner.padding) != (0, 0):
        return None
    left, right, top, bottom = module.padding
    if left != right or top != bottom:
        return None
    return IntegerLayer(inner, padding=(top, left))
