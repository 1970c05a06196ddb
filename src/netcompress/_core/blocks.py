"""The repeated blocks of a network (transformer layers, residual stages), for sequential compression."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["find_blocks"]


def _stacks(model: nn.Module) -> dict[str, list[str]]:
    """Every ``nn.ModuleList`` / ``nn.Sequential`` of two or more children: its name → its children's names."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2:
            found[name] = [f"{name}.{child}" if name else child for child, _ in module.named_children()]
    return found


def _inside(layer: str, block: str) -> bool:
    return layer == block or layer.startswith(block + ".")


def find_blocks(model: nn.Module, layers: Iterable[str], container: str | None = None) -> list[list[str]]:
    """``layers`` in groups compressed one after another: one group per block, in the model's order.

    The blocks are the children of ``container`` (a ``ModuleList`` or ``Sequential`` name), or by
    default of the stack that holds the most of ``layers`` (a Hugging Face encoder's
    ``encoder.layer``, a decoder's ``model.layers``). A layer outside every block is a group of
    its own, at its place in the model's order.
    """
    layers = list(layers)
    stacks = _stacks(model)
    if container is not None:
        if container not in stacks:
            raise ValueError(f"blocks={container!r} is not a ModuleList or Sequential of two or more blocks in this "
                             f"model; candidates: {', '.join(stacks) or 'none'}")
        children = stacks[container]
    else:
        scored = [(sum(any(_inside(layer, c) for c in kids) for layer in layers), len(kids), name)
                  for name, kids in stacks.items()]
        scored = [s for s in scored if s[0] > 0 and s[1] >= 2]
        children = stacks[max(scored)[2]] if scored else []
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    groups: dict[str, list[str]] = {}
    for layer in sorted(layers, key=lambda n: order.get(n, len(order))):
        block = next((c for c in children if _inside(layer, c)), layer)
        groups.setdefault(block, []).append(layer)
    return list(groups.values())
