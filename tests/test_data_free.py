"""Methods that need no data run without it; those that do say so in one sentence."""

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet

DATA_FREE = {"svd": {"rank": 2}, "magnitude": {"sparsity": 0.5}, "uniform": {"bits": 4}, "binary": {},
             "ternary": {}, "kmeans": {"bits": 3}}


@pytest.mark.parametrize("method", sorted(DATA_FREE))
def test_every_data_free_method_runs_without_data_and_the_model_runs(method):
    torch.manual_seed(0)
    model = SmallNet()
    x = torch.randn(2, 3, 8, 8)
    report = nc.compress(model, None, method=method, progress=False, **DATA_FREE[method])
    assert [r.status for r in report.rows] == ["compressed"] * len(report.rows)
    assert all(r.heldout_error is None for r in report.rows)
    assert torch.isfinite(model(x)).all()


def test_svd_without_data_is_the_truncated_svd_and_reports_the_error_on_white_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 5))
    W = model[0].weight.detach().double().numpy()
    report = nc.compress(model, None, method="svd", rank=3, progress=False)
    U, S, Vt = np.linalg.svd(W)
    best = (U[:, :3] * S[:3]) @ Vt[:3]
    got = (model[0].up.weight @ model[0].down.weight).detach().double().numpy()
    np.testing.assert_allclose(got, best, atol=1e-5)
    b = model[0].up.bias.detach().double().numpy()
    white = np.linalg.norm(W - best) / np.sqrt(np.linalg.norm(W) ** 2 + b @ b)  # E‖(W − Ŵ)x‖² / E‖Wx + b‖²
    assert report["0"].relative_error == pytest.approx(white, rel=1e-6)


def test_svd_budget_without_data_spends_it_on_the_weight_spectrum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    with torch.no_grad():  # the second layer is nearly rank 2: the budget should cut it, not the first
        model[2].weight.copy_(torch.randn(32, 2) @ torch.randn(2, 32) + 1e-3 * torch.randn(32, 32))
    report = nc.compress(model, None, method="svd", budget=0.6, progress=False)
    assert report["2"].rank <= 4 and report["2"].relative_error < 0.01


@pytest.mark.parametrize("method", ["svd-bc", "dalr", "dalr-bc", "gptq", "sparsegpt"])
def test_methods_that_learn_from_data_refuse_to_run_without_it(method):
    model = SmallNet()
    settings = nc.METHODS[method].example
    with pytest.raises(ValueError, match=f"method '{method}' needs target data"):
        nc.compress(model, None, method=method, progress=False, **settings)
    assert isinstance(model.fc1, nn.Linear)
