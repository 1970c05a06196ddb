"""Separable low rank of convolutions: Jaderberg et al. 2014 (scheme 2), CP (Lebedev et al. 2015), and their data-aware fits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from conftest import SmallNet
from netcompress.lowrank import CPConv2d, JaderbergConv2d, cp, cp_dalr, jaderberg, jaderberg_dalr

tensorly = pytest.importorskip("tensorly")


def _conv(seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)).double()


def _images(samples: int = 24, seed: int = 1) -> torch.Tensor:
    """Correlated channels and smooth images: inputs whose second moment is far from white.

    The channel mixing is fixed; ``seed`` draws new images of the same distribution.
    """
    mixing = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(samples, 2, 12, 14, generator=g, dtype=torch.float64)
    smooth = F.avg_pool2d(F.pad(base, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.einsum("oc,nchw->nohw", mixing, smooth) + 0.05 * torch.randn(samples, 4, 12, 14, generator=g,
                                                                              dtype=torch.float64)


def _moments(conv: nn.Conv2d, x: torch.Tensor):
    return nc.collect(conv, x, None, progress=False)[""]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_jaderberg_at_full_rank_is_the_convolution():
    conv, x = _conv(), _images()
    f = jaderberg(conv, _moments(conv, x), 12)  # min(C·kh, N·kw) = min(12, 30)
    module = f.module(12)
    assert isinstance(module, JaderbergConv2d)
    with torch.no_grad():
        torch.testing.assert_close(module(x), conv(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_jaderberg_equals_the_numpy_svd_of_the_reshaped_kernel_and_its_error_is_measured(rank):
    conv, x = _conv(), _images()
    W = conv.weight.detach().numpy()
    n, c, kh, kw = W.shape
    U, S, Vh = np.linalg.svd(W.transpose(1, 2, 0, 3).reshape(c * kh, n * kw), full_matrices=False)
    truncated = (U[:, :rank] * S[:rank]) @ Vh[:rank]
    kernel = torch.from_numpy(truncated.reshape(c, kh, n, kw).transpose(2, 0, 1, 3).copy())
    f = jaderberg(conv, _moments(conv, x), 12)
    with torch.no_grad():
        reference = F.conv2d(x, kernel, conv.bias, conv.stride, conv.padding, conv.dilation)
        torch.testing.assert_close(f.module(rank)(x), reference, rtol=1e-9, atol=1e-9)
        assert f.relative_error(rank) == pytest.approx(_relative(reference, conv(x)), rel=1e-8)


def _cp_kernel(rank: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    factors = [torch.randn(d, rank, generator=g, dtype=torch.float64) for d in (6, 4, 3, 5)]
    return torch.einsum("nr,cr,ir,jr->ncij", *factors)


def test_cp_recovers_a_kernel_of_that_cp_rank():
    conv, x = _conv(), _images()
    with torch.no_grad():
        conv.weight.copy_(_cp_kernel(3))
    module = cp(conv, _moments(conv, x), 3).module(3)
    assert isinstance(module, CPConv2d)
    with torch.no_grad():
        assert _relative(module(x), conv(x)) < 1e-6


@pytest.mark.parametrize("rank", [2, 5])
def test_cp_layers_compute_the_cp_kernel_and_fit_it_as_well_as_tensorly(rank):
    """The four convolutions equal one convolution with the kernel tensorly rebuilds from the factors, and the
    ALS fit is as close as tensorly's ``parafac`` (both from seeded random starts)."""
    from tensorly.cp_tensor import cp_to_tensor
    from tensorly.decomposition import parafac

    conv, x = _conv(), _images()
    module = cp(conv, _moments(conv, x), rank, seed=4).module(rank)
    factors = [module.up.weight[:, :, 0, 0], module.pointwise.weight[:, :, 0, 0].T,
               module.vertical.weight[:, 0, :, 0].T, module.horizontal.weight[:, 0, 0, :].T]
    kernel = torch.from_numpy(cp_to_tensor((np.ones(rank), [f.detach().numpy() for f in factors])))
    W = conv.weight.detach()
    direct = parafac(W.numpy(), rank, init="random", random_state=4, n_iter_max=500, tol=1e-10)
    with torch.no_grad():
        reference = F.conv2d(x, kernel, conv.bias, conv.stride, conv.padding, conv.dilation)
        torch.testing.assert_close(module(x), reference, rtol=1e-9, atol=1e-9)
    ours, theirs = _relative(kernel, W), _relative(torch.from_numpy(cp_to_tensor(direct)), W)
    assert ours <= 1.05 * theirs, (ours, theirs)


@pytest.mark.parametrize("method", [jaderberg, jaderberg_dalr, cp, cp_dalr])
def test_every_rank_error_in_sample_and_held_out_equals_the_error_measured_directly(method):
    conv, fit, held = _conv(), _images(seed=1), _images(seed=5)
    f = method(conv, _moments(conv, fit), 6)
    curve = f.relative_error_on(_moments(conv, held))
    with torch.no_grad():
        for k in (1, 3, 6):
            if method in (cp, cp_dalr) and k < 6:
                continue  # a smaller CP rank is decomposed again: its curve value is the truncation's estimate
            module = f.module(k)
            assert f.relative_error(k) == pytest.approx(_relative(module(fit), conv(fit)), rel=1e-7)
            assert float(curve[k]) ** 0.5 == pytest.approx(_relative(module(held), conv(held)), rel=1e-7)


@pytest.mark.parametrize(("free", "aware"), [(jaderberg, jaderberg_dalr), (cp, cp_dalr)])
def test_the_data_aware_fit_errs_less_on_new_target_data(free, aware):
    """Stages fitted to the target statistics: less error on held-out images than the data-free ones (≥ 3 %)."""
    conv, fit, held = _conv(), _images(64, seed=1), _images(64, seed=7)
    stats = _moments(conv, fit)
    with torch.no_grad():
        for rank in (2, 4):
            errors = [_relative(method(conv, stats, rank).module(rank)(held), conv(held)) for method in (free, aware)]
            assert errors[1] < 0.97 * errors[0], (rank, errors)


def test_compress_decomposes_the_convolutions_saves_and_loads(tmp_path):
    model, x = SmallNet().eval(), torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fresh = SmallNet().eval()
    fresh.load_state_dict(model.state_dict())
    report = nc.compress(model, x.split(16), method="jaderberg-dalr", budget=0.6, progress=False)
    rows = {r.name: r for r in report.rows}
    assert rows["conv2"].status == "compressed" and "Linear" in rows["fc1"].note
    assert any(isinstance(m, JaderbergConv2d) for m in model.modules())
    convs = [r for r in report.rows if r.name.startswith("conv")]
    assert sum(r.params_after for r in convs) <= 0.6 * sum(r.params_before for r in convs) + 12
    with torch.no_grad():
        expected = model(x)
        nc.save(model, tmp_path / "saved")
        torch.testing.assert_close(nc.load(fresh, tmp_path / "saved")(x), expected, rtol=0, atol=0)


def test_a_linear_layer_named_explicitly_is_refused_and_a_grouped_conv_left_dense():
    model = SmallNet()
    with pytest.raises(ValueError, match="fc1"):
        nc.compress(model, torch.randn(8, 3, 8, 8), method="jaderberg", rank=2, layers=["fc1"], progress=False)
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=4))
    report = nc.compress(grouped, torch.randn(4, 4, 9, 9), method="cp", rank=2, progress=False)
    assert {r.name: r.status for r in report.rows} == {"0": "compressed", "1": "left dense"}
