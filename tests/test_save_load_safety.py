"""save never clobbers a user's files; load checks the architecture and is all or nothing (issue 8, items 1, 6, 7)."""

import json
import os

import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet
from netcompress.storage.io import check_save_target


def _tree(folder):
    """Every entry under ``folder`` with its bytes, file modification time and mode."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            full = os.path.join(root, name)
            stat = os.stat(full)
            if os.path.isfile(full):
                found[os.path.relpath(full, folder)] = (open(full, "rb").read(), stat.st_mtime_ns, stat.st_mode)
            else:  # a folder's own mtime changes when a temporary file comes and goes in it
                found[os.path.relpath(full, folder)] = (None, None, stat.st_mode)
    return found


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _unchanged(model, before):
    state, types = before
    now = model.state_dict()
    return ([type(m) for m in model.modules()] == types and now.keys() == state.keys()
            and all(torch.equal(now[k], v) and now[k].dtype == v.dtype for k, v in state.items()))


@pytest.fixture
def compressed():
    model = SmallNet()
    report = nc.compress(model, torch.randn(8, 3, 8, 8), rank={"conv2": 3, "fc1": 4}, progress=False)
    return model, report


def test_a_users_file_in_a_previous_output_survives_a_new_save(compressed, tmp_path):
    model, report = compressed
    out = nc.save(model, tmp_path / "out", report)
    (out / "train.py").write_text("print('mine')\n")
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "weights.bin").write_bytes(b"keep")
    nc.save(model, out, report)
    assert (out / "train.py").read_text() == "print('mine')\n"
    assert (tmp_path / ".out.old" / "weights.bin").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]


def test_a_foreign_directory_is_refused_byte_identical(compressed, tmp_path):
    model, report = compressed
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text("print('mine')\n")
    (folder / "model.safetensors").write_bytes(b"the user's own weights")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"project is a non-empty directory that netcompress did not write.*--force"):
        nc.save(model, folder, report)
    assert _tree(tmp_path) == before


def test_overwrite_replaces_only_netcompress_files(compressed, tmp_path):
    model, report = compressed
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text("print('mine')\n")
    (folder / "report.json").write_text("{}")
    nc.save(model, folder, None, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.safetensors", "report.json",
                                                        "train.py"]
    assert (folder / "report.json").read_text() == "{}"  # not written by netcompress, so kept even without a report
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(nc.load(SmallNet(), folder)(x), model(x))


def test_a_file_in_place_of_the_directory_is_refused(compressed, tmp_path):
    model, _ = compressed
    (tmp_path / "out").write_text("a file")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        nc.save(model, tmp_path / "out")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").mkdir()
    with pytest.raises(ValueError, match="manifest.json exists and is not a file"):
        check_save_target(tmp_path / "d", overwrite=True)


def test_a_save_that_fails_leaves_an_earlier_output_byte_identical(compressed, tmp_path, monkeypatch):
    model, report = compressed
    out = nc.save(model, tmp_path / "out", report)
    before = _tree(tmp_path)

    def disk_full(state, path, metadata=None):
        open(path, "wb").write(b"half")  # a partial write into the temporary file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("netcompress.storage.io.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        nc.save(model, out)
    assert _tree(tmp_path) == before
    with pytest.raises(OSError, match="No space left"):
        nc.save(model, tmp_path / "new" / "deeper")
    assert _tree(tmp_path) == before  # the folders it made are gone too


def test_an_interrupted_save_is_caught_by_the_weights_checksum(compressed, tmp_path):
    model, report = compressed
    out = nc.save(model, tmp_path / "out", report)
    other = tmp_path / "other"
    nc.save(model, other)
    with torch.no_grad():
        model.fc2.bias.add_(1)
    nc.save(model, other)
    # The weights of the second save under the manifest of the first: what a crash between renames leaves.
    os.replace(other / "model.safetensors", out / "model.safetensors")
    fresh = SmallNet()
    before = _state(fresh)
    with pytest.raises(ValueError, match="is not the file .* was written with"):
        nc.load(fresh, out)
    assert _unchanged(fresh, before)


def test_load_into_another_architecture_names_the_first_layer_and_changes_nothing(compressed, tmp_path):
    model, _ = compressed
    out = nc.save(model, tmp_path / "out")

    class Renamed(SmallNet):
        def __init__(self):
            super().__init__()
            self.head = self.fc2
            del self.fc2

    class Extra(SmallNet):
        def __init__(self):
            super().__init__()
            self.fc3 = nn.Linear(10, 10)

    class Kernel(SmallNet):
        def __init__(self):
            super().__init__()
            self.conv2 = nn.Conv2d(8, 12, 5, stride=2, padding=2)

    for fresh, message in [
        (Renamed(), r"this model's layer 'head' \(Linear\(40→10\)\) is not in it"),
        (Extra(), r"this model's layer 'fc3'"),
        (Kernel(), r"layer 'conv2' was Conv2d\(8→12, 3×3\) there and is Conv2d\(8→12, 5×5\) here"),
        (nn.Sequential(nn.Linear(3, 4)), r"layer '0'"),
    ]:
        before = _state(fresh)
        with pytest.raises(ValueError, match=message):
            nc.load(fresh, out)
        assert _unchanged(fresh, before)


def test_load_undoes_the_rebuilt_layers_when_the_weights_do_not_fit(compressed, tmp_path):
    model, _ = compressed
    out = nc.save(model, tmp_path / "out")
    record = json.loads((out / "manifest.json").read_text())
    record["layers"]["fc2"]["bias"] = False  # still a valid layer, but the weights hold its bias
    record.pop("weights_sha256")
    (out / "manifest.json").write_text(json.dumps(record))
    fresh = SmallNet()
    before = _state(fresh)
    with pytest.raises(ValueError, match="does not match the model.*unexpected: \\['fc2.bias'\\]"):
        nc.load(fresh, out)
    assert _unchanged(fresh, before)


@pytest.mark.parametrize("method, settings", [
    ("dalr", {"rank": {"conv2": 3, "fc1": 4}}),
    ("kmeans", {"bits": 3}),
    ("magnitude", {"sparsity": 0.5}),
])
def test_bfloat16_models_stay_bfloat16_after_load_and_run(tmp_path, method, settings):
    model = SmallNet()
    x = torch.randn(8, 3, 8, 8)
    nc.compress(model, x, method=method, progress=False, **settings)
    model = model.to(torch.bfloat16)
    out = nc.save(model, tmp_path / "out")
    fresh = nc.load(SmallNet().to(torch.bfloat16), out)
    floating = [t.dtype for t in fresh.state_dict().values() if t.is_floating_point()]
    assert floating and set(floating) == {torch.bfloat16}
    xb = x.to(torch.bfloat16)
    assert torch.equal(fresh(xb), model(xb))


def test_channel_pruned_models_load_into_the_original_and_a_resave_records_it_exactly(tmp_path):
    torch.manual_seed(0)
    model = SmallNet()
    x = torch.randn(16, 3, 8, 8)
    nc.compress(model, x, method="channel", sparsity=0.5, layers=["fc1"], progress=False)
    assert model.fc1.out_features < 40
    out = nc.save(model, tmp_path / "out")
    # compress records each replaced layer's original, so even a pruned plain layer is exact
    assert json.loads((out / "manifest.json").read_text())["architecture"]["fc1"] == \
        {"kind": "linear", "in": 192, "out": 40, "exact": True}
    loaded = nc.load(SmallNet(), out)
    assert torch.equal(loaded(x), model(x))
    again = nc.save(loaded, tmp_path / "again")
    record = json.loads((again / "manifest.json").read_text())["architecture"]
    assert record["fc1"] == {"kind": "linear", "in": 192, "out": 40, "exact": True}


def test_a_smaller_plain_layer_without_a_pruned_reader_is_another_architecture(tmp_path):
    class Head10(SmallNet):
        pass

    class Head12(SmallNet):
        def __init__(self):
            super().__init__()
            self.fc2 = nn.Linear(40, 12)

    out = nc.save(Head10(), tmp_path / "out")
    with pytest.raises(ValueError, match=r"layer 'fc2' was Linear\(40→10\) there and is Linear\(40→12\) here"):
        nc.load(Head12(), out)


def test_version_2_manifests_still_load(compressed, tmp_path):
    model, _ = compressed
    out = nc.save(model, tmp_path / "out")
    record = json.loads((out / "manifest.json").read_text())
    for key in ("architecture", "files", "weights_sha256"):
        record.pop(key)
    record["version"] = 2
    (out / "manifest.json").write_text(json.dumps(record))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(nc.load(SmallNet(), out)(x), model(x))


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (b"\xff\xfe", "UTF-8"),
])
def test_hostile_manifests_and_reports_end_in_one_sentence(compressed, tmp_path, text, message):
    model, report = compressed
    out = nc.save(model, tmp_path / "out", report)
    for name, call in (("manifest.json", lambda: nc.load(SmallNet(), out)), ("report.json", lambda: nc.read_report(out))):
        original = (out / name).read_bytes()
        (out / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ValueError, match=message):
            call()
        (out / name).write_bytes(original)


def test_a_report_with_malformed_rows_is_refused(compressed, tmp_path):
    model, report = compressed
    out = nc.save(model, tmp_path / "out", report)
    (out / "report.json").write_text('{"format": "netcompress.report", "version": 1, "layers": [1, 2]}')
    with pytest.raises(ValueError, match="is not a netcompress report"):
        nc.read_report(out)
    (out / "report.json").write_text('{"format": "netcompress.report", "version": 1, "layers": []}')
    assert nc.read_report(out).rows == []


def test_a_padded_replacement_is_rebuilt_in_bfloat16_too(tmp_path):
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.ReLU(), nn.Conv2d(8, 8, 3, padding="same"),
                             nn.Flatten(), nn.Linear(8 * 6 * 6, 4))

    model = build()
    x = torch.randn(16, 3, 6, 6)
    nc.compress(model, x, method="dalr", rank={"2": 4}, progress=False)
    assert type(model[2]).__name__ == "Padded"
    model = model.to(torch.bfloat16)
    out = nc.save(model, tmp_path / "out")
    fresh = nc.load(build().to(torch.bfloat16), out)
    xb = x.to(torch.bfloat16)
    assert torch.equal(fresh(xb), model(xb))


def test_an_output_path_inside_a_file_is_refused_before_any_work(tmp_path):
    # Before: `netcompress compress -o afile/sub` compressed, then failed with "Not a directory".
    (tmp_path / "afile").write_text("mine\n")
    with pytest.raises(ValueError, match=r"afile/sub/deeper is inside .*afile, which is not a directory"):
        check_save_target(tmp_path / "afile" / "sub" / "deeper")
    assert (tmp_path / "afile").read_text() == "mine\n"
