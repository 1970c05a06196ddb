"""Quantized Linear layers on PyTorch's low-bit kernels give the product of the decoded weight."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from netcompress.quantize import kernels, uniform


def _quantized(out=33, inp=256, **settings):
    torch.manual_seed(0)
    layer = nn.Linear(inp, out)
    return uniform(layer, **settings)


def _reference(q, x):
    with torch.no_grad():
        return F.linear(x, q.weight, q.bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity, group_size", [("tensor", None), ("channel", None), ("group", 32),
                                                     ("group", 128), ("group", 64 * 3)])
def test_the_fast_path_gives_the_decoded_product(bits, symmetric, granularity, group_size, dtype):
    q = _quantized(bits=bits, symmetric=symmetric, granularity=granularity, group_size=group_size, inp=384)
    if dtype == torch.float32:
        expected = "rows" if granularity != "group" else None
    else:
        expected = ("int8" if granularity != "group" else None) if bits == 8 else "int4"
    assert kernels.kernel_name(q, dtype) == expected
    q = q.to(dtype)
    x = torch.randn(5, 7, 384).to(dtype)
    with torch.no_grad():
        got = q(x)
        assert (q._prepared is not None) == (expected is not None)
    want = _reference(q.float(), x.float())  # the float32 product of the same (rounded) operands
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tolerance, atol=tolerance * want.abs().max().item())


def test_odd_widths_and_masks_fall_back_to_the_decoded_weight():
    odd = _quantized(bits=4, granularity="channel", inp=250)  # 250 inputs: no group of 32–256 divides it
    masked = uniform(nc.prune.magnitude(nn.Linear(256, 16), sparsity=0.5), bits=8)
    for q, inp in ((odd, 250), (masked, 256)):
        assert kernels.kernel_name(q, torch.bfloat16) is None
        q, x = q.bfloat16(), torch.randn(3, inp).bfloat16()
        with torch.no_grad():
            torch.testing.assert_close(q(x), _reference(q, x))


def test_a_change_in_place_is_picked_up_on_the_next_call():
    q = _quantized(bits=4, granularity="channel")
    x = torch.randn(4, 256)
    with torch.no_grad():
        first = q(x)
        assert q._prepared is not None  # kept for the next call
        q.scale.mul_(2)  # what an optimizer step or load_state_dict does: the version counter moves
        torch.testing.assert_close(q(x) - q.bias, 2 * (first - q.bias), rtol=1e-4, atol=1e-4)
    fresh = _quantized(bits=4, granularity="channel")
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), q(x))


def test_training_the_scales_takes_the_differentiable_path():
    q = _quantized(bits=8, granularity="channel")
    x = torch.randn(4, 256)
    q(x).sum().backward()
    expected = torch.autograd.grad(F.linear(x, q.weight, q.bias).sum(), q.scale)[0]
    torch.testing.assert_close(q.scale.grad, expected)


def test_a_frozen_layer_keeps_its_decoded_weight_until_its_codebook_changes():
    torch.manual_seed(0)
    q = nc.quantize.kmeans(nn.Linear(20, 6), bits=3)
    x = torch.randn(2, 20)
    q.freeze()
    with torch.no_grad():
        before = q(x)
        kept = q._dense[1]
        assert q(x).equal(before) and q._dense[1] is kept  # decoded once
        q.codebook.mul_(0.5)
        torch.testing.assert_close(q(x) - q.bias, 0.5 * (before - q.bias))
    assert "_dense" not in q.state_dict() and q._dense[1] is not kept
    q.unfreeze()
    assert q._dense is None


def test_a_large_layer_without_a_kernel_is_decoded_a_block_of_rows_at_a_time(monkeypatch):
    import netcompress._core.tensors
    import netcompress.quantize.modules

    q = _quantized(out=40, inp=96, bits=4, granularity="group", group_size=32)  # float32 groups: decoded
    x = torch.randn(3, 5, 96)
    with torch.no_grad():
        whole = q(x)
        for module in (netcompress._core.tensors, netcompress.quantize.modules):
            monkeypatch.setattr(module, "ROW_BLOCK_ELEMENTS", 96 * 7)  # 7 rows per block: 6 blocks
        torch.testing.assert_close(q(x), whole)
        torch.testing.assert_close(q(x), _reference(q, x))
