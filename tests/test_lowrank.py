"""Each method against a direct NumPy implementation of the seed's formulas (seeds 000/001)."""

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import correlated_inputs
from netcompress.lowrank.ridge import DEFAULT_LAM


def _layer(out_features: int, in_features: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features).double()


def _stats(layer: nn.Module, x: torch.Tensor):
    return nc.collect(layer, x, progress=False)[""]


def _outputs(A, B, bias, X):
    """Ŷ = A B X + b̂ in NumPy, X of shape (in, samples)."""
    return (A.numpy() @ B.numpy()) @ X + bias.numpy()[:, None]


def _ref_svd(W, k):
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    return U[:, :k] @ np.diag(S[:k]) @ Vt[:k]


def _ref_dalr(W, X, k, lam_rel):
    """A = Û_k from the SVD of Z = WX, B = Û_kᵀ Z Xᵀ (XXᵀ + λI)⁻¹, with an explicit inverse."""
    Z = W @ X
    U = np.linalg.svd(Z, full_matrices=False)[0][:, :k]
    G = X @ X.T
    lam = lam_rel * np.trace(G) / G.shape[0]
    return U @ (U.T @ Z @ X.T @ np.linalg.inv(G + lam * np.eye(G.shape[0])))


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_svd_matches_truncated_svd(shape, k):
    layer = _layer(*shape)
    f = nc.lowrank.svd(layer, _stats(layer, correlated_inputs(60, shape[1])), k)
    A, B, bias = f.factors(k)
    W = layer.weight.detach().numpy()
    np.testing.assert_allclose(A.numpy() @ B.numpy(), _ref_svd(W, k), atol=1e-10)
    np.testing.assert_allclose(bias.numpy(), layer.bias.detach().numpy())


@pytest.mark.parametrize("k", [1, 4])
def test_svd_bc_compensates_the_bias(k):
    layer = _layer(10, 16)
    x = correlated_inputs(80, 16)
    f = nc.lowrank.svd_bc(layer, _stats(layer, x), k)
    W, b, X = layer.weight.detach().numpy(), layer.bias.detach().numpy(), x.numpy().T
    What = _ref_svd(W, k)
    expected_bias = b + (W - What) @ X.mean(1)  # seed 001: b̂ = b + (W − Ŵ) x̄
    _, _, bias = f.factors(k)
    np.testing.assert_allclose(bias.numpy(), expected_bias, atol=1e-10)
    # The identity behind it: the mean output on the calibration data is kept exactly.
    A, B, _ = f.factors(k)
    Y, Yhat = W @ X + b[:, None], _outputs(A, B, bias, X)
    np.testing.assert_allclose(Yhat.mean(1), Y.mean(1), atol=1e-10)


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("lam", [DEFAULT_LAM, 1e-2])
def test_dalr_matches_the_closed_form(shape, k, lam):
    layer = _layer(*shape)
    x = correlated_inputs(100, shape[1])
    f = nc.lowrank.dalr(layer, _stats(layer, x), k, lam=lam, shrinkage=0)
    A, B, bias = f.factors(k)
    reference = _ref_dalr(layer.weight.detach().numpy(), x.numpy().T, k, lam)
    np.testing.assert_allclose(A.numpy() @ B.numpy(), reference, atol=1e-8)
    np.testing.assert_allclose(bias.numpy(), layer.bias.detach().numpy())


def test_dalr_without_ridge_on_rank_deficient_inputs():
    layer = _layer(10, 16)
    x = correlated_inputs(100, 5) @ torch.randn(5, 16, dtype=torch.float64)  # inputs in a 5-d subspace
    f = nc.lowrank.dalr(layer, _stats(layer, x), 5, lam=0.0, shrinkage=0)
    A, B, bias = f.factors(5)
    X = x.numpy().T
    W = layer.weight.detach().numpy()
    # Rank 5 captures WX exactly when the inputs span only 5 dimensions.
    np.testing.assert_allclose(_outputs(A, B, bias, X), W @ X + layer.bias.detach().numpy()[:, None], atol=1e-8)


@pytest.mark.parametrize("method", [nc.lowrank.svd, nc.lowrank.svd_bc, nc.lowrank.dalr, nc.lowrank.dalr_bc])
@pytest.mark.parametrize("shape", [(9, 14), (14, 9)])
def test_full_rank_reproduces_the_layer(method, shape):
    layer = _layer(*shape)
    x = correlated_inputs(60, shape[1])
    k = min(shape)
    kwargs = {"lam": 0.0, "shrinkage": 0} if method in (nc.lowrank.dalr, nc.lowrank.dalr_bc) else {}
    module = method(layer, _stats(layer, x), k, **kwargs).module(k)
    xt = torch.randn(7, shape[1], dtype=torch.float64)
    torch.testing.assert_close(module(xt), layer(xt), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("lam, tolerance", [(0.0, 1e-9), (DEFAULT_LAM, 1e-3)])
def test_dalr_error_never_above_svd_on_the_calibration_data(lam, tolerance):
    """Exact for the unregularised regression; the default ridge may cost at most ``tolerance`` of ||Y||."""
    layer = _layer(24, 32)
    x = correlated_inputs(200, 32, mean=1.0)
    stats = _stats(layer, x)
    X, W, b = x.numpy().T, layer.weight.detach().numpy(), layer.bias.detach().numpy()
    Y = W @ X + b[:, None]

    def error(f, k):
        return np.linalg.norm(Y - _outputs(*f.factors(k), X))

    fs = {name: getattr(nc.lowrank, name)(layer, stats, 24) for name in ("svd", "svd_bc")}
    fs.update({name: getattr(nc.lowrank, name)(layer, stats, 24, lam=lam, shrinkage=0) for name in ("dalr", "dalr_bc")})
    for k in range(1, 25):
        e = {name: error(f, k) for name, f in fs.items()}
        slack = tolerance * np.linalg.norm(Y)
        assert e["dalr"] <= e["svd"] + slack, (k, e)
        assert e["dalr_bc"] <= e["svd_bc"] + slack, (k, e)
        assert e["dalr_bc"] <= e["dalr"] + slack, (k, e)


@pytest.mark.parametrize("name", ["svd", "svd_bc", "dalr", "dalr_bc"])
def test_error_curve_equals_the_measured_output_error(name):
    layer = _layer(15, 11)
    x = correlated_inputs(90, 11)
    f = getattr(nc.lowrank, name)(layer, _stats(layer, x), 11, **({"shrinkage": 0} if name.startswith("dalr") else {}))
    X = x.numpy().T
    Y = layer.weight.detach().numpy() @ X + layer.bias.detach().numpy()[:, None]
    curve = f.output_error().numpy()
    for k in range(1, 12):
        measured = np.linalg.norm(Y - _outputs(*f.factors(k), X)) ** 2
        assert curve[k] == pytest.approx(measured, rel=1e-6, abs=1e-9 * np.linalg.norm(Y) ** 2)
        assert f.relative_error(k) == pytest.approx(np.sqrt(measured) / np.linalg.norm(Y), rel=1e-5, abs=1e-9)
    assert f.output_energy == pytest.approx(np.linalg.norm(Y) ** 2, rel=1e-10)


@pytest.mark.parametrize("name", ["svd", "svd_bc", "dalr", "dalr_bc"])
def test_heldout_error_curve_equals_the_error_measured_on_new_samples(name):
    # Fit on one sample, measure on another: the curve must match the factors applied to the new
    # inputs directly (with bias compensation, the bias keeps the *fitted* mean).
    layer = _layer(15, 11)
    fit, new = correlated_inputs(40, 11, seed=1), correlated_inputs(70, 11, seed=2) + 0.3
    f = getattr(nc.lowrank, name)(layer, _stats(layer, fit), 11)
    X = new.numpy().T
    Y = layer.weight.detach().numpy() @ X + layer.bias.detach().numpy()[:, None]
    curve = f.relative_error_on(_stats(layer, new)).numpy()
    for k in range(0, 12):
        A, B, bias = f.factors(max(k, 1))
        measured = np.linalg.norm(Y - _outputs(A[:, :k], B[:k], bias if k else _bias_at_rank_zero(f), X)) ** 2
        assert curve[k] == pytest.approx(measured / np.linalg.norm(Y) ** 2, rel=1e-6, abs=1e-9)


def _bias_at_rank_zero(f):
    """Rank 0 predicts the (compensated) bias alone: ``b + W x̄`` with bias compensation, else ``b``."""
    b = f.bias if f.bias is not None else torch.zeros(f.weight.shape[0], dtype=torch.float64)
    return b + f.weight @ f.moments.mean_input if f.compensate_bias else b


@pytest.mark.parametrize("method", [nc.lowrank.svd, nc.lowrank.dalr])
def test_conv_factorization_equals_the_conv_at_full_rank(method):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)).double()
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    stats = nc.collect(conv, x, progress=False)[""]
    full = min(6, 3 * 3 * 2)
    kwargs = {"lam": 0.0, "shrinkage": 0} if method is nc.lowrank.dalr else {}
    module = method(conv, stats, full, **kwargs).module(full)
    assert isinstance(module, nc.lowrank.LowRankConv2d)
    torch.testing.assert_close(module(x), conv(x), atol=1e-9, rtol=1e-9)


def test_conv_low_rank_error_matches_the_statistics():
    conv = nn.Conv2d(4, 8, 3, padding=1).double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    f = nc.lowrank.dalr(conv, nc.collect(conv, x, progress=False)[""], 3, shrinkage=0)
    module = f.module(3)
    y, yhat = conv(x), module(x)
    measured = ((y - yhat).norm() / y.norm()).item()
    assert f.relative_error(3) == pytest.approx(measured, rel=1e-6)


def test_grouped_conv_is_refused():
    conv = nn.Conv2d(4, 4, 3, groups=2)
    stats = nc.collect(conv, torch.randn(1, 4, 5, 5), progress=False)[""]
    with pytest.raises(ValueError, match="groups=2"):
        nc.lowrank.dalr(conv, stats, 2)


@pytest.mark.parametrize("rank", [0, -1, 13])
def test_rank_outside_one_to_min_is_refused(rank):
    layer = _layer(12, 20)
    stats = _stats(layer, correlated_inputs(30, 20))
    with pytest.raises(ValueError, match="rank"):
        nc.lowrank.dalr(layer, stats, rank)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_replacement_modules_script_and_export():
    layer = nn.Linear(10, 6)
    f = nc.lowrank.dalr(layer, _stats(layer, torch.randn(40, 10)), 3)
    module = f.module(3)
    x = torch.randn(2, 10)
    torch.testing.assert_close(torch.jit.script(module)(x), module(x))
    exported = torch.export.export(module, (x,))
    torch.testing.assert_close(exported.module()(x), module(x))
    assert set(module.state_dict()) == {"down.weight", "up.weight", "up.bias"}


@pytest.mark.parametrize("shape", [(40, 60), (60, 40)])
def test_float32_search_with_float64_refinement_matches_the_exact_solution(shape, monkeypatch):
    """Large layers search the output directions in float32; the result must equal the exact one."""
    import netcompress.lowrank._linalg as lowrank

    layer = _layer(*shape)
    x = correlated_inputs(300, shape[1])
    stats = _stats(layer, x)
    exact = nc.lowrank.dalr(layer, stats, 6)
    monkeypatch.setattr(lowrank, "FLOAT32_SEARCH_FROM", 8)
    fast = nc.lowrank.dalr(layer, stats, 6)
    for k in (1, 3, 6):
        A, B, _ = exact.factors(k)
        A2, B2, _ = fast.factors(k)
        np.testing.assert_allclose(A2.numpy() @ B2.numpy(), A.numpy() @ B.numpy(), atol=1e-6)
        assert fast.relative_error(k) == pytest.approx(exact.relative_error(k), rel=1e-6)
    assert fast.weighted_trace == pytest.approx(exact.weighted_trace, rel=1e-5)
