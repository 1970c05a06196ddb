"""Quantization of weights: uniform (per tensor, channel or group), binary, ternary, k-means sharing.

* :mod:`.modules`: quantized layers storing integer codes (:class:`QuantizedLinear`, ...);
* :mod:`.methods`: the quantizers, calibrated on target statistics where they help;
* :mod:`.error_feedback`: GPTQ, quantization with error feedback through the inverse input Hessian;
* :mod:`.lowbit`: low-bit networks with shared grids and two-stage distillation.
"""

from netcompress.quantize import lowbit
from netcompress.quantize.gptq import GPTQ, gptq
from netcompress.quantize.methods import (
           Binary,
           KMeans,
           Ternary,
           Uniform,
           binary,
           clip_weights,
           kmeans,
           ternary,
           uniform,
)
from netcompress.quantize.modules import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, quantized_like

__all__ = ["GPTQ", "Binary", "KMeans", "Ternary", "Uniform", "QuantizedConv2d", "lowbit", "QuantizedEmbedding", "QuantizedLinear", "binary", "clip_weights", "gptq", "kmeans",
           "quantized_like", "ternary", "uniform"]

