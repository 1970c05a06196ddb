"""The command line to a target: --target writes a model that meets it, --write-plan/--replay give the same
weights, and a model that lost its fidelity is refused (nothing written) unless --allow-degraded."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import netcompress as nc
from conftest import digits_trained
from netcompress._core.sizes import saved_bytes
from netcompress.cli.main import main


def _net():
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = _net()
    x, y = digits_trained(model, epochs=15)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", x[:1400].numpy())
    np.savez(tmp_path / "test.npz", x=x[1400:].numpy(), y=y[1400:].numpy())
    (tmp_path / "digits_net.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential("
                                            "nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return model.eval(), tmp_path


def _args(tmp_path, *extra):
    return ["compress", "--model", "digits_net:build", "--weights", str(tmp_path / "w.safetensors"),
            "--data", str(tmp_path / "x.npy"), *extra]


def test_a_target_from_the_command_line_is_met_and_its_plan_replays(setup, capsys):
    model, tmp_path = setup
    out, plan = tmp_path / "out", tmp_path / "plan.json"
    assert main(_args(tmp_path, "--target", "size=0.125", "--eval-data", str(tmp_path / "test.npz"), "-o", str(out),
                      "--write-plan", str(plan))) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("whole model on 397 evaluation samples") and "target: size 0.125" in printed
    loaded = nc.load(_net(), out)
    assert saved_bytes(loaded) <= saved_bytes(model) / 8
    assert json.loads(plan.read_text())["format"] == "netcompress.plan"
    assert main(_args(tmp_path, "--replay", str(plan), "-o", str(tmp_path / "again"))) == 0
    again = nc.load(_net(), tmp_path / "again")
    for a, b in zip(loaded.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_degraded_model_is_refused_and_nothing_is_written(setup, capsys):
    _, tmp_path = setup
    out = tmp_path / "out"
    assert main(_args(tmp_path, "--method", "dalr", "--rank", "1", "-o", str(out))) == 2
    error = capsys.readouterr().err
    assert "keeps agreement" in error and "nothing was written" in error and "--allow-degraded" in error
    assert not out.exists()
    assert main(_args(tmp_path, "--method", "dalr", "--rank", "1", "-o", str(out), "--allow-degraded")) == 0
    assert nc.read_report(out).fidelity.agreement < 0.9
    assert main(_args(tmp_path, "--method", "uniform", "--bits", "8", "-o", str(tmp_path / "fine"))) == 0


@pytest.mark.parametrize("extra, message", [
    (["--target", "size=0.1", "--method", "gptq", "--bits", "4"], "--target chooses the methods"),
    (["--target", "speed=2"], "KEY=VALUE"),
    (["--recover", "2"], "--recover goes with --target"),
    (["--target", "size=0.1", "--min-agreement", "2"], "--min-agreement must be in [0, 1]"),
])
def test_target_arguments_are_refused_in_one_sentence_before_any_work(setup, capsys, extra, message):
    _, tmp_path = setup
    assert main(_args(tmp_path, *extra, "-o", str(tmp_path / "out"))) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
