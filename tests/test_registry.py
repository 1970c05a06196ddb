"""A method added in one place (a settings class and a function, with @register) reaches compress, the CLI,
recipes and the contract."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import netcompress as nc
from conftest import SmallNet
from netcompress.cli.main import main
from netcompress.prune.modules import PRUNABLE, masked_like
from test_compress import _data, check_contract


def _prune_weakest_rows(layer: nn.Module, moments=None, *, fraction: float) -> nn.Module:
    """Toy method: zero the output rows (units) of smallest L2 norm."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    new = masked_like(layer)
    norms = layer.weight.detach().flatten(1).norm(dim=1)
    weakest = norms.argsort()[: int(fraction * len(norms))]
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        new.bias.copy_(layer.bias)
        new.mask[weakest] = False
        new.weight[weakest] = 0
    return new


@dataclass(frozen=True, kw_only=True)
class WeakestRows(nc.Settings):
    """Toy settings: the fraction of output rows to zero."""

    fraction: float


@dataclass(frozen=True, kw_only=True)
class NoSettings(nc.Settings):
    """A method that takes nothing."""


@pytest.fixture
def toy_method():
    nc.register("weakest-rows", WeakestRows, family="layer", accepts=PRUNABLE, example={"fraction": 0.5})(
        _prune_weakest_rows)
    yield "weakest-rows"
    nc.unregister("weakest-rows")


def test_a_registered_method_meets_the_contract(toy_method, tmp_path):
    assert nc.METHODS[toy_method].settings == ("fraction",)
    check_contract(toy_method, tmp_path)
    model = SmallNet()
    report = nc.compress(model, _data(), method=toy_method, fraction=0.25, progress=False)
    fc1 = model.fc1
    assert int((~fc1.mask).all(dim=1).sum()) == int(0.25 * fc1.out_features)
    assert report["fc1"].params_after == int(fc1.mask.sum()) + fc1.bias.numel()


def test_its_settings_are_checked_from_its_class(toy_method):
    model = SmallNet()
    with pytest.raises(ValueError, match="fraction must be a number, got 'half'"):
        nc.compress(model, _data(), method=toy_method, fraction="half", progress=False)
    with pytest.raises(TypeError, match="does not take bits"):
        nc.compress(model, _data(), method=toy_method, bits=4, progress=False)
    with pytest.raises(ValueError, match="step 1: fraction must be a number"):
        nc.run_pipeline(model, [{"method": toy_method, "fraction": "half"}], data=_data())


def test_it_runs_in_a_recipe(toy_method):
    model = SmallNet()
    steps = [{"method": toy_method, "fraction": 0.5}, {"method": "uniform", "bits": 8}]
    reports = nc.run_pipeline(model, steps, data=_data(), progress=False)
    assert [r.rows[0].method for r in reports] == [toy_method, "uniform"]
    assert int((~model.fc1.mask).all(dim=1).sum()) == model.fc1.out_features // 2


def test_it_runs_from_the_command_line(toy_method, tmp_path, monkeypatch):
    (tmp_path / "toy_factory.py").write_text("from conftest import SmallNet\n\ndef build():\n    return SmallNet()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    save_file(SmallNet().state_dict(), tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", _data().numpy())
    code = main(["compress", "--allow-degraded", "--model", "toy_factory:build", "--weights", str(tmp_path / "w.safetensors"),
                 "--data", str(tmp_path / "x.npy"), "--method", toy_method, "--setting", "fraction=0.5",
                 "-o", str(tmp_path / "out")])
    assert code == 0
    assert {r.method for r in nc.read_report(tmp_path / "out").rows if r.replaced} == {toy_method}


def test_its_settings_object_is_the_same_request(toy_method):
    """nc.compress(model, data, WeakestRows(fraction=...)) and the method= sugar build the same object."""
    one, two = SmallNet(), SmallNet()
    two.load_state_dict(one.state_dict())
    x = _data()
    first = nc.compress(one, x, WeakestRows(fraction=0.25), progress=False)
    second = nc.compress(two, x, method=toy_method, fraction=0.25, progress=False)
    assert first.to_dict() == second.to_dict()
    assert first["fc1"].settings == {"method": toy_method, "fraction": 0.25}
    with pytest.raises(ValueError, match="fraction must be a number, got 'half'"):
        WeakestRows(fraction="half")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'dalr' is already registered"):
        nc.register("dalr", WeakestRows, family="lowrank")(_prune_weakest_rows)
    assert nc.METHODS["dalr"].fn is nc.lowrank.dalr
    with pytest.raises(ValueError, match="no method named 'nothing'"):
        nc.unregister("nothing")


class _HalfLinear(nn.Module):
    """Toy layer: weights kept in float16, computed in the input's dtype."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("stored", torch.zeros(out_features, in_features, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x):
        return nn.functional.linear(x, self.stored.to(x.dtype), self.bias)

    def effective_weight(self):  # what the report's error column compares with the original weight
        return self.stored.double(), self.bias

    def describe(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features}

    @classmethod
    def from_description(cls, entry):
        return cls(*entry.linear_size())


def _to_half(layer: nn.Module, moments=None) -> nn.Module:
    new = _HalfLinear(layer.in_features, layer.out_features)
    with torch.no_grad():
        new.stored.copy_(layer.weight)
        new.bias.copy_(layer.bias)
    return new


def test_a_new_layer_class_saves_and_loads_once_it_is_describable(tmp_path):
    from netcompress._core.description import _KNOWN, describable

    nc.register("half", NoSettings, family="layer", accepts=(nn.Linear,))(_to_half)
    try:
        model, x = SmallNet(), _data()
        report = nc.compress(model, x, method="half", progress=False)
        with pytest.raises(ValueError, match="layer 'fc1' is a _HalfLinear.*describable"):
            nc.save(model, tmp_path / "refused", report)  # not on the allow-list yet
        assert not (tmp_path / "refused").exists()  # refused before anything is written
        describable(_HalfLinear)
        nc.save(model, tmp_path / "out", report)
        fresh = nc.load(SmallNet(), tmp_path / "out")
        assert isinstance(fresh.fc1, _HalfLinear)
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    finally:
        nc.unregister("half")
        _KNOWN.pop("_HalfLinear", None)


def test_a_per_layer_setting_that_misses_a_selected_layer_is_an_error():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="symmetric gives no value for layer '4'"):
        nc.compress(model, torch.randn(16, 8), method="uniform", bits=4, symmetric={"0": True, "2": True},
                    layers="re:.*", progress=False)
    with pytest.raises(ValueError, match="one sparsity and one norm for all layers"):
        nc.compress(model, torch.randn(16, 8), method="magnitude", sparsity=0.5, norm={"0": 1, "2": 2, "4": 1},
                    scope="global", progress=False)


class _FailsAtForward(nn.Linear):
    def forward(self, x):
        raise RuntimeError("not implemented")


def _halve_in_place_then_fail(layer, moments, *, sparsity: float = 0.5):
    """A broken plugin: writes into the model's own weight, and its replacement fails at forward."""
    with torch.no_grad():
        layer.weight.mul_(0.5)
    new = _FailsAtForward(layer.in_features, layer.out_features)
    new.load_state_dict(layer.state_dict())
    return new


def test_a_plugin_that_writes_into_the_model_and_fails_is_reported_not_hidden():
    """compress copies no weights to undo (it swaps modules); a write in place is caught by version counters."""
    @dataclass(frozen=True, kw_only=True)
    class Halving(nc.Settings):
        sparsity: float = 0.5

    nc.register("broken-in-place", Halving, family="layer", accepts=(nn.Linear,), example={"sparsity": 0.5})(
        _halve_in_place_then_fail)
    try:
        model = SmallNet()
        with pytest.raises(RuntimeError, match="could not be put back: Linear.weight was written in place"):
            nc.compress(model, _data(), method="broken-in-place", progress=False)
        assert type(model.fc1) is nn.Linear  # the module tree is restored all the same
    finally:
        nc.unregister("broken-in-place")
