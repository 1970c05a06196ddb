"""w8a8 layers in ONNX: int8 weights and static input grids as ONNX Runtime's own quantizer writes them.

:func:`netcompress.export_onnx` swaps each w8a8 layer for :class:`IntegerLayer` while it traces,
so the graph holds ``QuantizeLinear → DequantizeLinear`` pairs on the input and on the weight;
:func:`fold_weight_quantizers` then stores each weight as the int8 initializer its
``QuantizeLinear`` would produce. Input grids under 8 bits have no ONNX integer type here and are
written as float rounding (:class:`RoundedInput`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.quantize.modules import QuantizedConv2d, QuantizedLinear

__all__ = ["IntegerLayer", "RoundedInput", "fold_weight_quantizers", "integer_layer"]


class IntegerLayer(nn.Module):
    """What a w8a8 layer computes, as the ONNX graph ONNX Runtime runs with int8 kernels (export only).

    The input goes through ``QuantizeLinear → DequantizeLinear`` on the layer's static grid, the
    weight through the same pair per output channel (int8, zero point 0: the codes ``c − 128``);
    :func:`fold_weight_quantizers` then stores the weight as its int8 initializer. ONNX Runtime
    fuses the ``DequantizeLinear → Conv/Gemm → QuantizeLinear`` groups it finds into QLinearConv /
    QGemm, which compute in int8.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
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
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


class RoundedInput(nn.Module):
    """A layer whose input is rounded onto a grid ONNX has no integer type for (under 8 bits): float ops."""

    def __init__(self, layer: nn.Module, dense: nn.Module):
        super().__init__()
        self.layer, self.dense = layer, dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        scale, zero = layer.input_scale, layer.input_zero_point.to(x.dtype)
        x = (torch.round(x / scale) + zero).clamp(layer.input_quant_min, layer.input_quant_max).sub(zero).mul(scale)
        return self.dense(x)


def integer_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a w8a8 layer ONNX can hold as int8: 8-bit codes, one scale per row, 8-bit inputs."""
    return (isinstance(module, (QuantizedLinear, QuantizedConv2d)) and getattr(module, "input_scale", None) is not None
            and module.input_bits == 8 and module.code_bits == 8 and module.zero_point is None
            and module.scale is not None and module.scale.shape[1] == 1 and module.mask is None)



def fold_weight_quantizers(onnx, file: Path) -> int:
    """Store every weight behind a ``QuantizeLinear`` as the int8 initializer it produces; how many there were.

    The exporter writes a w8a8 layer's weight as ``float initializer → QuantizeLinear →
    DequantizeLinear``: the float copy is what makes a file float-sized. It is replaced by the
    QuantizeLinear's output, computed here (round half to even, saturated, as the operator does), so
    the file holds one byte per weight and the graph what ONNX Runtime's own quantizer writes.
    """
    import numpy as np
    from onnx import numpy_helper

    record = onnx.load_model(str(file))
    graph = record.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def value(name: str):
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = constants.get(name)
        if node is None:
            return None
        return numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))

    folded, users = [], {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers:
            continue
        weight, scale = value(node.input[0]), value(node.input[1])
        zero = value(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
        if weight is None or scale is None or zero is None or zero.dtype != np.int8:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = scale.size
        codes = np.clip(np.rint(weight / scale.reshape(shape)) + zero.reshape(shape if zero.size > 1 else ()),
                        -128, 127).astype(np.int8)
        name = f"{node.input[0]}_int8"
        graph.initializer.append(numpy_helper.from_array(codes, name))
        for other in graph.node:
            for i, used in enumerate(other.input):
                if used == node.output[0]:
                    other.input[i] = name
        graph.node.remove(node)
        users[node.input[0]] -= 1
        if users[node.input[0]] == 0:
            graph.initializer.remove(initializers[node.input[0]])
        folded.append(name)
    if folded:
        onnx.save_model(record, str(file))
    return len(folded)
