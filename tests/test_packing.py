"""nc.save packs sub-byte codes (b bits each) and load unpacks them bit-exactly; report bytes are file bytes."""

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

import netcompress as nc
from netcompress._core.sizes import saved_bytes


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(96, 33), nn.ReLU(), nn.Linear(33, 13), nn.ReLU(), nn.Linear(13, 7))


def _settings(granularity):
    # 33 and 13 inputs: groups of 11 and 13 (odd widths), 7 rows of 13: 91 codes, not a whole number of bytes
    return {"granularity": granularity, "group_size": {"0": 32, "2": 11, "4": 13}} if granularity == "group" \
        else {"granularity": granularity}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_codes_round_trip_bit_exactly_and_take_their_width_on_disk(tmp_path, bits, granularity):
    model = _model()
    report = nc.compress(model, None, method="uniform", bits=bits, symmetric=bits > 2, progress=False,
                         **_settings(granularity))
    nc.save(model, tmp_path / "out", report)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        for name in ("0", "2", "4"):
            stored = f.get_tensor(f"{name}.codes")
            codes = model.get_submodule(name).codes
            assert stored.numel() == -(-codes.numel() * bits // 8)  # ⌈n·b/8⌉ bytes
        on_disk = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert report.saved_bytes == on_disk  # every tensor belongs to a reported layer
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())
    symmetric = bits > 2
    expected = {f"{n}.{leaf}" for n in ("0", "2", "4") for leaf in ("codes",) + (() if symmetric else ("zero_point",))}
    assert set(record["packed"]) == (set() if bits == 8 else expected) | {f"{n}.scale" for n in ("0", "2", "4")}
    assert all(record["packed"][f"{n}.scale"] == {"dtype": "float16"} for n in ("0", "2", "4"))
    fresh = nc.load(_model(), tmp_path / "out")
    for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), key
    x = torch.randn(4, 96)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_a_packing_record_that_does_not_fit_the_layer_is_refused_and_the_model_left_as_it_was(tmp_path):
    model = _model()
    nc.compress(model, None, method="uniform", bits=3, progress=False)
    nc.save(model, tmp_path / "out")
    manifest = tmp_path / "out" / "manifest.json"
    record = json.loads(manifest.read_text())
    for packed, message in [({"2.codes": {"bits": 5, "shape": [13, 33]}}, "must be .* packed bytes"),
                            ({"2.codes": {"bits": 3, "shape": [13, 34]}}, "must give 1 to 7 bits"),
                            ({"0.bias": {"bits": 3, "shape": [33]}}, "not the codes or zero points of a quantized layer"),
                            ([1], "'packed' must be an object")]:
        manifest.write_text(json.dumps({**record, "packed": packed}))
        target = _model()
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(ValueError, match=message):
            nc.load(target, tmp_path / "out")
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
        assert isinstance(target[2], nn.Linear)


def test_a_scale_float16_cannot_hold_is_written_in_float32_and_round_trips(tmp_path):
    model = _model()
    nc.compress(model, None, method="uniform", bits=4, symmetric=False, progress=False)
    with torch.no_grad():  # as two-stage distillation leaves them: trained scales are no float16 numbers
        model[2].scale.mul_(1.0 + 2.0 ** -20)
    nc.save(model, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["packed"]
    assert record["0.scale"] == {"dtype": "float16"} and "2.scale" not in record
    assert record["2.zero_point"] == {"bits": 4, "shape": [13, 1]}
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert f.get_tensor("0.scale").dtype == torch.float16 and f.get_tensor("2.scale").dtype == torch.float32
        assert f.get_tensor("2.zero_point").numel() == -(-13 * 4 // 8)
        on_disk = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert on_disk == sum(saved_bytes(model[i]) for i in (0, 2, 4))
    fresh = nc.load(_model(), tmp_path / "out")
    for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), key
