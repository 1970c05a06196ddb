import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.lowrank.budget import LayerCurve, allocate_budget, rank_for_energy, rank_for_keep, useful_rank_limit


def _curve(errors, per_rank=10, fixed=0, before=1000):
    return LayerCurve(torch.tensor(errors, dtype=torch.float64), per_rank, fixed, before)


def test_budget_goes_where_error_falls_most_per_parameter():
    # Layer a's error drops steeply, b's barely: a should get the ranks.
    curves = {"a": _curve([1.0, 0.5, 0.2, 0.1, 0.05]), "b": _curve([1.0 - 0.04 * k for k in range(12)])}
    ranks = allocate_budget(curves, budget=0.05)  # 100 parameters of 2000: 10 ranks of 10 each
    # rank 1 each, then a's gains (0.1, 0.05 after 0.3) beat b's 0.04; b takes the rest.
    assert ranks == {"a": 4, "b": 6}


def test_budget_is_met_and_nearly_used():
    g = torch.Generator().manual_seed(3)
    curves = {}
    for i in range(4):
        gains = torch.rand(30, generator=g, dtype=torch.float64).sort(descending=True).values
        errors = torch.cat([torch.ones(1, dtype=torch.float64), 1 - gains.cumsum(0) / gains.sum()])
        curves[f"l{i}"] = _curve(errors.tolist(), per_rank=7 + i, fixed=3, before=400 + 50 * i)
    budget = 0.4
    ranks = allocate_budget(curves, budget)
    allowed = budget * sum(c.params_before for c in curves.values())
    spent = sum(c.params(ranks[n]) for n, c in curves.items())
    assert spent <= allowed
    cheapest = min(c.params_per_rank for n, c in curves.items() if ranks[n] < c.max_rank)
    assert spent > allowed - cheapest  # nothing that fits was left on the table


def test_budget_below_rank_one_everywhere_is_refused():
    with pytest.raises(ValueError, match="budget 0.001 is below"):
        allocate_budget({"a": _curve([1.0, 0.5])}, 0.001)


def test_keep_and_energy_and_limits():
    assert rank_for_keep(0.1, params_before=1000 * 500 + 1000, params_per_rank=1500, fixed_params=1000) == 32  # (0.1·501000 − 1000) / 1500
    assert rank_for_energy(torch.tensor([1.0, 0.3, 0.09, 0.01], dtype=torch.float64), 0.9) == 2
    assert rank_for_energy(torch.tensor([1.0, 0.3], dtype=torch.float64), 0.99) == 2  # not reached: beyond the curve
    assert useful_rank_limit(1024, 784) == (1024 * 784 - 1) // (1024 + 784)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            rank_for_keep(bad, 10, 1, 0)


def test_compress_with_budget_meets_it_on_a_real_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 60), nn.ReLU(), nn.Linear(60, 50), nn.ReLU(), nn.Linear(50, 40))
    x = torch.randn(300, 30)
    report = nc.compress(model, x, budget=0.3, progress=False)
    assert report.params_after <= 0.3 * report.params_before
    assert all(row.rank is not None for row in report.rows)


def test_compress_with_energy_keeps_that_energy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 64))
    x = torch.randn(500, 40) @ torch.randn(40, 40) * torch.logspace(0, -3, 40)
    stats = nc.collect(model, x, progress=False)
    report = nc.compress(model, stats=stats, energy=0.99, method="svd", progress=False)
    row = report["0"]
    assert 1 - row.relative_error ** 2 >= 0.99 - 1e-9
