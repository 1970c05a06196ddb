"""Settings objects and replayable Reports: a Report's JSON compresses a fresh copy to the same weights.

For every registered method (with its registered example settings, and with the sizings that spread
over layers), ``compress`` → ``report.to_json()`` → ``nc.replay`` on a fresh copy of the original
gives state dicts equal to the bit; so does a plan that mixes methods, and sequential mode.
"""

import copy
import json
import warnings

import pytest
import torch

import netcompress as nc
from conftest import SmallNet
from netcompress.registry import build_settings, settings_from_json

pytestmark = pytest.mark.usefixtures("one_thread")


def _data():
    return torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _replays(settings, **options):
    """compress a SmallNet, replay its Report's JSON on a fresh copy; both state dicts and reports."""
    original = SmallNet()
    model, fresh = copy.deepcopy(original), copy.deepcopy(original)
    x = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples per layer: the held-out column is what matters
        report = nc.compress(model, x, settings, progress=False, **options)
        text = report.to_json()
        again = nc.replay(text, fresh, x, progress=False)
    # the rows of the layers the settings considered come back the same (the others: not selected, or left
    # dense for a reason the replay does not meet, as it names only the layers to compress)
    replayed = {row["name"]: row for row in json.loads(again.to_json())["layers"]}
    for row in json.loads(text)["layers"]:
        if row["settings"] is not None:
            assert replayed[row["name"]] == row
    first, second = model.state_dict(), fresh.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    return report


@pytest.mark.parametrize("method", sorted(nc.METHODS))
def test_every_method_replays_to_the_same_weights(method):
    chosen = nc.METHODS[method]
    report = _replays(build_settings(method, chosen.example))
    assert any(row.replaced for row in report.rows)
    for row in report.rows:
        if row.settings is not None:
            assert settings_from_json(row.settings) == build_settings(method, chosen.example)


@pytest.mark.parametrize("settings", [nc.DALR(budget=0.5), nc.SVD(energy=0.9), nc.DALRBC(keep=0.4),
                                      nc.Magnitude(sparsity=0.7, scope="global"),
                                      nc.CP(budget=0.6), nc.Channel(sparsity={"conv1": 0.5, "conv2": 0.25})],
                         ids=str)
def test_sizings_spread_over_layers_replay_to_the_same_weights(settings):
    _replays(settings)


def test_a_plan_of_several_methods_replays_to_the_same_weights():
    plan = {"re:conv.*": nc.Uniform(bits=4), "fc1": nc.DALR(keep=0.5), "_default": nc.GPTQ(bits=3)}
    report = _replays(plan)
    assert {row.name: row.method for row in report.rows if row.replaced} == {
        "conv1": "uniform", "conv2": "uniform", "fc1": "dalr", "fc2": "gptq"}


def test_sequential_mode_replays_to_the_same_weights():
    _replays({"fc1": nc.GPTQ(bits=3), "_default": nc.Magnitude(sparsity=0.5)}, sequential=True)


def test_settings_are_frozen_checked_and_round_trip_through_json():
    settings = nc.GPTQ(bits=4, group_size=8)
    with pytest.raises(AttributeError):
        settings.bits = 8
    assert settings_from_json(json.loads(json.dumps(settings.to_json()))) == settings
    assert str(settings) == "gptq(bits=4, group_size=8)"
    with pytest.raises(ValueError, match="bits must be an integer"):
        nc.GPTQ(bits="four")
    with pytest.raises(ValueError, match="unknown method 'os.system'"):
        settings_from_json({"method": "os.system", "bits": 4})
    with pytest.raises(TypeError, match="method 'gptq' does not take rank"):
        settings_from_json({"method": "gptq", "bits": 4, "rank": 2})
    with pytest.raises(ValueError, match="needs exactly one of rank, keep, energy or budget"):
        nc.DALR(rank=4, budget=0.5)


def test_a_plan_refuses_a_layer_claimed_twice_and_keys_that_match_nothing():
    model, x = SmallNet(), _data()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="layer 'fc1' is claimed by both 're:fc.*' and 'fc1'"):
        nc.compress(model, x, {"re:fc.*": nc.Uniform(bits=8), "fc1": nc.DALR(rank=2)}, progress=False)
    with pytest.raises(ValueError, match="pattern 're:nothing.*' matches no layer"):
        nc.compress(model, x, {"re:nothing.*": nc.Uniform(bits=8)}, progress=False)
    with pytest.raises(ValueError, match="give a settings object"):
        nc.compress(model, x, {"fc1": "gptq"}, progress=False)
    with pytest.raises(ValueError, match="not both"):
        nc.compress(model, x, nc.Uniform(bits=8), method="uniform", progress=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_a_plan_equals_its_methods_applied_one_call_at_a_time():
    """One statistics pass for every claim: each row as the same method alone on the original gives it."""
    original, x = SmallNet(), _data()
    plan = {"re:conv.*": nc.Magnitude(sparsity=0.5), "fc1": nc.DALR(rank=3), "fc2": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed = nc.compress(copy.deepcopy(original), x, plan, progress=False)
        alone = {}
        for key, settings in plan.items():
            if settings is not None:
                alone.update({r.name: r for r in nc.compress(copy.deepcopy(original), x, settings, layers=[key],
                                                             progress=False).rows if r.replaced})
    assert mixed["fc2"].status == "not selected"
    assert {r.name: r for r in mixed.rows if r.replaced} == alone
