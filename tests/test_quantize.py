"""Quantizers against direct NumPy implementations and their defining properties."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress._core.description import build, describe
from netcompress.quantize.binary import binary, ternary
from netcompress.quantize.kmeans import kmeans
from netcompress.quantize.modules import QuantizedEmbedding
from netcompress.quantize.uniform import CLIP_FRACTIONS, check_uniform, clip_weights, uniform


def _layer(out=12, inp=20, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(inp, out)


def _half(scale: float) -> float:
    """The scale as save stores it: the nearest float16, where float16 holds it as a normal number."""
    return float(np.float16(scale)) if 2.0 ** -14 <= scale <= 65504.0 else scale


def _ref_group(w: np.ndarray, bits: int, symmetric: bool, cost: np.ndarray | None = None) -> np.ndarray:
    """Direct form of the grid: w ≈ (code − zero)·scale, the clip c of CLIP_FRACTIONS with least weighted error.

    The scale is a float16 number (what ``save`` writes), chosen before the codes.
    """
    cost = np.ones_like(w) if cost is None else cost
    top = 2 ** bits - 1
    best, best_err = None, np.inf
    for c in CLIP_FRACTIONS:
        if symmetric:
            zero = 2 ** (bits - 1)
            scale = _half(max(c * np.abs(w).max() / (2 ** (bits - 1) - 1), 1e-30))
        else:
            low, high = min(c * w.min(), 0.0), max(c * w.max(), 0.0)
            scale = _half(max((high - low) / top, 1e-30))
            zero = np.clip(np.round(-low / scale), 0, top)
        code = np.clip(np.round(w / scale + zero), 0, top)
        q = (code - zero) * scale
        err = (cost * (q - w) ** 2).sum()
        if err < best_err:
            best, best_err = q, err
    return best


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity, group_size", [("tensor", None), ("channel", None), ("group", 5)])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("rows_per_block", [None, 5])
def test_uniform_matches_the_numpy_reference(granularity, group_size, bits, symmetric, rows_per_block, monkeypatch):
    """``rows_per_block``: a large layer is quantized a block of rows at a time (12 rows: 5, 5, 2); same grid."""
    import netcompress._core.tensors

    if rows_per_block:
        monkeypatch.setattr(netcompress._core.tensors, "ROW_BLOCK_ELEMENTS", 20 * rows_per_block)
    layer = _layer()
    q = uniform(layer, bits=bits, granularity=granularity, group_size=group_size, symmetric=symmetric)
    W = layer.weight.detach().double().numpy()
    if granularity == "tensor":
        expected = _ref_group(W, bits, symmetric)
    elif granularity == "channel":
        expected = np.stack([_ref_group(row, bits, symmetric) for row in W])
    else:  # groups of 5 consecutive inputs of each output row (GPTQ/AWQ layout)
        expected = np.stack([np.concatenate([_ref_group(row[j:j + 5], bits, symmetric) for j in range(0, 20, 5)])
                             for row in W])
    np.testing.assert_allclose(q.weight.detach().double().numpy(), expected, rtol=1e-6, atol=1e-7)
    scales = {"tensor": (1, 1), "channel": (12, 1), "group": (12, 4)}[granularity]
    assert tuple(q.scale.shape) == scales and q.codes.dtype == torch.uint8
    assert (q.zero_point is None) == symmetric
    # float16 scales, zero points at the codes' width (8-bit ones take 8)
    assert q.bits == pytest.approx(bits + (16 + bits * (not symmetric)) * np.prod(scales) / 240)


def test_zero_is_exact_and_the_data_weighted_clip_follows_the_reference():
    layer = _layer(8, 32)
    with torch.no_grad():
        layer.weight[:, :4] = 0.0
        layer.weight[0] += 0.5  # a row far from zero-centred: the asymmetric grid still holds zero
    x = torch.randn(200, 32) * torch.linspace(0.1, 3.0, 32)
    stats = nc.collect(nn.Sequential(layer), x, progress=False)
    for symmetric in (True, False):
        q = uniform(layer, stats["0"], bits=3, symmetric=symmetric)
        assert (q.weight.detach()[1:, :4] == 0).all()
        cost = clip_weights(stats["0"], layer.weight.detach().double()).numpy()
        W = layer.weight.detach().double().numpy()
        expected = np.stack([_ref_group(W[r], 3, symmetric, cost[r]) for r in range(8)])
        np.testing.assert_allclose(q.weight.detach().double().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_clip_weights_shrink_towards_uniform_when_samples_are_few():
    torch.manual_seed(0)
    layer = nn.Linear(64, 4)
    scales = torch.ones(64)
    scales[0] = 10.0  # one feature carries most of the energy
    for samples in (8, 64, 4096):
        stats = nc.collect(nn.Sequential(layer), torch.randn(samples, 64) * scales, progress=False)["0"]
        energy = stats.input_energy / stats.count
        energy = energy / energy.mean()
        alpha = 64 / (samples + 64)  # the uniform weighting is a prior worth d = 64 pseudo-samples
        expected = (1 - alpha) * energy + alpha
        got = clip_weights(stats, layer.weight.detach().double())
        torch.testing.assert_close(got, expected.expand(4, 64))
    assert got[0, 0] > 30  # with many samples the energetic feature dominates the clip


def test_clipping_beats_min_max_and_finer_groups_beat_coarser():
    layer = _layer(64, 128)
    with torch.no_grad():
        layer.weight[0, 0] = 3.0  # one outlier: min/max would waste the grid on it
    W = layer.weight.detach()
    err = {g: (uniform(layer, bits=3, granularity=g, group_size=16 if g == "group" else None).weight - W
               ).pow(2).sum().item() for g in ("tensor", "group", "channel")}
    extent = W.abs().max()
    step = extent / 3
    minmax = ((W / step).round().clamp(-4, 3) * step - W).pow(2).sum().item()
    assert err["tensor"] <= minmax
    assert err["group"] <= err["channel"] <= err["tensor"]
    heavy = nn.Linear(1000, 1, bias=False)  # heavy tails: a clipped grid beats the full range
    with torch.no_grad():
        heavy.weight.copy_(torch.distributions.Laplace(0.0, 1.0).sample((1, 1000)))
    W = heavy.weight.detach()
    step = W.abs().max() / 3
    minmax = ((W / step).round().clamp(-4, 3) * step - W).pow(2).sum().item()
    assert (uniform(heavy, bits=3).weight - W).pow(2).sum().item() < 0.8 * minmax


def test_quantized_layers_are_plain_scriptable_modules_that_rebuild_from_their_description():
    torch.manual_seed(0)
    x, tokens = torch.randn(3, 2, 6, 6), torch.randint(0, 30, (2, 5))
    layers = [
        (uniform(nn.Conv2d(2, 4, 3), bits=4, granularity="group", group_size=9), x),
        (uniform(nn.Conv2d(4, 4, 3, groups=2), bits=8, symmetric=False), torch.randn(3, 4, 6, 6)),
        (kmeans(nn.Linear(6, 3), bits=2), torch.randn(3, 6)),
        (uniform(nn.Embedding(30, 16, padding_idx=1), bits=4, granularity="group", group_size=8), tokens),
        (kmeans(nn.Embedding(30, 16), bits=3), tokens),
        (uniform(nc.prune.magnitude(nn.Linear(6, 3), sparsity=0.5), bits=3, granularity="tensor"), torch.randn(3, 6)),
    ]
    for module, inputs in layers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(module)
        torch.testing.assert_close(scripted(inputs), module(inputs))
        rebuilt = build(describe(module), "test")
        rebuilt.load_state_dict(module.state_dict())
        assert torch.equal(rebuilt(inputs), module(inputs))
    embedding = layers[3][0]
    assert isinstance(embedding, QuantizedEmbedding)
    assert torch.equal(embedding(tokens), embedding.weight[tokens])


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
    from netcompress.quantize.kmeans import KMEANS_ITERATIONS

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
    for q in (kmeans(pruned, bits=4), uniform(pruned, bits=4), uniform(pruned, bits=4, symmetric=False),
              binary(pruned), ternary(pruned)):
        assert (q.weight.detach()[~pruned.mask] == 0).all()


def test_a_pruned_layer_quantized_a_few_rows_at_a_time_is_the_same(monkeypatch):
    import netcompress._core.tensors

    pruned = nc.prune.magnitude(_layer(20, 30), sparsity=0.6)
    x = torch.randn(64, 30) * torch.linspace(0.1, 3, 30)
    stats = nc.collect(nn.Sequential(pruned), x, progress=False)["0"]
    whole = uniform(pruned, stats, bits=3, granularity="group", group_size=10, symmetric=False)
    monkeypatch.setattr(netcompress._core.tensors, "ROW_BLOCK_ELEMENTS", 30 * 3)
    blocked = uniform(pruned, stats, bits=3, granularity="group", group_size=10, symmetric=False)
    for a, b in zip(whole.state_dict().values(), blocked.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_entirely_pruned_group_quantizes_to_zeros():
    layer = nc.prune.magnitude(nn.Linear(10, 8), sparsity=0.5)
    with torch.no_grad():
        layer.mask[:2] = False  # the first two output channels lose every weight
    q = uniform(layer, bits=4, granularity="group", group_size=5)
    assert (q.weight.detach()[:2] == 0).all() and torch.isfinite(q.scale).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="uniform", bits=0), "bits must be an integer from 1 to 8"),
    (dict(method="kmeans", bits=9), "bits must be an integer from 1 to 8"),
    (dict(method="uniform", bits=4, granularity="group"), "needs group_size"),
    (dict(method="uniform", bits=4, granularity="group", group_size=16), "group_size 16 does not divide .* 40 inputs"),
    (dict(method="uniform", bits=4, granularity="row"), "granularity must be"),
    (dict(method="uniform", bits=1), "symmetric 1-bit"),
    (dict(method="uniform", bits=4, symmetric="yes"), "(?i)symmetric must be true or false"),
    (dict(method="kmeans", bits=4, init="kmeans++"), "init must be"),
])
def test_bad_quantization_settings(kwargs, message):
    model = nn.Sequential(nn.Linear(40, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        nc.compress(model, progress=False, **kwargs)
    assert type(model[0]) is nn.Linear and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_check_refuses_before_anything_is_built():
    layer = nn.Linear(40, 8)
    with pytest.raises(ValueError, match="does not divide this layer's 40 inputs per output row; choose a divisor"):
        check_uniform(layer, bits=4, granularity="group", group_size=32)
    with pytest.raises(TypeError, match="needs bits"):
        check_uniform(layer)
    with pytest.raises(ValueError, match="max_norm"):
        check_uniform(nn.Embedding(10, 4, max_norm=1.0), bits=4)
    check_uniform(layer, bits=4, granularity="group", group_size=20)
