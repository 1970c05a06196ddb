"""Structured pruning: coupled channels, physically smaller layers, least-squares re-fit."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.stats.collect import heldout_mask


class Residual(nn.Module):
    """conv → BN → ReLU, a residual add, a concatenation, a 1×1 conv, flatten into two Linear layers."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 20)
        self.out = nn.Linear(20, 10)

    def forward(self, x):
        a = torch.relu(self.b1(self.c1(x)))
        b = self.c2(a) + a
        c = torch.cat([a, b], 1)
        d = torch.max_pool2d(torch.relu(self.c3(c)), 2)
        return self.out(torch.relu(self.fc(d.flatten(1))))


@pytest.fixture
def residual():
    torch.manual_seed(0)
    model = Residual().eval()
    with torch.no_grad():
        model.b1.running_mean.uniform_(-0.1, 0.1)
        model.b1.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(48, 3, 8, 8)


def test_coupled_channels_are_pruned_together_and_the_model_stays_whole(residual, tmp_path):
    model, x = residual
    report = nc.compress(model, x.split(16), method="channel", sparsity=0.5, progress=False)
    # c1 and c2 meet in a residual add: they keep the same channels, and BN follows c1.
    assert model.c1.out_channels == model.c2.out_channels == model.b1.num_features == 4
    assert model.c2.in_channels == 4 and model.c3.in_channels == 8  # the concatenation of two 4-channel halves
    assert model.c3.out_channels == 3 and model.fc.in_features == 3 * 16 and model.fc.out_features == 10
    assert model(x).shape == (48, 10)
    assert {r.name for r in report.rows} == {"b1", "c1", "c2", "c3", "fc", "out"}
    nc.save(model, tmp_path / "out", report)
    loaded = nc.load(Residual().eval(), tmp_path / "out")
    assert torch.equal(loaded(x), model(x))


def test_removed_channels_match_a_direct_slicing_of_the_network(residual):
    model, x = residual
    original = copy.deepcopy(model)
    nc.compress(model, x, method="channel", sparsity=0.5, layers=["c3"], criterion="l1", refit=False, progress=False,
                batchnorm=False)  # the BatchNorm statistics as they were
    keep = original.c3.weight.detach().abs().sum((1, 2, 3)).argsort(descending=True)[:3].sort().values
    expected = copy.deepcopy(original)
    with torch.no_grad():
        expected.c3.weight[[i for i in range(6) if i not in keep]] = 0
        expected.c3.bias[[i for i in range(6) if i not in keep]] = 0
    # Zeroing the dropped filters of the original gives the same outputs as removing them.
    torch.testing.assert_close(model(x), expected(x), rtol=1e-5, atol=1e-5)


def test_refit_is_the_least_squares_solution_and_beats_plain_slicing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    x = torch.randn(400, 12)
    hidden = torch.relu(model[0](x)).detach().double()
    target = model(x).detach().double()
    plain, fitted = copy.deepcopy(model), copy.deepcopy(model)
    nc.compress(plain, x, method="channel", sparsity=0.5, layers=["0"], refit=False, progress=False)
    nc.compress(fitted, x, method="channel", sparsity=0.5, layers=["0"], progress=False)
    kept = [i for i in range(16) if any(torch.allclose(model[0].weight[i], w) for w in fitted[0].weight)]
    fit = ~heldout_mask(0, 400, 0.2)  # the re-fit reads the samples compress did not keep apart
    design = torch.cat([hidden[fit][:, kept], torch.ones(int(fit.sum()), 1, dtype=torch.float64)], 1).numpy()
    solution = np.linalg.lstsq(design, target[fit].numpy(), rcond=None)[0]
    np.testing.assert_allclose(fitted[2].weight.detach().numpy(), solution[:-1].T, atol=1e-3)
    np.testing.assert_allclose(fitted[2].bias.detach().numpy(), solution[-1], atol=1e-3)
    assert (fitted(x) - model(x)).norm() < (plain(x) - model(x)).norm()


@pytest.mark.parametrize("criterion", ["mean", "max", "rate"])
def test_activation_pruning_drops_the_weakest_units(criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(300, 10)
    response = torch.relu(model[0](x)).detach()
    score = {"mean": response.mean(0), "max": response.amax(0), "rate": (response > 0).float().mean(0)}[criterion]
    expected = model[0].weight[score.argsort(stable=True)[3:].sort().values]
    nc.compress(model, x, method="activation", sparsity=0.25, criterion=criterion, progress=False)
    assert model[0].out_features == 9 and model[2].in_features == 9
    torch.testing.assert_close(model[0].weight, expected)


@pytest.mark.parametrize("criterion", ["mean", "max", "rate"])
def test_activation_pruning_removes_the_weakest_channels_of_a_convolution(criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4))
    x = torch.randn(40, 3, 8, 8)
    response = torch.relu(model[0](x)).detach().transpose(0, 1).reshape(8, -1)  # channel × (image, position)
    score = {"mean": response.mean(1), "max": response.amax(1), "rate": (response > 0).double().mean(1)}[criterion]
    kept = score.double().argsort(stable=True)[4:].sort().values
    expected = model[0].weight[kept].clone(), model[2].weight[:, kept].clone()
    nc.compress(model, x, method="activation", sparsity=0.5, criterion=criterion, layers=["0"], holdout=0,
                progress=False)
    assert model[0].out_channels == 4 and model[2].in_channels == 4
    torch.testing.assert_close(model[0].weight, expected[0])
    torch.testing.assert_close(model[2].weight, expected[1])
    assert model(x).shape == (40, 4)


class Unsafe(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h.mean(1, keepdim=True)  # a channel reduction the tracer cannot follow


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # data-dependent control flow: not traceable
            h = h * 2
        return self.b(h)


def test_structures_that_cannot_be_proved_safe_are_refused():
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="layer 'a': its channels flow into call_method mean"):
        nc.compress(Unsafe(), x, method="channel", sparsity=0.5, layers=["a"], progress=False)
    with pytest.raises(ValueError, match="layer 'b': its channels flow into call_function add"):
        nc.compress(Unsafe(), x, method="channel", sparsity=0.5, layers=["b"], progress=False)
    with pytest.raises(ValueError, match="layer 'out': its channels are outputs of the model"):
        nc.compress(Residual(), torch.randn(2, 3, 8, 8), method="channel", sparsity=0.5, layers=["out"], progress=False)
    with pytest.raises(ValueError, match="needs a model torch.fx can trace"):
        nc.compress(Branchy(), x, method="activation", sparsity=0.5, layers=["a"], progress=False)
    with pytest.raises(ValueError, match="criterion must be"):
        nc.compress(Residual(), torch.randn(2, 3, 8, 8), method="activation", sparsity=0.5, layers=["fc"],
                    criterion="l1", progress=False)
