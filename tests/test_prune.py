import copy

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet


def test_magnitude_removes_exactly_the_smallest_weights():
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    pruned = nc.prune.magnitude(layer, sparsity=0.75)
    W = layer.weight.detach().numpy()
    threshold = np.sort(np.abs(W).ravel())[int(0.75 * W.size) - 1]
    np.testing.assert_array_equal(pruned.mask.numpy(), np.abs(W) > threshold)
    assert isinstance(pruned, nn.Linear) and int(pruned.mask.sum()) == W.size // 4


def test_magnitude_removes_the_exact_count_when_weights_tie():
    layer = nn.Linear(10, 6)
    with torch.no_grad():  # 60 weights, 24 of them tied at |w| = 0.5 across the 50 % threshold
        layer.weight.copy_(torch.linspace(-1, 1, 60).reshape(6, 10))
        layer.weight.view(-1)[18:42] = 0.5 * torch.tensor([-1.0, 1.0]).repeat(12)
    pruned = nc.prune.magnitude(layer, sparsity=0.5)
    W = layer.weight.detach().abs().reshape(-1)
    removed = ~pruned.mask.reshape(-1)
    assert int(removed.sum()) == 30
    assert W[removed].max() <= W[~removed].min()  # never a larger weight removed before a smaller one
    tied = (W == 0.5).nonzero().squeeze(1)
    assert removed[tied[:int(removed[tied].sum())]].all()  # of the tied, the first ones go


def test_pruning_again_only_removes_more():
    layer = nc.prune.magnitude(nn.Linear(30, 20), sparsity=0.5)
    again = nc.prune.magnitude(layer, sparsity=0.8)
    assert (again.mask <= layer.mask).all() and int(again.mask.sum()) == 120


def test_global_scope_prunes_the_overall_share_and_treats_scales_fairly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 40))
    with torch.no_grad():
        model[2].weight.mul_(100)  # a layer of larger scale is not spared by a global threshold
    report = nc.compress(model, method="magnitude", sparsity=0.6, scope="global", progress=False)
    kept = sum(int(model[i].mask.sum()) for i in (0, 2))
    assert kept == pytest.approx(0.4 * 3200, abs=2)
    assert 0.3 < model[0].mask.float().mean() < 0.5 and 0.3 < model[2].mask.float().mean() < 0.5
    assert [r.name for r in report.rows] == ["0", "2"]


def test_masks_survive_finetuning():
    torch.manual_seed(0)
    model = SmallNet()
    nc.compress(model, method="magnitude", sparsity=0.7, progress=False)
    masks = {n: m.mask.clone() for n, m in model.named_modules() if hasattr(m, "mask")}
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    nc.finetune(model, (x, y), epochs=3, lr=1e-2, progress=False)
    for name, mask in masks.items():
        module = model.get_submodule(name)
        assert torch.equal(module.mask, mask)
        assert ((module.weight * module.mask) != 0).sum() <= mask.sum()
        assert (model.get_submodule(name).weight.grad[~mask] == 0).all()


def test_codes_survive_finetuning_and_codebooks_learn():
    torch.manual_seed(0)
    model = SmallNet()
    nc.compress(model, method="kmeans", bits=3, progress=False)
    codes = {n: m.codes.clone() for n, m in model.named_modules() if hasattr(m, "codes")}
    books = {n: m.codebook.detach().clone() for n, m in model.named_modules() if hasattr(m, "codebook")}
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    nc.finetune(model, (x, y), epochs=2, lr=1e-2, progress=False)
    for name in codes:
        module = model.get_submodule(name)
        assert torch.equal(module.codes, codes[name])
        assert len(torch.unique(module.weight.detach())) <= 8
    assert any(not torch.equal(model.get_submodule(n).codebook.detach(), b) for n, b in books.items())


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.0), "sparsity must be a fraction in \\[0, 1\\)"),
    (dict(sparsity=-0.1), "sparsity must be a fraction"),
    (dict(sparsity=0.5, norm=3), "norm must be 1"),
    (dict(sparsity=0.5, scope="model"), "scope must be"),
    (dict(sparsity={"conv1": 0.5}), "sparsity gives no value for layer 'conv2'"),
    (dict(), "needs sparsity"),
])
def test_bad_pruning_settings(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):  # a missing setting is a TypeError
        nc.compress(SmallNet(), method="magnitude", layers=["conv1", "conv2"], progress=False, **kwargs)


def test_per_layer_sparsity_dict_selects_the_layers():
    model = SmallNet()
    original = copy.deepcopy(model)
    report = nc.compress(model, method="magnitude", sparsity={"fc1": 0.9, "conv2": 0.5}, progress=False)
    assert sorted(r.name for r in report.rows if r.replaced) == ["conv2", "fc1"]
    assert {r.status for r in report.rows if not r.replaced} == {"not selected"}
    assert type(model.conv1) is type(original.conv1)
    assert model.fc1.mask.float().mean().item() == pytest.approx(0.1, abs=0.01)
