"""The torchrun examples refuse bad arguments in one ``error:`` sentence before any training or process group (issue 22, item 4).

Before: ``distributed_compress`` joined its process group, trained the dense MLP and compressed it,
then failed with a traceback (``[rank0]: KeyError: 'bogus'``, ``NotADirectoryError``, ``ValueError:
… non-empty directory …``), 3-6 s and ~450 MB each in a world of one; ``codistill`` opened its group
of one before refusing it. Here every case is checked in-process without a timer: the data, the
training and the process group fail the test if they are touched.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from examples import _common, codistill, distributed_compress, terngrad
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def untouched(monkeypatch, tmp_path):
    """Joining a process group, reading the digits or training fails the test; the current directory is tmp_path."""

    def never(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(dist, "init_process_group", never)
    monkeypatch.setattr(distributed_compress, "target_data", never)
    monkeypatch.setattr(_common, "task", never)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not netcompress's\n")
    os.mkfifo(tmp_path / "fifo")
    torch.manual_seed(0)
    save_file({"fc6.weight": torch.zeros(3, 784)}, tmp_path / "narrow.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    return tmp_path


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder) for root, dirs, files in os.walk(folder)
                  for name in dirs + files)


@pytest.mark.parametrize("options, message", [
    (["--out", "afile"], "--out afile exists and is not a directory; choose another output path"),
    (["--out", "afile/sub"], "is inside"),
    (["--out", "foreign"], "--out foreign is a non-empty directory that netcompress did not write; choose a new or "
                           "empty directory, or pass --overwrite"),
    (["--out", "fifo"], "--out fifo exists and is not a directory"),
    (["--out", "o", "--method", "bogus"], "--method 'bogus' is not a registered method; choose one of "),
    (["--out", "o", "--bits", "4"], "--method dalr: method 'dalr' does not take bits"),
    (["--out", "o", "--method", "gptq", "--bits", "9"], "--method gptq: bits must be an integer from 1 to 8, got 9"),
    (["--out", "o", "--budget", "1.5"], "--method dalr: budget must be a fraction in (0, 1], got 1.5"),
    (["--out", "o", "--rank", "0"], "--rank must be at least 1, got 0"),
    (["--out", "o", "--holdout", "1"], "--holdout must be a share in [0, 1) of the samples, got 1.0"),
    (["--out", "o", "--samples", "0"], "--samples must be at least 1, got 0"),
    (["--out", "o", "--width", "0"], "--width must be at least 1, got 0"),
    (["--out", "o", "--seed", "-1"], "--seed must be between 0 and 2**31 - 1, got -1"),
    (["--out", "o", "--init", "nowhere.safetensors"], "--init file nowhere.safetensors cannot be read: it does not exist"),
    (["--out", "o", "--init", "fifo"], "--init file fifo is a named pipe, not a regular file"),
    (["--out", "o", "--init", "junk.safetensors"], "--init junk.safetensors is not a safetensors file"),
    (["--out", "o", "--init", "narrow.safetensors"], "--init narrow.safetensors does not hold the MLP of --width 256: "
                                                     "tensor 'fc6.bias' is missing, expected (256,)"),
])
def test_distributed_compress_refuses_before_any_work(untouched, options, message):
    before = _tree(untouched)
    with pytest.raises(SystemExit) as refused:
        distributed_compress.main(options)
    assert str(refused.value).startswith("error: ") and message in str(refused.value), refused.value
    assert "\n" not in str(refused.value)
    assert _tree(untouched) == before and not dist.is_initialized()


def test_codistill_refuses_a_world_of_one_before_joining_a_group(untouched):
    with pytest.raises(SystemExit) as refused:
        codistill.main(["--epochs", "1", "--burn-in", "0"])
    assert str(refused.value) == ("error: --mode codistill needs at least two ranks: launch it with "
                                  "torchrun --nproc_per_node 2 -m examples.codistill")


def test_codistillation_with_no_epoch_to_codistil_is_refused_and_the_default_leaves_one(untouched, capsys):
    # Before: --epochs 1 took --burn-in 1 by default and ran with "0 exchanges", exit status 0.
    assert codistill.parse_args(["--epochs", "1"]).burn_in == 0
    assert codistill.parse_args(["--epochs", "20"]).burn_in == 2
    with pytest.raises(SystemExit) as refused:
        codistill.main(["--epochs", "2", "--burn-in", "2"])
    assert refused.value.code == 2
    assert "--burn-in 2 leaves none of the 2 epoch(s) to codistil" in capsys.readouterr().err
    assert codistill.parse_args(["--epochs", "2", "--burn-in", "2", "--mode", "independent"]).burn_in == 2


def test_the_examples_check_their_options_before_joining_a_group(untouched, capsys):
    for example, options in ((terngrad, ["--momentum", "1"]), (codistill, ["--exchange-every", "0"])):
        with pytest.raises(SystemExit) as refused:
            example.main(options)
        assert refused.value.code == 2 and "error: " in capsys.readouterr().err  # argparse's own error line


def test_a_bad_out_exits_with_one_line_from_the_command_line(tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    done = subprocess.run([sys.executable, "-m", "examples.distributed_compress", "--out", "afile/sub"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: --out afile/sub is inside {tmp_path / 'afile'}, which is not a directory; " \
                          "choose another output path\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
