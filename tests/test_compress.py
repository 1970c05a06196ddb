"""The contract every registered method meets, and the errors of compress()."""

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet


def _data():
    return torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def check_contract(method: str, tmp_path) -> None:
    """A method run with its registered example settings compresses, reports every layer, saves and loads."""
    model = SmallNet()
    original = copy.deepcopy(model)
    x = _data()
    registered = nc.METHODS[method]
    family = registered.family
    report = nc.compress(model, x.split(4), method=method, progress=False, **registered.example)
    if family == "structural":  # units removed: the touched layers shrink, the model still runs
        assert report.params_after < report.params_before
        assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in original.parameters())
    else:
        assert [row.name for row in report.rows] == ["conv1", "conv2", "fc1", "fc2"]
    for row in report.rows if family != "structural" else []:
        module = model.get_submodule(row.name)
        if row.replaced:
            assert type(module) is not type(original.get_submodule(row.name))
            stored = sum(p.numel() for p in module.parameters()) if family == "lowrank" else row.params_after
            assert stored == row.params_after
            assert row.relative_error is not None and 0 <= row.relative_error < 1.5
        else:
            assert type(module) is type(original.get_submodule(row.name))
            assert row.status == "left dense" and row.note, "a layer left dense says why"
    assert model(x).shape == original(x).shape
    nc.save(model, tmp_path / "out", report)
    fresh = SmallNet()
    nc.load(fresh, tmp_path / "out")
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert str(nc.read_report(tmp_path / "out")) == str(report)


@pytest.mark.parametrize("method", sorted(nc.METHODS))
def test_every_method_compresses_saves_and_loads(method, tmp_path):
    check_contract(method, tmp_path)


def test_reported_error_is_the_layer_output_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30))
    original = copy.deepcopy(model)
    x = torch.randn(100, 20) + 0.5
    report = nc.compress(model, x, method="svd-bc", rank=3, progress=False)
    y, yhat = original(x), model(x)
    # every fifth sample is held out (holdout=0.2): the in-sample error is on the others
    held = torch.arange(100) % 5 == 4
    def error(rows):
        return ((y[rows] - yhat[rows]).norm() / y[rows].norm()).item()
    assert report["0"].relative_error == pytest.approx(error(~held), rel=1e-4)
    assert report["0"].heldout_error == pytest.approx(error(held), rel=1e-4)


def test_rank_dict_selects_layers_and_keep_sizes_them():
    model = SmallNet()
    report = nc.compress(model, _data(), rank={"fc1": 5}, progress=False)
    assert [r.name for r in report.rows if r.replaced] == ["fc1"] and model.fc1.rank == 5
    model = SmallNet()
    report = nc.compress(model, _data(), keep=0.25, layers=["re:fc.*"], progress=False)
    for row in report.rows:
        assert row.params_after <= 0.25 * row.params_before or row.status == "not selected"


def test_layer_that_would_not_shrink_is_left_dense_and_reported():
    model = nn.Sequential(nn.Linear(8, 8))
    report = nc.compress(model, torch.randn(20, 8), rank=8, progress=False)
    assert type(model[0]) is nn.Linear
    assert report.rows[0].rank is None and report.rows[0].status == "left dense"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0), "rank 0 for layer 'conv1' must be a positive integer"),
        (dict(rank=100), "layer 'conv1': rank 100 exceeds min\\(out, in\\) = 8"),
        (dict(rank={"conv1": 2, "fc2": 11}), "layer 'fc2': rank 11 exceeds min\\(out, in\\) = 10"),
        (dict(rank={"fc3": 2}), "layer 'fc3' does not exist"),
        (dict(rank=2, layers=["conv1", "nope"]), "layer 'nope' does not exist"),
        (dict(), "exactly one of rank, keep, energy or budget"),
        (dict(rank=2, keep=0.5), "exactly one of rank, keep, energy or budget"),
        (dict(rank=2, method="tucker"), "unknown method 'tucker'"),
        (dict(keep=1.5), "keep must be a fraction"),
        (dict(budget=0.0001), "budget 0.0001 is below"),
    ],
)
def test_bad_arguments_get_one_clear_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nc.compress(SmallNet(), _data(), progress=False, **kwargs)


def test_unknown_setting_and_unsupported_layer():
    with pytest.raises(TypeError, match="method 'svd' does not take lam"):
        nc.compress(SmallNet(), _data(), method="svd", rank=2, lam=0.1, progress=False)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layer '0': a grouped convolution"):
        nc.compress(model, torch.randn(2, 4, 3, 3), rank=1, layers=["0"], progress=False)
    report = nc.compress(model, torch.randn(2, 4, 3, 3), rank=1, progress=False)
    assert report["0"].status == "left dense" and "grouped" in report["0"].note
    with pytest.raises(ValueError, match="layer '1'.*a Flatten"):
        nc.compress(model, torch.randn(2, 4, 3, 3), rank=1, layers=["1"], progress=False)


def test_missing_data_and_missing_statistics():
    with pytest.raises(ValueError, match="method .dalr. needs target data or precomputed stats"):
        nc.compress(SmallNet(), rank=2)
    model = SmallNet()
    stats = nc.collect(model, _data(), layers=["fc1"], progress=False)
    with pytest.raises(ValueError, match="stats hold nothing for layer\\(s\\) fc2"):
        nc.compress(model, stats=stats, rank=2, layers=["fc1", "fc2"])


def test_sweep_equals_single_compressions_and_leaves_the_model():
    model = SmallNet()
    x = _data()
    stats = nc.collect(model, x, progress=False)
    before = copy.deepcopy(model.state_dict())
    for rank, compressed, row in nc.sweep(model, stats, "fc1", [1, 3, 6]):
        single = copy.deepcopy(model)
        nc.compress(single, stats=stats, rank={"fc1": rank}, progress=False)
        torch.testing.assert_close(compressed(x), single(x))
        assert row.rank == rank
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("method, settings", [("uniform", {"bits": 3}), ("magnitude", {"sparsity": 0.5}),
                                              ("kmeans", {"bits": 2})])
def test_grouped_convolutions_report_their_true_output_error(method, settings, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4, padding=1))  # two outputs per input channel
    original = copy.deepcopy(model)
    x = torch.randn(6, 4, 7, 7)
    report = nc.compress(model, x, method=method, holdout=0, progress=False, **settings)
    y, yhat = original(x), model(x)
    assert report.rows[0].relative_error == pytest.approx(((y - yhat).norm() / y.norm()).item(), rel=1e-4)
    nc.save_compressed(model, tmp_path / "m.ncz")
    assert torch.equal(nc.load_compressed(copy.deepcopy(original), tmp_path / "m.ncz")(x), yhat)
