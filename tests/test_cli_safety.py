"""The command line with real files and bad input: one sentence, exit 2, nothing written (issue 8, items 1, 17)."""

import inspect
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import netcompress as nc
from netcompress.cli.main import main

FACTORY = "from torch import nn\n\n" \
          "def build():\n    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), " \
          "nn.Linear(6 * 8 * 8, 12), nn.ReLU(), nn.Linear(12, 5))\n"


def _model():
    torch.manual_seed(0)
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 12), nn.ReLU(),
                         nn.Linear(12, 5))


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder as a user has it: a factory module, weights, data; the current directory, not on sys.path."""
    (tmp_path / "mynet.py").write_text(FACTORY)
    save_file(_model().state_dict(), tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in [m for m in sys.modules if m == "mynet"]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


def _run(*args):
    return main(["compress", "--allow-degraded", "--model", "mynet:build", "--weights", "w.safetensors", "--data", "x.npy", *args])


def _error(capsys):
    """The one error sentence on stderr (warnings are one line each, before it)."""
    lines = capsys.readouterr().err.splitlines(keepends=True)
    assert all(line.startswith("netcompress: warning: ") for line in lines[:-1]), lines
    err = lines[-1] if lines else ""
    assert err.startswith("netcompress: error: ") and "Traceback" not in err, err
    return err


def _tree(folder):
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, files in os.walk(folder) for name in files}


def test_python_dash_m_and_a_factory_from_the_current_directory_without_pythonpath(work):
    # -P: Python itself puts neither the current directory nor the script's on sys.path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" or "snap" in v}
    result = subprocess.run([sys.executable, "-P", "-m", "netcompress", "compress", "--allow-degraded", "--model", "mynet:build",
                             "--weights", "w.safetensors", "--data", "x.npy", "--rank", "3", "-o", "out"],
                            cwd=work, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (work / "out" / "model.safetensors").is_file()
    result = subprocess.run([sys.executable, "-m", "netcompress", "--help"], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "compress" in result.stdout


def test_a_factory_that_cannot_be_imported_gets_a_hint(work, capsys):
    assert main(["compress", "--allow-degraded", "--model", "nonet:build", "--data", "x.npy", "--rank", "2", "-o", "out"]) == 2
    assert "run netcompress in the folder that holds nonet.py" in _error(capsys)
    (work / "broken.py").write_text("import not_installed_package\n")
    assert main(["compress", "--allow-degraded", "--model", "broken:build", "--data", "x.npy", "--rank", "2", "-o", "out"]) == 2
    assert "it needs 'not_installed_package', which is not installed" in _error(capsys)
    (work / "raises.py").write_text("def build():\n    raise RuntimeError('no GPU here')\n")
    assert main(["compress", "--allow-degraded", "--model", "raises:build", "--data", "x.npy", "--rank", "2", "-o", "out"]) == 2
    assert "the factory raises:build raised RuntimeError: no GPU here" in _error(capsys)
    assert main(["compress", "--allow-degraded", "--model", "mynet.py:build", "--data", "x.npy", "--rank", "2", "-o", "out"]) == 0
    assert not any(p.name.startswith(".") for p in work.iterdir())


def test_pth_state_dicts_are_read_without_unpickling_anything_else(work, capsys):
    torch.save({"state_dict": _model().state_dict(), "epoch": 3}, work / "ckpt.pth")
    assert main(["compress", "--allow-degraded", "--model", "mynet:build", "--weights", "ckpt.pth", "--data", "x.npy", "--rank", "3",
                 "-o", "a"]) == 0
    assert main(["compress", "--allow-degraded", "--model", "mynet:build", "--weights", "ckpt.pth", "--data", "x.npy", "--rank", "3",
                 "-o", "b"]) == 0
    x = torch.from_numpy(np.load(work / "x.npy"))
    reference = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples: the warning is not what this test reads
        nc.compress(reference, x.split(64), rank=3, progress=False)
    torch.testing.assert_close(nc.load(_model(), work / "a")(x), reference(x))

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"state_dict": Payload()}, work / "evil.pth")
    assert main(["compress", "--allow-degraded", "--model", "mynet:build", "--weights", "evil.pth", "--data", "x.npy", "--rank", "3",
                 "-o", "c"]) == 2
    assert "never unpickles" in _error(capsys)
    assert not (work / "pwned").exists() and not (work / "c").exists()
    small = _model()[:4].state_dict()
    torch.save(small, work / "small.pt")
    assert main(["compress", "--allow-degraded", "--model", "mynet:build", "--weights", "small.pt", "--data", "x.npy", "--rank", "3",
                 "-o", "c"]) == 2
    assert "do not fit mynet:build (missing 5.weight, 5.bias)" in _error(capsys)


def _png(path, width, height):
    """A PNG header declaring ``width``×``height`` pixels, with almost no data: what a bomb looks like."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("make, message", [
    (lambda p: (p / "a.jpg").write_text("not a picture"), "a.jpg is not an image Pillow can read"),
    (lambda p: _png(p / "bomb.png", 20_000, 20_000), "bomb.png declares more pixels than Pillow allows"),
    (lambda p: _png(p / "huge.png", 7_000, 7_000), "huge.png is 7,000×7,000 pixels, more than the 40,000,000"),
    (lambda p: _png(p / "cut.png", 64, 64), "cut.png cannot be decoded"),
])
def test_bad_images_end_in_one_sentence(work, capsys, make, message):
    folder = work / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "good.png")
    make(folder)
    assert main(["compress", "--allow-degraded", "--model", "mynet:build", "--data", "photos", "--rank", "2", "-o", "out2"]) == 2
    assert message in _error(capsys)
    assert not (work / "out2").exists()


def test_image_folders_are_normalised_like_the_api(work, capsys):
    folder = work / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["compress", "--allow-degraded", "--model", "mynet:build", "--weights", "w.safetensors", "--data", "photos",
                 "--preset", "imagenet", "--method", "dalr", "--rank", "3", "-o", "out"]) == 0
    from netcompress.cli.inputs import normalize, read_data

    x = normalize(read_data(folder), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert abs(float(x.mean())) < 1.0 and float(x.std()) > 1.0  # really normalised, not in [0, 1]
    reference = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples: the warning is not what this test reads
        nc.compress(reference, x.split(64), rank=3, progress=False)
    torch.testing.assert_close(nc.load(_model(), work / "out")(x), reference(x))
    assert main(["compress", "--allow-degraded", "--model", "mynet:build", "--data", "photos", "--mean", "0.5,0.5", "--std", "0.2,0.2",
                 "--rank", "3", "-o", "out2"]) == 2
    assert "--mean/--std give 2 channel(s) but the data has shape (12, 3, 8, 8)" in _error(capsys)
    assert main(["compress", "--allow-degraded", "--model", "mynet:build", "--data", "photos", "--mean", "0.5", "--rank", "3",
                 "-o", "out2"]) == 2
    assert "--mean and --std go together" in _error(capsys)


def test_settings_are_checked_before_the_model_and_data_are_read(work, capsys):
    for args, message in [
        (["--method", "kmeans", "--setting", "bits=four"], "bits must be an integer, got 'four'"),
        (["--method", "kmeans", "--setting", "bitz=4"], "does not take bitz"),
        (["--method", "dalr"], "needs exactly one of rank, keep, energy or budget"),
        (["--method", "kmeans", "--setting", "bits=4", "--layers", "re:(("], "not a valid regular expression"),
    ]:
        code = main(["compress", "--allow-degraded", "--model", "not_imported_yet:build", "--data", "missing.npy", *args, "-o", "out"])
        assert code == 2 and message in _error(capsys)
    assert not (work / "out").exists()


@pytest.mark.skipif("exclude" not in inspect.signature(nc.compress).parameters,
                    reason="compress(..., exclude=[...]) is being added to compress")
def test_exclude_leaves_the_named_layers_as_they_are(work):
    assert _run("--method", "kmeans", "--setting", "bits=3", "--exclude", "0,re:5", "-o", "out") == 0
    loaded = nc.load(_model(), work / "out")
    assert type(loaded[0]).__name__ == "Conv2d" and type(loaded[5]).__name__ == "Linear"
    assert type(loaded[3]).__name__ == "QuantizedLinear"


def test_a_foreign_output_directory_is_refused_and_force_keeps_the_users_files(work, capsys):
    (work / "project").mkdir()
    (work / "project" / "train.py").write_text("mine")
    before = _tree(work)
    assert _run("--rank", "3", "-o", "project") == 2
    assert "project is a non-empty directory that netcompress did not write" in _error(capsys)
    assert _tree(work) == before
    assert _run("--rank", "3", "-o", "project", "--force") == 0
    assert (work / "project" / "train.py").read_text() == "mine"
    (work / "notes.ncz").write_text("my notes")
    assert _run("--rank", "3", "-o", "out", "--ncz", "notes.ncz") == 2
    assert "notes.ncz exists and is not a netcompress container" in _error(capsys)
    assert (work / "notes.ncz").read_text() == "my notes" and not (work / "out").exists()


def test_outputs_are_written_together_or_not_at_all(work, capsys, monkeypatch):
    before = _tree(work)

    def failing_container(model, path, **options):
        raise RuntimeError("the container cannot hold this model")

    monkeypatch.setattr(nc, "save_compressed", failing_container)
    assert _run("--rank", "3", "-o", "out", "--ncz", "m.ncz") == 2
    assert "RuntimeError: the container cannot hold this model (run with --debug" in _error(capsys)
    assert _tree(work) == before and not (work / "out").exists()
    monkeypatch.undo()
    monkeypatch.chdir(work)

    def failing_save(*args, **kwargs):
        raise OSError(28, "No space left on device", "out/model.safetensors")

    monkeypatch.setattr(nc, "save", failing_save)
    assert _run("--rank", "3", "-o", "out", "--ncz", "sub/m.ncz") == 2
    assert "out/model.safetensors: No space left on device" in _error(capsys)
    assert _tree(work) == before and not (work / "sub").exists()
    monkeypatch.undo()
    monkeypatch.chdir(work)
    (work / "afile").write_text("x")
    assert _run("--rank", "3", "-o", "out", "--ncz", "afile/m.ncz") == 2
    _error(capsys)
    assert not (work / "out").exists()
    assert _run("--rank", "3", "-o", "out", "--ncz", "out/m.ncz") == 0
    assert sorted(p.name for p in (work / "out").iterdir()) == ["m.ncz", "manifest.json", "model.safetensors",
                                                               "report.json"]


def test_reports_that_are_empty_or_hostile_end_in_one_sentence(work, capsys):
    assert _run("--rank", "3", "-o", "out") == 0
    capsys.readouterr()
    for text, message in [("", "is empty"), ("[" * 200_000, "nested too deeply"),
                          ('{"format": "netcompress.report", "layers": [[]]}', "is not a netcompress report"),
                          ('{"format": "netcompress.report", "version": 1, "layers": [{"name": 1}]}', "cannot be read")]:
        (work / "out" / "report.json").write_text(text)
        assert main(["report", "out"]) == 2
        assert message in _error(capsys)
    (work / "out" / "report.json").write_text(json.dumps({"format": "netcompress.report", "version": 1, "layers": []}))
    assert main(["report", "out"]) == 0 and "total" in capsys.readouterr().out
    assert main(["report", "nowhere"]) == 2
    assert "nowhere does not exist" in _error(capsys)


def test_debug_shows_the_traceback(work, capsys):
    assert main(["compress", "--allow-degraded", "--model", "nonet:build", "--data", "x.npy", "--rank", "2", "-o", "out", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("netcompress: error: ")


def test_a_cli_output_loads_into_a_bfloat16_model_that_runs(work):
    assert _run("--rank", "3", "-o", "out") == 0
    fresh = _model().to(torch.bfloat16)
    loaded = nc.load(fresh, work / "out")
    assert loaded[3].down.weight.dtype == torch.bfloat16
    assert loaded(torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_a_recipe_with_an_alias_fails_before_the_model_is_built(work, capsys):
    (work / "r.yaml").write_text("a: &a {method: ternary}\nsteps: [*a]\n")
    assert main(["compress", "--allow-degraded", "--model", "not_imported_yet:build", "--data", "missing.npy", "--recipe", "r.yaml",
                 "-o", "out"]) == 2
    assert "uses the alias *a" in _error(capsys)
