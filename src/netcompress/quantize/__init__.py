"""Quantization of weights: uniform (per tensor, channel or group), binary, ternary, k-means sharing.

* :mod:`.modules`: quantized layers storing integer codes (:class:`QuantizedLinear`, ...);
* :mod:`.uniform`, :mod:`.binary`, :mod:`.kmeans`: the quantizers, calibrated on target statistics where they help;
* :mod:`.gptq`: GPTQ, quantization with error feedback through the inverse input Hessian;
* :mod:`.lowbit`: low-bit networks with shared grids and two-stage distillation.
"""

from netcompress.quantize import lowbit
from netcompress.quantize.binary import Binary, Ternary, binary, ternary
from netcompress.quantize.gptq import GPTQ, gptq
from netcompress.quantize.kmeans import KMeans, kmeans
from netcompress.quantize.modules import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, quantized_like
from netcompress.quantize.uniform import Uniform, clip_weights, uniform

__all__ = ["GPTQ", "Binary", "KMeans", "Ternary", "Uniform", "QuantizedConv2d", "lowbit", "QuantizedEmbedding", "QuantizedLinear", "binary", "clip_weights", "gptq", "kmeans",
           "quantized_like", "ternary", "uniform"]

