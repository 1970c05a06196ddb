import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from experiments.models import WideMLP
from safetensors.torch import save_file

import netcompress as nc
from netcompress.cli.main import main


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = WideMLP(width=64)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((50, 784), dtype=np.float32))
    return model, tmp_path


def _factory_args(tmp_path, *extra):
    return ["compress", "--allow-degraded", "--model", "tests_factory:small_mlp", "--weights", str(tmp_path / "w.safetensors"),
            "--data", str(tmp_path / "x.npy"), *extra]


@pytest.fixture(autouse=True)
def _factory_module(tmp_path, monkeypatch):
    (tmp_path / "tests_factory.py").write_text(
        "from experiments.models import WideMLP\n\ndef small_mlp():\n    return WideMLP(width=64)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_compress_then_report(trained, capsys):
    model, tmp_path = trained
    out = tmp_path / "out"
    assert main(_factory_args(tmp_path, "--method", "dalr", "--rank", "fc6=8,fc7=4", "-o", str(out))) == 0
    printed = capsys.readouterr().out
    assert "fc6" in printed and "fc7" in printed
    fresh = nc.load(WideMLP(width=64), out)
    assert fresh.fc6.rank == 8 and fresh.fc7.rank == 4
    # The saved model is the original compressed by the same API call.
    expected = WideMLP(width=64)
    expected.load_state_dict(model.state_dict())
    x = torch.from_numpy(np.load(tmp_path / "x.npy"))
    nc.compress(expected, x.split(64), rank={"fc6": 8, "fc7": 4}, progress=False)
    torch.testing.assert_close(fresh(x), expected(x))
    assert main(["report", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert [row["name"] for row in rows if row["status"] == "compressed"] == ["fc6", "fc7"]


def test_budget_from_the_command_line(trained, capsys):
    _, tmp_path = trained
    assert main(_factory_args(tmp_path, "--budget", "0.2", "-o", str(tmp_path / "out"))) == 0
    report = nc.read_report(tmp_path / "out")
    assert report.params_after <= 0.2 * report.params_before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rank", "0", "-o", "o"], "rank 0 for layer 'fc6'"),
        (["--rank", "4", "--layers", "fc9", "-o", "o"], "layer 'fc9' does not exist"),
    ],
)
def test_errors_are_one_sentence_and_exit_nonzero(trained, capsys, args, message):
    _, tmp_path = trained
    assert main(_factory_args(tmp_path, *args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("netcompress: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_bad_files_and_model_specs(trained, capsys):
    _, tmp_path = trained
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    cases = [
        (["compress", "--allow-degraded", "--model", "tests_factory:nothing", "--data", str(tmp_path / "x.npy"), "--rank", "2", "-o", "o"],
         "has no 'nothing'"),
        (["compress", "--allow-degraded", "--model", "tests_factory:small_mlp", "--data", str(tmp_path / "bad.npy"), "--rank", "2", "-o", "o"],
         "cannot be read as .npy data"),
        (["compress", "--allow-degraded", "--model", "tests_factory:small_mlp", "--data", str(tmp_path / "none.pt"), "--rank", "2", "-o", "o"],
         "does not exist"),
        (["report", str(tmp_path)], "holds no report.json"),
    ]
    for args, message in cases:
        assert main(args) == 2
        assert message in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "netcompress.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "compress" in result.stdout


def test_every_settings_field_is_a_flag_and_builds_the_settings_object(trained, capsys):
    model, tmp_path = trained
    out = tmp_path / "out"
    assert main(_factory_args(tmp_path, "--method", "gptq", "--bits", "4", "--group-size", "16",
                              "--symmetric", "false", "-o", str(out))) == 0
    printed = capsys.readouterr().out
    assert "bytes on disk" in printed and "(the --weights given hold" in printed
    rows = [r for r in nc.read_report(out).rows if r.replaced]
    assert rows and all(r.settings == nc.GPTQ(bits=4, group_size=16, symmetric=False).to_json() for r in rows)
    # a flag of another method is refused in one sentence, before any work
    assert main(_factory_args(tmp_path, "--method", "gptq", "--bits", "4", "--sparsity", "0.5",
                              "-o", str(tmp_path / "other"))) == 2
    assert "method 'gptq' does not take sparsity" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_methods_lists_every_setting_and_method_help_shows_one(capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name, chosen in nc.METHODS.items():
        assert f"{name} ({chosen.settings_class.__name__}" in listing
    assert "--group-size" in listing and "int | None (default None)" in listing
    with pytest.raises(SystemExit):
        main(["compress", "--allow-degraded", "--method", "gptq", "--help"])
    shown = capsys.readouterr().out
    assert "settings of gptq" in shown and "--damp" in shown
    assert "--sparsity" not in shown  # another method's setting is hidden from this method's help
