"""GPTQ against a direct implementation of Optimal Brain Quantization's update, and against round-to-nearest."""

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet, correlated_inputs
from netcompress.quantize import gptq, uniform
from netcompress.quantize.uniform import _affine_grid
from netcompress.stats.hessian import inverse_hessian_factor


def _stats(layer, x):
    return nc.collect(layer, x, progress=False)[""]


def _obq_reference(W, H, bits, group_size, symmetric, damp):
    """Frantar & Alistarh's OBQ step, written directly: quantize column i, then move the remaining columns F
    by ``−err·[H_F⁻¹]_{i,F} / [H_F⁻¹]_{ii}`` with H_F⁻¹ the explicit inverse of H on F (no Cholesky, no blocks)."""
    W = W.copy()
    H = H.copy()
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    H += damp * np.mean(np.diag(H)) * np.eye(len(H))
    W[:, dead] = 0.0
    out, d = W.shape
    size = d if group_size is None else group_size
    Q = np.zeros_like(W)
    for i in range(d):
        if i % size == 0:  # the grid of the group, on the weights as updated so far (same grid rule)
            scale, zero, _ = _affine_grid(torch.from_numpy(W[:, i:i + size]), torch.ones(out, size, dtype=torch.float64),
                                          bits, symmetric)
            scale, zero = scale.numpy(), zero.numpy()
        codes = np.clip(np.round(W[:, i] / scale + zero), 0, 2**bits - 1)
        Q[:, i] = (codes - zero) * scale
        F = np.arange(i, d)
        Hinv = np.linalg.inv(H[np.ix_(F, F)])
        error = (W[:, i] - Q[:, i]) / Hinv[0, 0]
        W[:, F] -= np.outer(error, Hinv[0, :])
    return Q


def test_the_factor_is_the_upper_cholesky_factor_of_the_inverse():
    x = correlated_inputs(50, 12)
    H = (x.T @ x).numpy()
    U, dead = inverse_hessian_factor(torch.from_numpy(H), damp=0.01)
    assert not dead.any()
    assert np.allclose(np.triu(U.numpy()), U.numpy())
    damped = H + 0.01 * np.mean(np.diag(H)) * np.eye(12)
    np.testing.assert_allclose(U.numpy().T @ U.numpy(), np.linalg.inv(damped), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("bits, group_size, symmetric, rows_per_sweep",
                         [(3, None, True, None), (4, 8, True, None), (3, 8, False, 3)])
def test_gptq_equals_the_obq_update_written_directly(bits, group_size, symmetric, rows_per_sweep, monkeypatch):
    """``rows_per_sweep``: the rows swept in blocks of 3 (as a 32,000-row head is), same result."""
    import netcompress.stats.hessian

    if rows_per_sweep:
        monkeypatch.setattr(netcompress.stats.hessian, "SWEEP_ELEMENTS", 24 * rows_per_sweep)
    torch.manual_seed(0)
    layer = nn.Linear(24, 10).double()
    x = correlated_inputs(200, 24)
    x[:, 5] = 0.0  # an input the target data never uses
    q = gptq(layer, _stats(layer, x), bits=bits, group_size=group_size, symmetric=symmetric)
    H = (x.T @ x).numpy()
    expected = _obq_reference(layer.weight.detach().numpy(), H, bits, group_size, symmetric, 0.01)
    np.testing.assert_allclose(q.weight.detach().numpy(), expected, rtol=1e-7, atol=1e-9)
    assert (q.weight[:, 5] == 0).all()


def test_gptq_errs_less_on_the_target_outputs_than_round_to_nearest():
    torch.manual_seed(0)
    layer = nn.Linear(96, 48).double()
    x = correlated_inputs(600, 96)
    stats = _stats(layer, x)
    rtn = uniform(layer, stats, bits=3, granularity="group", group_size=32)
    fed = gptq(layer, stats, bits=3, group_size=32)

    def error(q):
        return float((q(x) - layer(x)).norm() / layer(x).norm())

    assert error(fed) < 0.85 * error(rtn), (error(fed), error(rtn))
    assert fed.bits == rtn.bits  # the same storage: codes and one scale per group


def test_bad_gptq_settings_are_refused_before_the_data_pass():
    model = SmallNet()
    with pytest.raises(ValueError, match="damp must be a fraction"):
        nc.compress(model, torch.randn(4, 3, 8, 8), method="gptq", bits=4, damp=2.0, progress=False)
    with pytest.raises(TypeError, match="needs bits"):
        nc.compress(model, torch.randn(4, 3, 8, 8), method="gptq", progress=False)
