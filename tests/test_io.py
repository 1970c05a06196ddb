import json

import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet


@pytest.fixture
def saved(tmp_path):
    model = SmallNet()
    report = nc.compress(model, torch.randn(8, 3, 8, 8), rank={"conv2": 3, "fc1": 4}, progress=False)
    return nc.save(model, tmp_path / "out", report), model


def test_round_trip_is_exact_and_files_hold_no_pickle(saved):
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors", "report.json"]
    layers = json.loads((path / "manifest.json").read_text())["layers"]
    assert layers["conv2"]["type"] == "LowRankConv2d" and layers["conv2"]["rank"] == 3
    assert layers["fc1"] == {"type": "LowRankLinear", "in_features": 192, "out_features": 40, "rank": 4, "bias": True}
    assert layers["fc2"]["type"] == "Linear"
    fresh = nc.load(SmallNet(), path)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh(x), model(x))


def test_saving_again_replaces_only_its_own_files(saved, tmp_path):
    path, model = saved
    nc.save(nn.Linear(2, 2), path)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors"]  # the old report went
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old copies left behind


def test_failed_save_leaves_nothing(tmp_path):
    class Unsaveable(nn.Module):
        def state_dict(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        nc.save(Unsaveable(), tmp_path / "a" / "b" / "out")
    assert list(tmp_path.iterdir()) == []


_HEAD = '{"format": "netcompress.manifest", "version": 2, "layers": '


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("{not json", "is corrupt: not valid JSON"),
        ('{"format": "something-else", "version": 2, "layers": {}}', "is not a netcompress manifest"),
        ('{"format": "netcompress.manifest", "version": 99, "layers": {}}', "has version 99"),
        (_HEAD + "[]}", "'layers' must be an object"),
        (_HEAD + '{"fc1": {"type": "os.system"}}}', "layer 'fc1'.*unknown layer type"),
        (_HEAD + '{"fc1": {"type": "LowRankLinear", "in_features": 192, "out_features": 40, "rank": -2, "bias": true}}}',
         "layer 'fc1'.*field 'rank' must be an integer"),
        (_HEAD + '{"fc1": {"type": "Linear", "in_features": 99999999, "out_features": 40, "bias": true}}}',
         "field 'in_features' is 99999999, but this model's layer has 192"),
        (_HEAD + '{"fc1": {"type": "QuantizedLinear", "in_features": 192, "out_features": 40, "levels": 1000, '
                 '"group_size": 1, "bias": true, "masked": false}}}', "field 'levels' must be at most 256"),
        (_HEAD + '{"fc9": {"type": "Linear", "in_features": 2, "out_features": 2, "bias": true}}}',
         "layer 'fc9', which this model does not have"),
    ],
)
def test_corrupt_or_foreign_manifest_is_refused(saved, manifest, message):
    path, _ = saved
    (path / "manifest.json").write_text(manifest)
    with pytest.raises(ValueError, match=message):
        nc.load(SmallNet(), path)


def test_weights_that_do_not_fit_are_refused(saved):
    path, _ = saved
    (path / "manifest.json").write_text(_HEAD + "{}}")  # keeps the plain architecture
    with pytest.raises(ValueError, match="does not fit the model|does not match the model"):
        nc.load(SmallNet(), path)
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        nc.load(SmallNet(), path)


def test_a_model_of_another_architecture_is_refused_and_left_as_it_was(saved):
    path, _ = saved
    fresh = _Wider()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer 'fc2' was Linear\(40→10\) there and is Linear\(40→11\) here"):
        nc.load(fresh, path)
    assert type(fresh.fc1) is nn.Linear and fresh.state_dict().keys() == before.keys()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())


class _Wider(SmallNet):
    def __init__(self):
        super().__init__()
        self.fc2 = nn.Linear(40, 11)


def test_directory_not_written_by_netcompress(tmp_path):
    with pytest.raises(ValueError, match="has no manifest.json"):
        nc.load(SmallNet(), tmp_path)
    with pytest.raises(ValueError, match="holds no report.json"):
        nc.read_report(tmp_path)


def test_written_files_get_the_usual_permissions(saved, tmp_path):
    import os
    import stat

    path, model = saved
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask
    nc.save_compressed(model, tmp_path / "m.ncz")
    assert stat.S_IMODE((tmp_path / "m.ncz").stat().st_mode) == 0o666 & ~mask


def test_a_report_of_another_version_is_refused():
    report = nc.Report([])
    data = report.to_dict()
    assert nc.Report.from_dict(data).rows == []
    with pytest.raises(ValueError, match="report has version 7"):
        nc.Report.from_dict({**data, "version": 7})


def test_a_forged_low_rank_rank_is_refused_before_allocation():
    from netcompress._core.description import build

    entry = {"type": "LowRankLinear", "in_features": 2**24, "out_features": 1, "rank": 2**24, "bias": True}
    with pytest.raises(ValueError, match="field 'rank' 16777216 exceeds min\\(out, in\\) = 1"):
        build(entry, "forged")
    conv = {"type": "LowRankConv2d", "in_channels": 4, "out_channels": 8, "kernel_size": [3, 3], "stride": [1, 1],
            "padding": [0, 0], "dilation": [1, 1], "rank": 37, "bias": False}
    with pytest.raises(ValueError, match="exceeds min\\(out, in\\) = 8"):
        build(conv, "forged")
