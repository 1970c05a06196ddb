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
