"""Seed 004: the independent stage is the least-squares optimum; two stages beat plain calibration."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.quantize.lowbit import fit_codebooks, quantize_low_bit, shared_grid


def test_independent_stage_solves_the_layerwise_least_squares():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(12, 8))
    x = torch.randn(200, 12) + 0.3
    stats = nc.collect(reference, x, progress=False)
    student = copy.deepcopy(reference)
    student[0] = shared_grid(reference[0], stats["0"], bits=2, rows=4)
    before = student(x).detach()
    fit_codebooks(student, reference, stats)
    target = reference(x).detach().double().numpy()
    # Reference solution: for each group, least squares over its 4 code words and the rows' biases.
    layer = student[0]
    codes = layer.codes.long().numpy()
    X = x.double().numpy()
    for g in range(2):
        rows = range(4 * g, 4 * g + 4)
        design = np.zeros((200 * 4, 4 + 4))
        for i, r in enumerate(rows):
            for level in range(4):
                design[i * 200:(i + 1) * 200, level] = X[:, codes[r] == level].sum(1)
            design[i * 200:(i + 1) * 200, 4 + i] = 1.0
        solution = np.linalg.lstsq(design, np.concatenate([target[:, r] for r in rows]), rcond=None)[0]
        np.testing.assert_allclose(layer.codebook.detach().double().numpy()[g], solution[:4], rtol=2e-2, atol=2e-3)
    after = student(x).detach()
    assert (after - reference(x)).norm() < (before - reference(x)).norm()


@pytest.mark.parametrize("bits", [2, 4])
def test_both_stages_bring_outputs_closer_to_full_precision(bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
    samples, held_out = torch.randn(50, 20), torch.randn(500, 20)
    reference = model(held_out).detach()
    plain = quantize_low_bit(model, samples, bits=bits, group_size=8, independent=False, progress=False)
    staged = quantize_low_bit(model, samples, bits=bits, group_size=8, joint_epochs=20, lr=1e-3, progress=False)

    def distance(q):
        return (q(held_out).detach() - reference).norm().item()

    assert distance(staged) < distance(plain)
    for module in staged.modules():
        if isinstance(module, nc.quantize.QuantizedLinear):
            assert module.levels == 2 ** bits and len(torch.unique(module.weight.detach()[:8])) <= 2 ** bits


def test_independent_stage_handles_depthwise_convolutions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1))
    x = torch.randn(20, 3, 8, 8)
    plain = quantize_low_bit(model, x, bits=2, group_size=2, independent=False, progress=False)
    fitted = quantize_low_bit(model, x, bits=2, group_size=2, progress=False)
    reference = model(x).detach()
    assert (fitted(x) - reference).norm() < (plain(x) - reference).norm()
