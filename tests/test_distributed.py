"""Statistics gathered, and models compressed, by two gloo processes equal those of one process on all the data.

One real ``torchrun --nproc_per_node 2`` launch (gloo on CPU) runs this file as its workers: the
statistics of a small network on strided shards, then examples.distributed_compress for every
case below, in one process group so that the launch is paid once. The tests compare what rank 0
wrote with one process on all the data.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import netcompress as nc
from conftest import SmallNet

ROOT = Path(__file__).resolve().parents[1]


def _net_and_data() -> tuple[torch.nn.Module, torch.Tensor]:
    """In float64: a layer's inputs then do not depend on the batch they were computed in (to ~1e-16)."""
    torch.manual_seed(0)
    return SmallNet().double(), torch.randn(13, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _fields(m: nc.Moments) -> dict[str, torch.Tensor]:
    return {"gram": m.gram, "sum": m.input_sum, "max": m.response_max, "rate": m.activation_rate,
            "count": torch.tensor([m.count])}


def _collect_shard(out: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    net, data = _net_and_data()
    shard = data[rank::world]  # 7 and 6 samples: 4 and 3 batches, one all-reduce at the end of each pass
    stats = nc.collect(net, shard.split(2), holdout=0.2, progress=False)
    if rank == 0:
        save_file({f"{part}/{key}": value for part, s in (("fit", stats), ("heldout", stats.heldout))
                   for key, value in _fields(s["conv2"]).items()}, out)


def test_two_processes_gather_the_statistics_of_all_data(torchrun_outputs):
    gathered = load_file(torchrun_outputs[0] / "stats.safetensors")

    net, data = _net_and_data()
    whole = nc.collect(net, data.split(4), holdout=0.2, progress=False)
    # The strided shards hold out samples 4 and 9 between them, as one process does.
    assert whole.heldout["conv2"].count == 2 * 4 * 4
    for part, stats in (("fit", whole), ("heldout", whole.heldout)):
        single = _fields(stats["conv2"])
        for key in ("gram", "sum", "max"):  # float64 sums in another order
            np.testing.assert_allclose(gathered[f"{part}/{key}"].numpy(), single[key].numpy(), rtol=1e-10, atol=1e-10)
        for key in ("rate", "count"):
            np.testing.assert_array_equal(gathered[f"{part}/{key}"].numpy(), single[key].numpy())


# --- torchrun: examples.distributed_compress on two strided shards, against one process -----------

# 997 UCI digits in batches of 83: rank 0 gets 499 samples (7 batches), rank 1 498 (6 batches); 20%
# held out (compress's default). Each case: the example's options and the relative tolerance of the
# comparison. In float32 a hidden layer's inputs may differ in the last bit with the batch they were
# computed in; that is all a continuous method (DALR at a fixed rank) sees. A rounding or pruning
# decision could flip on such a difference, so the sequential GPTQ and SparseGPT cases run the network
# in float64, where the two runs differ only by the order of float64 sums (~1e-16): every code and
# every mask must then be the same.
COMMON = ["--width", "32", "--samples", "997", "--batch-size", "83"]
CASES = {
    "dalr": (["--method", "dalr", "--rank", "8"], 1e-5),
    "dalr-sequential": (["--method", "dalr", "--rank", "8", "--sequential"], 1e-5),
    "gptq-sequential": (["--method", "gptq", "--bits", "4", "--sequential", "--dtype", "float64"], 1e-9),
    "sparsegpt-sequential": (["--method", "sparsegpt", "--sparsity", "0.5", "--sequential", "--dtype", "float64"], 1e-9),
}


def _example():
    return importlib.import_module("examples.distributed_compress")


def _torchrun_worker(out: str, init: str) -> None:
    """One worker: the statistics, then every case of the example, in one process group."""
    dist.init_process_group("gloo")  # rank, world size and rendezvous from torchrun's environment
    try:
        _collect_shard(os.path.join(out, "stats.safetensors"))
        if importlib.util.find_spec("sklearn") is not None:  # the example's data
            example = _example()
            for name, (options, _) in CASES.items():
                example.main([*COMMON, *options, "--init", init, "--out", os.path.join(out, name)])
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def torchrun_outputs(tmp_path_factory):
    from experiments.models import WideMLP

    root = tmp_path_factory.mktemp("torchrun")
    (root / "out").mkdir()
    init = str(root / "dense.safetensors")
    torch.manual_seed(0)
    save_file(WideMLP(width=32).state_dict(), init)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, str(root / "out"), init]  # --standalone: a c10d rendezvous on a free local port
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return root / "out", init, done.stdout


def _compressed(directory: Path, dtype: torch.dtype) -> torch.nn.Module:
    from experiments.models import WideMLP

    return nc.load(WideMLP(width=32).to(dtype), directory).eval()


@torch.no_grad()
def _weight(layer: torch.nn.Module, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight a linear layer applies, whatever it became (low-rank, masked, quantized)."""
    inputs = torch.eye(in_features, dtype=dtype)
    return (layer(inputs) - layer(torch.zeros_like(inputs[:1]))).T


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=rtol,
                               atol=rtol * float(expected.abs().max()), err_msg=what)


@pytest.mark.parametrize("case", list(CASES))
def test_torchrun_compresses_as_one_process(torchrun_outputs, case, tmp_path, capsys, one_thread):
    pytest.importorskip("sklearn", reason="the example's data (UCI digits) needs the 'demo' extra")
    out, init, log = torchrun_outputs
    options, rtol = CASES[case]
    assert f"2 process(es), 997 target samples (499 on rank 0), method {options[1]}" in log
    example = _example()
    example.main([*COMMON, *options, "--init", init, "--out", str(tmp_path)])  # one process, all the data
    assert "1 process(es), 997 target samples (997 on rank 0)" in capsys.readouterr().out

    spread, single = nc.read_report(out / case), nc.read_report(tmp_path)
    assert [(r.name, r.status, r.rank, r.params_after, r.setting) for r in spread.rows] == [
        (r.name, r.status, r.rank, r.params_after, r.setting) for r in single.rows]
    for a, b in zip(spread.rows, single.rows, strict=True):
        assert a.heldout_error is not None  # the same 20% held out: its error too
        np.testing.assert_allclose([a.relative_error, a.heldout_error], [b.relative_error, b.heldout_error],
                                   rtol=rtol, err_msg=a.name)

    dtype = torch.float64 if "float64" in options else torch.float32
    spread_model, single_model = _compressed(out / case, dtype), _compressed(tmp_path, dtype)
    for name, width in (("fc6", 784), ("fc7", 32), ("fc8", 32)):
        a, b = spread_model.get_submodule(name), single_model.get_submodule(name)
        assert type(a) is type(b), name
        for buffer in ("codes", "mask"):  # discrete decisions: all the same
            if getattr(b, buffer, None) is not None:
                assert torch.equal(getattr(a, buffer), getattr(b, buffer)), f"{name}.{buffer}"
        _close(_weight(a, width, dtype), _weight(b, width, dtype), rtol, f"{name} weight")
    test_x = example.target_data(example.parse_args([*COMMON, *options, "--out", "-"]))[0].test_x
    with torch.no_grad():
        _close(spread_model(test_x), single_model(test_x), rtol, "outputs")


if __name__ == "__main__":  # a worker of the torchrun test
    _torchrun_worker(*sys.argv[1:])
