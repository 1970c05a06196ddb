"""Sequential (block by block) compression: each block sees the inputs the compressed blocks before it give."""

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress._blocks import find_blocks
from netcompress._layers import replace_module
from netcompress.quantize import gptq


class Stack(nn.Module):
    def __init__(self, width: int = 24, depth: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(10, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth))
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _data():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(400, 10, generator=g) @ torch.randn(10, 10, generator=g)).split(100)


def test_blocks_are_the_stack_children_in_order_with_the_rest_around_them():
    model = Stack()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert find_blocks(model, names) == [["stem"], ["blocks.0.0"], ["blocks.1.0"], ["blocks.2.0"], ["head"]]
    assert find_blocks(model, ["head", "blocks.1.0"], "blocks") == [["blocks.1.0"], ["head"]]
    with pytest.raises(ValueError, match="blocks='head' is not a ModuleList"):
        find_blocks(model, names, "head")


def test_sequential_gptq_equals_compressing_each_block_on_the_compressed_prefix():
    model, data = Stack(), _data()
    reference = copy.deepcopy(model)
    for name in ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0", "head"]:  # by hand, with the public pieces
        stats = nc.collect(reference, data, [name], holdout=0.2, progress=False)
        replace_module(reference, name, gptq(reference.get_submodule(name), stats[name], bits=3))
    report = nc.compress(model, data, method="gptq", bits=3, sequential=True, progress=False)
    assert [r.name for r in report.rows if r.replaced] == ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0", "head"]
    x = torch.cat(data)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_sequential_refuses_what_it_cannot_do_and_leaves_the_model():
    model, data = Stack(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="sequential=True runs methods that replace one layer at a time"):
        nc.compress(model, data, method="dalr", rank=2, sequential=True, progress=False)
    with pytest.raises(ValueError, match="pass data, not stats"):
        nc.compress(model, stats=nc.collect(model, data, progress=False), method="gptq", bits=4, sequential=True,
                    progress=False)
    with pytest.raises(ValueError, match="blocks='nothing'"):
        nc.compress(model, data, method="gptq", bits=4, sequential=True, blocks="nothing", progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_global_magnitude_threshold_spans_every_block_in_sequential_mode():
    data = _data()
    masks = {}
    for sequential in (False, True):
        model = Stack()
        with torch.no_grad():
            model.blocks[1][0].weight.mul_(10)  # one block with far larger weights: a global threshold spares it
        nc.compress(model, data, method="magnitude", sparsity=0.5, scope="global", sequential=sequential,
                    progress=False)
        masks[sequential] = {n: m.mask.clone() for n, m in model.named_modules() if hasattr(m, "mask")}
    assert masks[True].keys() == masks[False].keys()
    assert all(torch.equal(masks[True][n], masks[False][n]) for n in masks[True])
    assert masks[True]["blocks.1.0"].float().mean() > 0.5  # not the per-layer 50 %


def test_blocks_without_sequential_is_refused():
    with pytest.raises(ValueError, match="pass sequential=True with it"):
        nc.compress(Stack(), _data(), method="gptq", bits=4, blocks="blocks", progress=False)
