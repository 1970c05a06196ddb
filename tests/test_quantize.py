"""Quantizers against direct NumPy implementations and their defining properties."""

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.quantize import CLIP_FRACTIONS, binary, kmeans, ternary, uniform


def _layer(out=12, inp=20, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(inp, out)


def _ref_uniform_group(w: np.ndarray, bits: int) -> np.ndarray:
    """Affine grid over [c·min, c·max] with the c of CLIP_FRACTIONS that minimises the squared error."""
    best, best_err = None, np.inf
    for c in CLIP_FRACTIONS:
        lo, hi = c * w.min(), c * w.max()
        step = max((hi - lo) / (2 ** bits - 1), 1e-12)
        q = lo + np.clip(np.round((w - lo) / step), 0, 2 ** bits - 1) * step
        err = ((q - w) ** 2).sum()
        if err < best_err:
            best, best_err = q, err
    return best


@pytest.mark.parametrize("granularity, group_size", [("tensor", None), ("channel", None), ("group", 5)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_matches_the_reference_grid(granularity, group_size, bits):
    layer = _layer()
    q = uniform(layer, bits=bits, granularity=granularity, group_size=group_size)
    W = layer.weight.detach().double().numpy()
    size = {"tensor": 12, "channel": 1, "group": 5}[granularity]
    expected = np.concatenate([_ref_uniform_group(W[r:r + size], bits) for r in range(0, 12, size)])
    np.testing.assert_allclose(q.weight.detach().double().numpy(), expected, atol=1e-6)
    assert q.codebook.shape == (-(-12 // size), 2 ** bits)
    assert len(torch.unique(q.weight.detach()[:size])) <= 2 ** bits


def test_clipping_beats_min_max_and_finer_groups_beat_coarser():
    layer = _layer(64, 128)
    with torch.no_grad():
        layer.weight[0, 0] = 3.0  # one outlier: min/max would waste the grid on it
    W = layer.weight.detach()
    err = {g: (uniform(layer, bits=3, granularity=g, group_size=8).weight - W).pow(2).sum().item()
           for g in ("tensor", "group", "channel")}
    lo, hi = W.min(), W.max()
    step = (hi - lo) / 7
    minmax = (lo + ((W - lo) / step).round() * step - W).pow(2).sum().item()
    assert err["tensor"] < minmax
    assert err["channel"] <= err["group"] <= err["tensor"]


def test_binary_and_ternary_follow_their_formulas():
    layer = _layer()
    W = layer.weight.detach().double().numpy()
    b = binary(layer).weight.detach().double().numpy()
    alpha = np.abs(W).mean(1, keepdims=True)
    np.testing.assert_allclose(b, np.where(W >= 0, alpha, -alpha), atol=1e-6)
    t = ternary(layer).weight.detach().double().numpy()
    delta = 0.7 * np.abs(W).mean(1, keepdims=True)
    kept = np.abs(W) > delta
    scale = (np.abs(W) * kept).sum(1, keepdims=True) / kept.sum(1, keepdims=True)
    np.testing.assert_allclose(t, np.sign(W) * kept * scale, atol=1e-6)


def test_stochastic_binarisation_is_seeded_and_unbiased_in_sign():
    layer = nn.Linear(2000, 1)
    with torch.no_grad():
        layer.weight.fill_(0.0)
        layer.weight[0, :1000] = 1.0  # x = 1 → always +α; x = 0 → +α with probability 1/2
    a, b = binary(layer, stochastic=True, seed=3), binary(layer, stochastic=True, seed=3)
    assert torch.equal(a.codes, b.codes)
    codes = a.codes[0].float()
    assert codes[:1000].mean() == 1.0
    assert 0.45 < codes[1000:].mean() < 0.55


def _ref_kmeans(values: np.ndarray, k: int, iterations: int) -> np.ndarray:
    centroids = np.linspace(values.min(), values.max(), k)
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centroids[None, :]).argmin(1)
        for j in range(k):
            if (assign == j).any():
                centroids[j] = values[assign == j].mean()
        centroids.sort()
    return centroids


def test_kmeans_matches_lloyd_and_shares_weights():
    from netcompress.quantize import KMEANS_ITERATIONS

    layer = _layer(30, 40)
    q = kmeans(layer, bits=3, init="linear")
    W = layer.weight.detach().double().numpy().ravel()
    centroids = _ref_kmeans(W, 8, KMEANS_ITERATIONS)
    np.testing.assert_allclose(np.sort(q.codebook.detach().double().numpy()[0]), centroids, atol=1e-5)
    nearest = centroids[np.abs(W[:, None] - centroids[None, :]).argmin(1)]
    np.testing.assert_allclose(q.weight.detach().double().numpy().ravel(), nearest, atol=1e-5)
    for init in ("random", "density"):
        assert kmeans(layer, bits=3, init=init).codebook.shape == (1, 8)


def test_centroid_gradient_is_the_sum_over_shared_weights():
    layer = _layer(6, 10)
    q = kmeans(layer, bits=2)
    x = torch.randn(5, 10)
    q(x).pow(2).sum().backward()
    # Reference: the gradient w.r.t. the dense weight, summed over each code.
    weight = q.weight.detach().requires_grad_(True)
    torch.nn.functional.linear(x, weight, q.bias.detach()).pow(2).sum().backward()
    expected = torch.zeros(4).index_add_(0, q.codes.reshape(-1).long(), weight.grad.reshape(-1))
    torch.testing.assert_close(q.codebook.grad[0], expected)


def test_quantizing_a_pruned_layer_keeps_it_pruned():
    pruned = nc.prune.magnitude(_layer(20, 30), sparsity=0.8)
    for q in (kmeans(pruned, bits=4), uniform(pruned, bits=4), binary(pruned), ternary(pruned)):
        assert (q.weight.detach()[~pruned.mask] == 0).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="uniform", bits=0), "bits must be an integer from 1 to 8"),
    (dict(method="kmeans", bits=9), "bits must be an integer from 1 to 8"),
    (dict(method="uniform", bits=4, granularity="group"), "needs group_size"),
    (dict(method="uniform", bits=4, granularity="group", group_size=50), "exceeds the layer's"),
    (dict(method="uniform", bits=4, granularity="row"), "granularity must be"),
    (dict(method="kmeans", bits=4, init="kmeans++"), "init must be"),
])
def test_bad_quantization_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nc.compress(nn.Sequential(nn.Linear(8, 40)), progress=False, **kwargs)


def test_an_entirely_pruned_group_is_refused():
    layer = nc.prune.magnitude(nn.Linear(10, 8), sparsity=0.5)
    with torch.no_grad():
        layer.mask[:2] = False  # the first two output channels lose every weight
    with pytest.raises(ValueError, match="entirely pruned"):
        uniform(layer, bits=4, granularity="group", group_size=2)
    assert uniform(layer, bits=4, granularity="group", group_size=4).weight.shape == (8, 10)
