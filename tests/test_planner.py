"""The planner: candidates priced against direct computations, allocation against exhaustive search, and
``compress(target=...)`` on a real network (an MLP trained on UCI digits) meeting its target, replayable."""

import copy
import itertools
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import digits_trained
from netcompress._core.sizes import saved_bytes
from netcompress.planner.allocate import allocate, lower_hull, smallest_budget
from netcompress.planner.candidates import price_layer
from netcompress.planner.latency import LatencyTable
from netcompress.planner.search import float32_bytes
from netcompress.stats.collect import heldout_mask


def _random_options(rng, layers=4, points=5):
    return {f"l{i}": [(rng.uniform(1, 10), rng.uniform(0, 1)) for _ in range(points)] for i in range(layers)}


def test_lower_hull_keeps_exactly_the_points_below_every_chord():
    rng = random.Random(0)
    for _ in range(50):
        points = [(rng.uniform(0, 10), rng.uniform(0, 1)) for _ in range(8)]
        hull = lower_hull(points)
        costs = [points[i][0] for i in hull]
        errors = [points[i][1] for i in hull]
        assert costs == sorted(costs) and errors == sorted(errors, reverse=True)
        for c, e in points:  # no point lies strictly below the hull's piecewise-linear curve
            if costs[0] <= c <= costs[-1]:
                assert e >= np.interp(c, costs, errors) - 1e-12
            elif c > costs[-1]:
                assert e >= errors[-1] - 1e-12


def test_allocation_fits_the_budget_and_beats_every_lagrangian_choice_that_fits():
    rng = random.Random(1)
    for _ in range(30):
        options = _random_options(rng)
        budget = rng.uniform(8, 30)
        picks = allocate(options, budget)
        best_exhaustive = min((sum(options[n][i][1] for n, i in zip(options, combo, strict=True))
                               for combo in itertools.product(range(5), repeat=4)
                               if sum(options[n][i][0] for n, i in zip(options, combo, strict=True)) <= budget),
                              default=None)
        if best_exhaustive is None:
            assert picks is None
            continue
        cost = sum(options[n][i][0] for n, i in picks.items())
        error = sum(options[n][i][1] for n, i in picks.items())
        assert cost <= budget + 1e-9
        for lam in np.geomspace(1e-4, 10, 60):  # each multiplier's per-layer argmin, where it fits
            lagrange = {n: min(range(5), key=lambda i, n=n: options[n][i][1] + lam * options[n][i][0]) for n in options}
            if sum(options[n][i][0] for n, i in lagrange.items()) <= budget:
                assert error <= sum(options[n][i][1] for n, i in lagrange.items()) + 1e-12
        assert error >= best_exhaustive - 1e-12


def test_smallest_budget_meets_the_error_and_no_cheaper_exhaustive_choice_is_much_cheaper():
    rng = random.Random(2)
    options = {n: [*points, (20.0, 0.0)] for n, points in _random_options(rng).items()}  # and each layer dense
    picks = smallest_budget(options, max_error=0.6)
    cost = sum(options[n][i][0] for n, i in picks.items())
    assert sum(options[n][i][1] for n, i in picks.items()) <= 0.36 + 1e-12
    for combo in itertools.product(range(6), repeat=4):  # nothing cheaper on the hulls' breakpoints is as good
        chosen = dict(zip(options, combo, strict=True))
        if sum(options[n][i][1] for n, i in chosen.items()) <= 0.36:
            assert sum(options[n][i][0] for n, i in chosen.items()) >= 0.5 * cost
    without_dense = _random_options(rng)
    assert smallest_budget(without_dense, max_error=1e-9) is None


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    x, y = digits_trained(model, epochs=20)
    return model, x[:1400], x[1400:], y[1400:]


def test_candidate_prices_are_the_replacements_own_bytes_and_heldout_errors(digits):
    model, x, _, _ = digits
    stats = nc.collect(model, x, ["0"], holdout=0.2)
    held = x[heldout_mask(0, len(x), 0.2)]
    candidates = price_layer("0", model[0], stats, dense_macs=64 * 128)
    labels = {c.label for c in candidates}
    assert {"dense", "uniform(bits=8)", "uniform(bits=8, activations=8)"} <= labels
    assert any("factor_bits=8" in label for label in labels)
    with torch.no_grad():
        reference = model[0](held).double()
        for candidate in candidates:
            direct = (candidate.module(held).double() - reference).norm() / reference.norm()
            if "activations=8" in candidate.label:  # the input grid's noise is an estimate (discrete pixels: 2.7×)
                assert float(direct) <= candidate.error <= 3 * float(direct) + 1e-3, candidate.label
                continue
            assert candidate.error == pytest.approx(float(direct), rel=1e-4, abs=1e-6), candidate.label
            assert candidate.bytes == saved_bytes(candidate.module)
            if candidate.label.startswith("dalr"):
                rank = candidate.settings.rank
                assert candidate.macs == 64 * 128 * rank * (64 + 128) // (64 * 128)


def test_a_size_target_is_met_checked_whole_and_replayed_bit_for_bit(digits, tmp_path):
    model, x, ex, ey = digits
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, x.split(350), target=nc.Target(size=1 / 16), eval_data=(ex, ey), progress=False)
    float_bytes = float32_bytes(model)
    assert saved_bytes(compressed) <= float_bytes / 16
    assert report.target["reached"]["size"] == pytest.approx(saved_bytes(compressed) / float_bytes)
    assert report.fidelity.accuracy_after >= report.fidelity.accuracy_before - 0.03
    assert set(report.target["layers"]) == {"0", "2", "4"}
    # the plan is a plan of settings objects: replay on a fresh copy gives the same weights
    fresh = copy.deepcopy(model)
    nc.replay(report.to_json(), fresh, x.split(350))
    for (k, a), (_, b) in zip(compressed.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    nc.save(compressed, tmp_path / "out", report)
    files = sum(f.stat().st_size for f in (tmp_path / "out").iterdir() if f.name.endswith(".safetensors"))
    assert files < float_bytes / 8  # on disk, headers included


def test_a_flops_target_chooses_low_rank_and_an_unreachable_target_leaves_the_model_unchanged(digits):
    model, x, _, _ = digits
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, x, target=nc.Target(flops=0.3), progress=False)
    assert report.target["reached"]["flops"] <= 0.3
    assert nc.count_flops(compressed, x[:2]) <= 0.3 * nc.count_flops(model, x[:2])
    untouched = copy.deepcopy(model)
    with pytest.raises(ValueError, match="out of reach"):
        nc.compress(untouched, x, target=nc.Target(size=0.001), progress=False)
    for a, b in zip(untouched.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_max_error_alone_gives_a_plan_within_it(digits):
    model, x, _, _ = digits
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, x, target=nc.Target(max_error=0.05), progress=False)
    assert report.target["measured_error"] <= 0.05
    assert saved_bytes(compressed) < saved_bytes(model) / 3


def test_recovery_never_leaves_the_heldout_measure_worse(digits):
    model, x, _, _ = digits
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, x[:500], target=nc.Target(size=1 / 28), recover=nc.Recover(epochs=2, lr=1e-3),
                         progress=False)
    recovered = report.target["recovered"]
    assert recovered["after"] >= recovered["before"] and len(recovered["history"]) == 2
    assert recovered["after"] == max([recovered["before"], *recovered["history"]])
    # trained scales are rounded back to float16 numbers: the file stays within the size planned for
    assert saved_bytes(compressed) == report.target["reached"]["bytes"] <= float32_bytes(model) / 28


def test_targets_are_checked_before_any_work():
    with pytest.raises(ValueError, match="one cost"):
        nc.Target(size=0.5, flops=0.5)
    with pytest.raises(ValueError, match="share"):
        nc.Target(size=2)
    with pytest.raises(ValueError, match="needs a cost"):
        nc.Target()
    assert nc.Target.parse("latency=0.5,batch=64") == nc.Target(latency=0.5, batch=64)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        nc.Target.parse("speed=2")
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="chooses the settings itself"):
        nc.compress(model, torch.randn(8, 4), nc.Uniform(bits=8), target=nc.Target(size=0.5))
    with pytest.raises(ValueError, match="candidates"):
        nc.compress(model, torch.randn(8, 4), target=nc.Target(size=0.5), candidates=["svd"])
    with pytest.raises(ValueError, match="go with target"):
        nc.compress(model, torch.randn(8, 4), nc.Uniform(bits=8), recover=nc.Recover(epochs=1))


def test_low_rank_with_8_bit_factors_round_trips_through_save_and_load(digits, tmp_path):
    model, x, _, _ = digits
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, x, nc.DALR(keep=0.5, factor_bits=8), progress=False)
    assert report["2"].bits == 8 and "factors 8-bit" in report["2"].setting
    nc.save(compressed, tmp_path / "o", report)
    loaded = nc.load(copy.deepcopy(model), tmp_path / "o")
    assert torch.equal(loaded(x), compressed(x))
    with pytest.raises(ValueError, match="factor_bits"):
        nc.DALR(rank=2, factor_bits=1)


def test_latency_table_measures_once_and_never_overwrites_a_file_it_did_not_write(tmp_path, monkeypatch):
    table = LatencyTable(tmp_path / "latency.json", repeats=3)
    layer = nn.Linear(32, 16)
    first = table.seconds(layer, (8, 32))
    table.save()
    again = LatencyTable(tmp_path / "latency.json", repeats=3)
    monkeypatch.setattr("netcompress.planner.latency.median_seconds", lambda *a, **k: pytest.fail("timed twice"))
    assert again.seconds(nn.Linear(32, 16), (8, 32)) == first  # same form and shape: read from the cache
    foreign = tmp_path / "notes.json"
    foreign.write_text("my notes")
    table = LatencyTable(foreign)
    table.entries["x"] = 1.0
    table.save()
    assert foreign.read_text() == "my notes"
    assert json.loads((tmp_path / "latency.json").read_text())


@pytest.mark.parametrize("settings", [nc.DALR(rank=5), nc.SVD(rank=4), nc.DALRBC(rank=3), nc.CP(rank=2),
                                      nc.Jaderberg(rank=2)], ids=lambda s: s.method)
def test_report_errors_from_the_factorization_equal_the_built_layers_errors(settings):
    from netcompress.apply import output_errors

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    stats = nc.collect(model, torch.randn(300, 3, 8, 8), holdout=0.2)
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, stats=stats, settings=settings)
    modules, before = dict(compressed.named_modules()), dict(model.named_modules())
    rows = [row for row in report.rows if row.status == "compressed"]
    assert rows
    for row in rows:  # the closed form against the product of the built module's weight with the Gram
        in_sample, held = output_errors(before[row.name], modules[row.name], stats, row.name)
        assert row.relative_error == pytest.approx(in_sample, rel=1e-7)
        assert row.heldout_error == pytest.approx(held, rel=1e-7)


def test_a_latency_target_times_padded_convolutions_as_they_run(tmp_path, monkeypatch):
    """A 'same'-padded 5×5 convolution on 4×4 maps: its replacements are timed behind the padding they run with."""
    monkeypatch.setenv("NETCOMPRESS_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 5, padding="same"), nn.ReLU(), nn.Conv2d(32, 32, 5, padding="same"),
                          nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 10)).eval()
    x = torch.randn(96, 3, 4, 4)
    try:  # on a model this small, low rank may well not be faster: then the refusal says so in one sentence
        report = nc.compress(model, x, target=nc.Target(latency=0.8, batch=8), candidates=["dalr"], progress=False)
        assert report.target["reached"]["latency"] > 0
    except ValueError as error:
        assert "out of reach" in str(error)
    forms = json.loads((tmp_path / "latency.json").read_text())
    assert len(forms) >= 3  # every layer's candidates were timed (and cached), a 5×5 kernel on a 4×4 map too


def test_recovered_scales_stay_float16_numbers_so_the_file_keeps_the_planned_size(digits):
    model, x, _, _ = digits
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, x[:500], target=nc.Target(size=1 / 12), candidates=["gptq"],
                         recover=nc.Recover(epochs=3, lr=3e-3), progress=False)
    assert report.target["recovered"]["best_epoch"] > 0  # the trained scales were kept
    assert saved_bytes(compressed) == report.target["reached"]["bytes"] <= float32_bytes(model) / 12
