"""The torchrun examples of issue 14 on the real UCI digits, for an epoch or two, gloo on CPU, one thread a rank.

TernGrad runs as users run it, ``torchrun --nproc_per_node 2 -m examples.terngrad --json``;
the float32 baseline and codistillation run the same examples' ``run`` in two spawned processes (one
launch for both). The tests check the results against what the settings imply: every parameter's
float32 bytes once a step, TernGrad's 2-bit codes, the exchanges of codistillation, identical
weights on every rank.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import spawn_gloo

pytest.importorskip("sklearn", reason="the examples' data (UCI digits) needs the 'demo' extra")

ROOT = Path(__file__).resolve().parents[1]
LENET5_PARAMETERS = 431_080  # Caffe's LeNet-5: 20·25+20 + 50·500+50 + 800·500+500 + 500·10+10
LENET5_TENSORS = 8
STEPS_PER_EPOCH = 16  # 1,000 training digits, 500 per rank, 32 a step
EPOCHS = 2


def _torchrun(module: str, *options: str, nproc: int = 2) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", f"examples.{module}", "--json", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout[done.stdout.index("{"):])


def _spawned(rank: int, out: str) -> None:
    """One of two spawned ranks: the float32 baseline, then codistillation, in one gloo group."""
    from examples import codistill, terngrad

    results = {"float32": terngrad.run(terngrad.parse_args(["--comm", "float32", "--epochs", str(EPOCHS)])),
               "codistill": codistill.run(codistill.parse_args(["--epochs", "2", "--burn-in", "1",
                                                                "--exchange-every", "4"]))}
    if rank == 0:
        (Path(out) / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("examples")
    spawn_gloo(_spawned, out, 2)
    return json.loads((out / "results.json").read_text()) | {
        "terngrad": _torchrun("terngrad", "--comm", "terngrad", "--epochs", str(EPOCHS))}


def test_float32_all_reduce_counts_every_parameter_once_a_step(runs):
    run = runs["float32"]
    assert run["world"] == 2 and run["steps"] == EPOCHS * STEPS_PER_EPOCH and run["samples_per_rank"] == 500
    assert run["bytes_sent"] == EPOCHS * STEPS_PER_EPOCH * 4 * LENET5_PARAMETERS
    assert run["max_weight_difference"] == 0.0


def test_terngrad_example_sends_2_bits_a_value_and_keeps_the_ranks_identical(runs):
    run = runs["terngrad"]
    assert run["float32_bytes"] == EPOCHS * STEPS_PER_EPOCH * 4 * LENET5_PARAMETERS
    # Per step: the packed codes of every value (a bucket pads to whole bytes) and one float32 scaler a layer.
    codes, scalers = -(-LENET5_PARAMETERS // 4), 4 * LENET5_TENSORS
    buckets = 2  # DDP's small first bucket, then the rest; each may pad its codes by up to 3 fields
    steps = EPOCHS * STEPS_PER_EPOCH
    assert steps * (codes + scalers) <= run["bytes_sent"] <= steps * (codes + scalers + buckets)
    assert run["compression"] == pytest.approx(run["float32_bytes"] / run["bytes_sent"]) and run["compression"] >= 8
    assert run["max_weight_difference"] == 0.0
    # Two epochs of ternary gradients still learns the digits (chance is 0.1).
    assert run["test_accuracy"] > 0.5


def test_codistill_example_exchanges_after_the_burn_in(runs):
    run = runs["codistill"]
    assert run["world"] == 2 and run["samples_per_rank"] == 500
    # 16 distillation steps in epoch 2, an exchange before steps 1, 5, 9, 13; the weights of LeNet-5 in float32.
    assert run["exchanges"] == 4
    assert run["bytes_per_exchange"] == 4 * LENET5_PARAMETERS
    assert run["bytes_sent"] == 4 * 4 * LENET5_PARAMETERS
    assert len(run["test_accuracy"]) == 2 and min(run["test_accuracy"]) > 0.5
    assert 0.5 < run["ensemble_accuracy"] <= 1


def test_codistill_example_refuses_a_single_process_in_one_sentence():
    from examples import codistill

    with pytest.raises(SystemExit) as refused:  # run as a plain script: a world of one
        codistill.main(["--epochs", "1", "--burn-in", "0"])
    assert str(refused.value) == ("error: --mode codistill needs at least two ranks: launch it with "
                                  "torchrun --nproc_per_node 2 -m examples.codistill")
    assert not torch.distributed.is_initialized()  # the group of one it opened is gone


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is visible")
@pytest.mark.parametrize("example", ["terngrad", "codistill"])
def test_examples_refuse_cuda_without_a_gpu_in_one_sentence(example):
    import importlib

    with pytest.raises(SystemExit) as refused:
        importlib.import_module(f"examples.{example}").main(["--device", "cuda"])
    assert str(refused.value) == "error: --device cuda: no CUDA GPU is visible here; use --device cpu"
    assert not torch.distributed.is_initialized()
