"""A forged manifest in a ``save`` directory: every description checked against the fingerprint and the weights first.

Issue 22: a manifest describing one layer as a 46,000 × 46,000 ``MaskedLinear`` (the real
fingerprint copied) made ``load`` allocate 8.5 GB before any check, and a conv's stride and
padding changed in the manifest loaded silently and changed the outputs.
"""

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet, run_capped


def _unchanged(model, before):
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], v) for k, v in before.items())


@pytest.fixture
def saved(tmp_path):
    model = SmallNet().eval()
    nc.compress(model, torch.randn(16, 3, 8, 8), method="magnitude", sparsity=0.5, progress=False)
    out = nc.save(model, tmp_path / "out")
    return model, out, json.loads((out / "manifest.json").read_text())


def _refused(out, record, message):
    (out / "manifest.json").write_text(json.dumps(record))
    fresh = SmallNet().eval()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        nc.load(fresh, out)
    assert _unchanged(fresh, before) and all(type(m) in (nn.Conv2d, nn.Linear, SmallNet) for m in fresh.modules())


def test_a_huge_layer_behind_the_real_fingerprint_is_refused_before_it_is_built(saved):
    _, out, record = saved
    record["layers"]["fc1"] = {"type": "MaskedLinear", "in_features": 46_000, "out_features": 46_000, "bias": True}
    _refused(out, record, r"layer 'fc1': field 'in_features' is 46000, but this model's layer has 192")


@pytest.mark.parametrize("field, value", [("stride", [1, 1]), ("padding", [0, 0]), ("dilation", [2, 2]),
                                          ("kernel_size", [1, 1]), ("groups", 4)])
def test_a_conv_geometry_changed_in_the_manifest_is_refused(saved, field, value):
    model, out, record = saved
    assert record["layers"]["conv2"][field] != value
    record["layers"]["conv2"][field] = value
    _refused(out, record, rf"layer 'conv2': field '{field}' is")


def test_a_layer_described_as_another_kind_is_refused(saved):
    _, out, record = saved
    record["layers"]["fc1"] = {"type": "MaskedConv2d", "in_channels": 1, "out_channels": 1, "kernel_size": [1, 1],
                               "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1, "bias": True}
    _refused(out, record, r"layer 'fc1': it describes a convolution, but this model's layer is a Linear")


def test_a_rank_within_the_caps_but_not_in_the_weights_is_refused_before_it_is_allocated(tmp_path):
    model = SmallNet().eval()
    nc.compress(model, torch.randn(16, 3, 8, 8), method="cp", rank={"conv2": 4}, progress=False)
    out = nc.save(model, tmp_path / "out")
    record = json.loads((out / "manifest.json").read_text())
    record["layers"]["conv2"]["rank"] = 4_000_000  # 4·10⁶ × (8 + 12 + 6) floats: + a bias: 416 MB, had it been built
    _refused(out, record, r"layer 'conv2' describes 104,000,012 elements, but .*model.safetensors holds 116 for it")


def test_a_pruned_width_still_loads_and_computes_what_was_saved(tmp_path):
    model = SmallNet().eval()
    x = torch.randn(16, 3, 8, 8)
    nc.compress(model, x, method="channel", sparsity={"conv1": 0.5}, progress=False)
    out = nc.save(model, tmp_path / "out")
    fresh = nc.load(SmallNet().eval(), out)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


FUZZ = textwrap.dedent(r"""
    import copy, json, random, sys
    import torch
    from torch import nn
    import netcompress as nc

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.BatchNorm2d(8)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc1 = nn.Linear(8 * 4 * 4, 32)
            self.fc2 = nn.Linear(32, 16)
            self.fc3 = nn.Linear(16, 10)

        def forward(self, x):
            x = self.depthwise(torch.relu(self.norm(self.conv(x))))
            x = torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)))
            return self.fc3(torch.relu(self.fc2(x)))

    x = torch.randn(8, 3, 8, 8)
    model = Net().eval()
    nc.compress(model, x, method="dalr", rank={"fc1": 6}, progress=False)
    nc.compress(model, x, method="magnitude", sparsity={"conv": 0.5}, progress=False)
    nc.compress(model, x, method="uniform", bits=4, granularity="group", group_size=8, layers=["fc2"], progress=False)
    with torch.no_grad():
        expected = model(x)
    out = nc.save(model, __PATH__)
    RECORD = json.loads((out / "manifest.json").read_text())
    VALUES = [None, True, False, -1, 0, 1, 3, 2**31, 2**63, 10**30, 1e308, -0.5, "1", "", [], [0], [2**40, 1],
              [1, 1], [3, 3], {}, {"type": "Linear"}, "Linear", "MaskedLinear", "QuantizedLinear", "LowRankLinear"]

    def pick(rng):
        return copy.deepcopy(rng.choice(VALUES))

    def mutate(record, rng):
        record = copy.deepcopy(record)
        for _ in range(rng.choice([1, 1, 2, 3])):
            section = rng.choice(["layers", "layers", "layers", "architecture", "packed", "top"])
            if section == "top":
                record[rng.choice(["version", "layers", "architecture", "packed", "format"])] = pick(rng)
                continue
            table = record.get(section)
            if not isinstance(table, dict) or not table:
                continue
            name = rng.choice(sorted(table))
            entry = table[name]
            if not isinstance(entry, dict) or rng.random() < 0.1:
                table[name] = pick(rng)
            elif entry and rng.random() < 0.15:
                del entry[rng.choice(sorted(entry))]
            elif entry:
                key = rng.choice(sorted(entry))
                value = entry[key]
                if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
                    entry[key] = value * rng.choice([2, 10, 1000, 10**6]) + rng.choice([0, 1])
                else:
                    entry[key] = pick(rng)
        return record

    rng = random.Random(__SEED__)
    counts = {"refused": 0, "loaded": 0}
    for trial in range(__TRIALS__):
        (out / "manifest.json").write_text(json.dumps(mutate(RECORD, rng)))
        fresh = Net().eval()
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        try:
            nc.load(fresh, out)
        except ValueError:
            counts["refused"] += 1
            now = fresh.state_dict()
            if now.keys() != before.keys() or not all(torch.equal(now[k], v) for k, v in before.items()):
                sys.exit(f"trial {trial}: refused, but the model was changed")
            continue
        except BaseException as error:
            import traceback
            sys.exit(f"trial {trial}: {type(error).__name__}: {str(error)[:200]}\n" + traceback.format_exc()[-1500:])
        counts["loaded"] += 1
        with torch.no_grad():
            if not torch.equal(fresh(x), expected):  # what loads must be what was saved
                sys.exit(f"trial {trial}: a forged manifest loaded and changed the outputs")
    print(json.dumps(counts))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS caps memory reliably only on Linux")
def test_fuzzed_manifests_end_in_one_sentence_or_the_saved_model_under_a_memory_cap(tmp_path):
    done = run_capped(FUZZ, timeout=240, path=str(tmp_path / "out"), trials=400, seed=0)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["refused"] > 300 and counts["refused"] + counts["loaded"] == 400


def test_a_frozen_layer_stays_frozen_through_save_and_load(tmp_path):
    x = torch.randn(16, 3, 8, 8)
    model = SmallNet().eval()
    for p in model.conv2.parameters():
        p.requires_grad_(False)
    model.fc1.weight.requires_grad_(False)
    nc.compress(model, x, method="dalr", rank={"conv2": 3, "fc1": 5}, progress=False)
    out = nc.save(model, tmp_path / "out")
    fresh = SmallNet().eval()
    for p in fresh.conv2.parameters():
        p.requires_grad_(False)
    fresh.fc1.weight.requires_grad_(False)
    nc.load(fresh, out)
    flags = {name: p.requires_grad for name, p in fresh.named_parameters()}
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert not any(v for k, v in flags.items() if k.startswith("conv2.")) and flags["fc1.up.bias"]
    assert not flags["fc1.down.weight"] and not flags["fc1.up.weight"] and flags["fc2.weight"]


@pytest.mark.parametrize("field, value, message", [
    ("shape", 7, r"field 'shape' must be a list of at most 8 whole numbers, got 7"),
    ("params_after", [1], r"field 'params_after' must be a whole number, got \[1\]"),
    ("params_before", 2**70, r"field 'params_before' must be a whole number"),
    ("relative_error", "0.1", r"field 'relative_error' must be a finite number or null, got '0.1'"),
    ("name", None, r"field 'name' must be text"),
])
def test_a_forged_report_field_is_one_sentence_naming_the_file_row_and_field(tmp_path, field, value, message):
    model = SmallNet().eval()
    report = nc.compress(model, torch.randn(16, 3, 8, 8), method="uniform", bits=4, progress=False)
    out = nc.save(model, tmp_path / "out", report)
    record = json.loads((out / "report.json").read_text())
    record["layers"][0][field] = value
    (out / "report.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"report.json cannot be read as a report \(the report's row 0 \([^)]*\): " + message):
        nc.read_report(out)


def test_fuzzed_reports_read_as_reports_or_one_sentence(tmp_path):
    import copy
    import random

    model = SmallNet().eval()
    out = nc.save(model, tmp_path / "out",
                  nc.compress(model, torch.randn(16, 3, 8, 8), method="uniform", bits=4, progress=False))
    record = json.loads((out / "report.json").read_text())
    values = [None, True, -1, 0, 2**70, 1e308, "x", "", [], {}, [1, 2], {"a": 1}, 0.5]
    rng = random.Random(0)
    for _ in range(300):
        forged = copy.deepcopy(record)
        rows = forged["layers"]
        if rng.random() < 0.2:
            forged[rng.choice(sorted(forged))] = copy.deepcopy(rng.choice(values))
        elif rng.random() < 0.1:
            rows[rng.randrange(len(rows))] = copy.deepcopy(rng.choice(values))
        else:
            row = rows[rng.randrange(len(rows))]
            row[rng.choice(sorted(row))] = copy.deepcopy(rng.choice(values))
        (out / "report.json").write_text(json.dumps(forged))
        try:
            read = nc.read_report(out)
        except ValueError:
            continue
        assert str(read) and read.to_json() and read.params_before >= 0  # what reads is a usable report
