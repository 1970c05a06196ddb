"""Every method on CUDA gives what it gives on CPU (skipped where no GPU is present)."""

import pytest
import torch

import netcompress as nc
from conftest import SmallNet

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _data() -> torch.Tensor:
    return torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _compress(device: str, method: str, **extra) -> tuple[torch.nn.Module, nc.Report]:
    torch.manual_seed(0)
    model = SmallNet().double().to(device)
    settings = {**nc.METHODS[method].example, **extra}
    report = nc.compress(model, _data().to(device).split(8), method=method, progress=False, **settings)
    return model, report


@pytest.mark.parametrize("method", sorted(nc.METHODS))
def test_every_method_gives_the_same_model_on_cuda_as_on_cpu(method):
    """float64 throughout: the statistics agree to rounding, so every rank, code and mask is the same."""
    cpu, cpu_report = _compress("cpu", method)
    gpu, gpu_report = _compress("cuda", method)
    assert [(r.name, r.status, r.rank, r.params_after) for r in gpu_report.rows] == \
        [(r.name, r.status, r.rank, r.params_after) for r in cpu_report.rows]
    for a, b in zip(cpu_report.rows, gpu_report.rows, strict=True):
        if a.relative_error is not None:
            assert b.relative_error == pytest.approx(a.relative_error, rel=1e-6, abs=1e-9)
    x = _data()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", ["gptq", "dalr"])
def test_sequential_mode_runs_on_cuda_with_statistics_on_the_model_device(method):
    cpu, _ = _compress("cpu", method, sequential=True)
    gpu, report = _compress("cuda", method, sequential=True)
    assert all(r.status != "not selected" for r in report.rows)
    x = _data()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-6, atol=1e-8)


def test_statistics_stay_on_the_gpu_in_float64():
    model = SmallNet().cuda()
    stats = nc.collect(model, _data().float().cuda().split(8), progress=False)
    assert all(m.gram.is_cuda and m.gram.dtype == torch.float64 for m in stats.values())


# --- TernGrad on the GPU: the same 2-bit layout, and DDP over NCCL ----------------------------------

def test_terngrad_packs_on_cuda_as_on_cpu():
    from netcompress.distributed import decode, pack, ternarize, unpack

    grad = torch.randn(1001, generator=torch.Generator().manual_seed(3)).cuda()
    codes, scale = ternarize(grad, torch.Generator(device="cuda").manual_seed(0))
    assert codes.is_cuda and float(scale) == float(grad.abs().max())
    packed = pack(codes)
    assert packed.is_cuda and torch.equal(packed.cpu(), pack(codes.cpu()))
    assert torch.equal(unpack(packed, codes.numel()), codes)
    # Every kept value is ±max|g| with the gradient's sign.
    ternary = decode(codes, scale)
    kept = codes != 0
    assert torch.equal(torch.sign(ternary[kept]), torch.sign(grad[kept]))
    assert torch.allclose(ternary[kept].abs(), scale.expand(int(kept.sum())))


def test_terngrad_hook_ternarises_one_backward_pass_over_nccl():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from netcompress.distributed import TernGradState, terngrad_hook

    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
        reference = [p.detach().clone() for p in model.parameters()]
        ddp = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        state = TernGradState(seed=0)
        ddp.register_comm_hook(state, terngrad_hook)
        x = torch.randn(64, 16, device="cuda")
        y = torch.randint(0, 4, (64,), device="cuda")
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        # With one rank the averaged gradient is this rank's ternary one: per tensor, values in {−s, 0, s}.
        plain = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
        with torch.no_grad():
            for p, r in zip(plain.parameters(), reference, strict=True):
                p.copy_(r)
        torch.nn.functional.cross_entropy(plain(x), y).backward()
        for p, q in zip(model.parameters(), plain.parameters(), strict=True):
            scale = q.grad.abs().max()
            assert bool(((p.grad == 0) | ((p.grad.abs() - scale).abs() <= 1e-6 * scale)).all())
            kept = p.grad != 0
            assert torch.equal(torch.sign(p.grad[kept]), torch.sign(q.grad[kept]))
        parameters = sum(p.numel() for p in model.parameters())
        # One bucket: 4 float32 scalers, then 676 codes packed 4 a byte.
        assert parameters == 676 and state.float32_bytes == 4 * parameters and state.bytes_sent == 4 * 4 + 169
    finally:
        dist.destroy_process_group()


def test_terngrad_example_runs_under_torchrun_on_the_gpu():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("sklearn", reason="the example's data (UCI digits) needs the 'demo' extra")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "examples.terngrad", "--device", "cuda", "--epochs", "3", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1], env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["compression"] >= 8 and result["test_accuracy"] > 0.5, result
