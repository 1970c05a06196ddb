"""Which layers share a channel dimension: the dependency tracer behind structured pruning.

The model is traced with ``torch.fx`` and run once on an example batch to learn the
shapes. Every tensor with a channel dimension (dim 1 of an (N, C) or (N, C, H, W) tensor)
gets a *space*: the list of segments its channels come from, each segment naming the
Linear/Conv2d layer that produced those channels (or ``None`` for channels that cannot
be pruned, such as the model's input). Element-wise operations, pooling and BatchNorm
keep the space; ``torch.cat`` on dim 1 concatenates spaces; flattening multiplies each
channel into ``H·W`` features; a residual ``add`` couples the producers of its operands,
which must then keep the same channels. Anything else that touches channels *blocks*
the producers involved, with the reason, so that pruning them is refused instead of
producing a broken model.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from netcompress._core.layers import DENSE
from netcompress._core.transaction import evaluating

__all__ = ["ChannelGraph", "Segment", "trace_channels"]

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                 nn.Hardtanh, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {torch.relu, F.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, F.leaky_relu, F.relu6, F.dropout,
                   torch.max_pool2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.adaptive_max_pool2d, torch.sigmoid, F.hardswish}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float"}
_ADD = {operator.add, torch.add, operator.iadd}


@dataclass(frozen=True)
class Segment:
    source: str | None  # the producing layer, or None for channels that cannot be pruned
    channels: int
    repeat: int = 1  # features per channel once flattened


@dataclass
class ChannelGraph:
    """Producers, the layers and norms that read their channels, and what couples or blocks them."""

    producers: dict[str, int] = field(default_factory=dict)  # name → output channels
    consumers: dict[str, tuple[Segment, ...]] = field(default_factory=dict)  # Linear/Conv2d name → input space
    norms: dict[str, tuple[Segment, ...]] = field(default_factory=dict)  # BatchNorm name → input space
    blocked: dict[str, str] = field(default_factory=dict)  # producer → why it cannot be pruned
    _parent: dict[str, str] = field(default_factory=dict)

    def find(self, name: str) -> str:
        while self._parent.get(name, name) != name:
            name = self._parent[name]
        return name

    def couple(self, a: str, b: str) -> None:
        self._parent[self.find(a)] = self.find(b)

    def group(self, name: str) -> list[str]:
        """``name`` and every producer that must keep the same channels."""
        root = self.find(name)
        return [p for p in self.producers if self.find(p) == root]

    def block(self, space, reason: str) -> None:
        for segment in space or ():
            if segment.source is not None:
                self.blocked.setdefault(segment.source, reason)


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, DENSE)


class _LayerTracer(fx.Tracer):
    """Keeps every Linear/Conv2d (subclasses too, such as 'same'-padding wrappers) as one call in the graph."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_layer(m) or super().is_leaf_module(m, module_qualified_name)


def _flattened(space, shape_in, shape_out):
    if len(shape_in) == 4 and len(shape_out) == 2 and shape_out[1] == shape_in[1] * shape_in[2] * shape_in[3]:
        per_channel = shape_in[2] * shape_in[3]
        return tuple(Segment(s.source, s.channels, s.repeat * per_channel) for s in space)
    return None


def _placeholder_values(traced: fx.GraphModule, example) -> list:
    """The example as positional values of the traced graph's inputs (a dict is matched by argument name)."""
    if not isinstance(example, dict):
        return [example]
    values = []
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            values.append(example.get(node.target, node.args[0] if node.args else None))
    return values


def trace_channels(model: nn.Module, example) -> ChannelGraph:
    """Trace ``model`` on ``example`` (a tensor, or a dict of keyword inputs) and build its :class:`ChannelGraph`."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = fx.GraphModule(model, _LayerTracer().trace(model))
        with evaluating(traced), torch.no_grad():  # a training-mode BatchNorm would update its running statistics
            ShapeProp(traced).propagate(*_placeholder_values(traced, example))
    except Exception as error:  # fx raises many types; any of them means "cannot follow"
        raise ValueError(
            f"structured pruning needs a model torch.fx can trace ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); prune an fx-traceable model"
        ) from None
    modules = dict(traced.named_modules())
    graph, spaces, seen = ChannelGraph(), {}, set()

    def shape(node):
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    for node in traced.graph.nodes:
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        first = spaces.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        out = shape(node)
        if node.op == "placeholder":
            if out is not None and len(out) >= 2:
                spaces[node] = (Segment(None, out[1]),)
            continue
        if node.op == "output":
            for a in _flat_nodes(node.args):
                graph.block(spaces.get(a), "its channels are outputs of the model")
            continue
        if node.op == "call_module":
            module = modules[node.target]
            if _is_layer(module):
                if node.target in seen:
                    graph.block(first, f"layer {node.target!r} is called more than once")
                    graph.block(spaces.get(node), "it is called more than once")
                seen.add(node.target)
                if isinstance(module, nn.Conv2d) and module.groups != 1:
                    graph.block(first, f"it feeds the grouped convolution {node.target!r}")
                    graph.blocked[node.target] = "it is a grouped convolution"
                elif first is not None:
                    graph.consumers[node.target] = first
                channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
                graph.producers[node.target] = channels
                spaces[node] = (Segment(node.target, channels),)
                continue
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and first is not None:
                graph.norms[node.target] = first
                spaces[node] = first
                continue
            if isinstance(module, _PASS_MODULES):
                spaces[node] = first
                continue
            if isinstance(module, nn.Flatten) and first is not None:
                flat = _flattened(first, shape(node.args[0]), out)
                if flat is not None:
                    spaces[node] = flat
                    continue
        elif node.op == "call_function" and node.target in _PASS_FUNCTIONS:
            spaces[node] = first
            continue
        elif node.op == "call_method" and node.target in _PASS_METHODS:
            spaces[node] = first
            continue
        elif (node.op == "call_function" and node.target is torch.flatten) or \
                (node.op == "call_method" and node.target in ("flatten", "view", "reshape")):
            flat = _flattened(first, shape(node.args[0]), out) if first is not None else None
            if flat is not None:
                spaces[node] = flat
                continue
        elif (node.op == "call_function" and node.target in _ADD) or (node.op == "call_method" and node.target == "add"):
            operands = [spaces.get(a) for a in inputs]
            if len(inputs) == 1 or all(s is None for s in operands):
                spaces[node] = first
                continue
            if len(operands) == 2 and all(s is not None for s in operands) and _aligned(*operands):
                for a, b in zip(*operands, strict=True):
                    if a.source is None or b.source is None:
                        graph.block((a, b), "it is added to channels that cannot be pruned")
                    else:
                        graph.couple(a.source, b.source)
                spaces[node] = operands[0]
                continue
        elif node.op == "call_function" and node.target is torch.cat:
            tensors, dim = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            parts = [spaces.get(t) for t in tensors]
            rank = len(out) if out is not None else 0
            if (dim == 1 or dim == 1 - rank) and all(p is not None for p in parts):
                spaces[node] = tuple(s for p in parts for s in p)
                continue
        # Anything else that sees channels: the producers involved cannot be pruned safely.
        for a in _flat_nodes(node.args) + _flat_nodes(tuple(node.kwargs.values())):
            graph.block(spaces.get(a), f"its channels flow into {node.op} {getattr(node.target, '__name__', node.target)!s}, "
                                       "which netcompress cannot follow")
    return graph


def _flat_nodes(args) -> list[fx.Node]:
    found = []
    for a in args:
        if isinstance(a, fx.Node):
            found.append(a)
        elif isinstance(a, (tuple, list)):
            found += _flat_nodes(a)
    return found


def _aligned(a, b) -> bool:
    return [(s.channels, s.repeat) for s in a] == [(s.channels, s.repeat) for s in b]
