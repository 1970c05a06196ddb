"""SparseGPT against the Optimal Brain Surgeon update written directly, and against magnitude pruning."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import correlated_inputs
from netcompress.prune import sparsegpt


def _stats(layer, x):
    return nc.collect(layer, x, progress=False)[""]


def _obs_reference(W, H, sparsity, damp, block):
    """Column by column: a removed weight's error ``w/[H_F⁻¹]_00`` moves the columns F still to come along
    ``[H_F⁻¹]_0,F`` (explicit inverse of H on F). Each row's removals in a block are its least
    ``w²/[H_F⁻¹]_00``, chosen on the weights as updated when the block starts."""
    W, H = W.copy(), H.copy()
    H += damp * np.mean(np.diag(H)) * np.eye(len(H))
    out, d = W.shape
    inverse_diag = np.array([np.linalg.inv(H[j:, j:])[0, 0] for j in range(d)])
    pruned = np.zeros_like(W, dtype=bool)
    for start in range(0, d, block):
        end = min(start + block, d)
        saliency = W[:, start:end] ** 2 / inverse_diag[start:end]
        remove = int((end - start) * sparsity)
        for row in range(out):
            pruned[row, start + np.argsort(saliency[row], kind="stable")[:remove]] = True
        for i in range(start, end):
            Hinv = np.linalg.inv(H[i:, i:])
            error = np.where(pruned[:, i], W[:, i], 0.0) / Hinv[0, 0]
            W[:, i:] -= np.outer(error, Hinv[0, :])
    W[pruned] = 0.0
    return W, pruned


@pytest.mark.parametrize("sparsity, rows_per_sweep", [(0.5, None), (0.75, 2)])
def test_sparsegpt_equals_the_obs_update_written_directly(sparsity, rows_per_sweep, monkeypatch):
    """``rows_per_sweep``: the rows swept in blocks of 2 (as a 32,000-row head is), same result."""
    import importlib

    import netcompress.stats.hessian

    obs = importlib.import_module("netcompress.prune.sparsegpt")  # the module, which the function's name shadows

    monkeypatch.setattr(obs, "BLOCK", 8)  # several blocks on a small layer
    if rows_per_sweep:
        monkeypatch.setattr(netcompress.stats.hessian, "SWEEP_ELEMENTS", 20 * rows_per_sweep)
    torch.manual_seed(0)
    layer = nn.Linear(20, 7).double()
    x = correlated_inputs(300, 20)
    pruned = sparsegpt(layer, _stats(layer, x), sparsity=sparsity)
    expected, mask = _obs_reference(layer.weight.detach().numpy(), (x.T @ x).numpy(), sparsity, 0.01, 8)
    np.testing.assert_array_equal(~pruned.mask.numpy(), mask)
    np.testing.assert_allclose(pruned.weight.detach().numpy(), expected, rtol=1e-7, atol=1e-9)
    assert (~pruned.mask).sum() == 7 * sum(int(min(8, 20 - s) * sparsity) for s in range(0, 20, 8))


def test_sparsegpt_errs_less_on_the_target_outputs_than_magnitude_pruning():
    torch.manual_seed(0)
    layer = nn.Linear(96, 48).double()
    x = correlated_inputs(600, 96)
    stats = _stats(layer, x)
    by_magnitude = nc.prune.magnitude(copy.deepcopy(layer), stats, sparsity=0.5)
    compensated = sparsegpt(layer, stats, sparsity=0.5)

    def error(m):
        return float((m(x) - layer(x)).norm() / layer(x).norm())

    assert int(compensated.mask.sum()) == int(by_magnitude.mask.sum())
    assert error(compensated) < 0.7 * error(by_magnitude), (error(compensated), error(by_magnitude))
