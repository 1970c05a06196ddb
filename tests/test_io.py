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
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["replacements"] == {
        "conv2": {"type": "LowRankConv2d", "rank": 3, "bias": True},
        "fc1": {"type": "LowRankLinear", "rank": 4, "bias": True},
    }
    fresh = nc.load(SmallNet(), path)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh(x), model(x))


def test_saving_again_replaces_the_directory_whole(saved, tmp_path):
    path, model = saved
    nc.save(nn.Linear(2, 2), path)
    assert not (path / "report.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old copies left behind


def test_failed_save_leaves_nothing(tmp_path):
    class Unsaveable(nn.Module):
        def state_dict(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        nc.save(Unsaveable(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("{not json", "is corrupt: not valid JSON"),
        ('{"format": "something-else", "version": 1, "replacements": {}}', "is not a netcompress manifest"),
        ('{"format": "netcompress.manifest", "version": 99, "replacements": {}}', "has version 99"),
        ('{"format": "netcompress.manifest", "version": 1, "replacements": []}', "'replacements' must be an object"),
        ('{"format": "netcompress.manifest", "version": 1, "replacements": {"fc1": {"type": "Evil", "rank": 1, "bias": true}}}',
         "unknown type"),
        ('{"format": "netcompress.manifest", "version": 1, "replacements": {"fc1": {"type": "LowRankLinear", "rank": -2, "bias": true}}}',
         "positive integer 'rank'"),
        ('{"format": "netcompress.manifest", "version": 1, "replacements": {"fc9": {"type": "LowRankLinear", "rank": 2, "bias": true}}}',
         "layer 'fc9', which this model does not have"),
        ('{"format": "netcompress.manifest", "version": 1, "replacements": {"conv1": {"type": "LowRankLinear", "rank": 2, "bias": true}}}',
         "the model's layer is a Conv2d"),
    ],
)
def test_corrupt_or_foreign_manifest_is_refused(saved, manifest, message):
    path, _ = saved
    (path / "manifest.json").write_text(manifest)
    with pytest.raises(ValueError, match=message):
        nc.load(SmallNet(), path)


def test_corrupt_weights_and_wrong_architecture(saved):
    path, _ = saved
    with pytest.raises(ValueError, match="does not match the model|does not fit the model"):
        nc.load(_Wider(), path)
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        nc.load(SmallNet(), path)


class _Wider(SmallNet):
    def __init__(self):
        super().__init__()
        self.fc2 = nn.Linear(40, 11)


def test_directory_not_written_by_netcompress(tmp_path):
    with pytest.raises(ValueError, match="has no manifest.json"):
        nc.load(SmallNet(), tmp_path)
    with pytest.raises(ValueError, match="holds no report.json"):
        nc.read_report(tmp_path)
