"""Static activation quantization: input histograms, the clip choice, w8a8 layers, their integer kernel and files."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import digits_trained
from netcompress.quantize.activations import input_grid
from netcompress.stats.ranges import (
    BINS,
    LOW_EXPONENT,
    PER_OCTAVE,
    clip_error,
    empty_histogram,
    fold_values,
    percentile,
)
from netcompress.stats.split import heldout_mask


def _values(seed=0, n=20000):
    g = torch.Generator().manual_seed(seed)
    # a ReLU-like input with a heavy tail and exact zeros, as real activations are
    return torch.relu(torch.randn(n, generator=g) * 0.7 + 0.2) + (torch.rand(n, generator=g) < 0.002) * 9.0


def test_the_histogram_counts_every_value_in_its_log_bin_and_keeps_the_peaks():
    x = torch.cat([_values(), -_values(1)[:500], torch.tensor([0.0, 2.0 ** -30, 1e9])])
    histogram, peaks = empty_histogram()
    for chunk in x.split(777):  # streaming: batches add up
        fold_values(histogram, peaks, chunk)
    assert float(histogram.sum()) == x.numel()
    assert peaks.tolist() == [float(x.max()), float(-x.min())]
    v = x.double().numpy()
    for sign, row in ((1, 0), (-1, 1)):
        part = np.abs(v[(v > 0) if sign > 0 else (v < 0)])
        index = np.clip(np.floor((np.log2(part) - LOW_EXPONENT) * PER_OCTAVE) + 1, 0, BINS - 1).astype(int)
        expected = np.bincount(index, minlength=BINS)
        if sign > 0:
            expected[0] += int((v == 0).sum())
        np.testing.assert_array_equal(histogram[row].numpy(), expected)


def test_percentile_and_clip_error_follow_the_values_they_summarise():
    x = _values()
    histogram, peaks = empty_histogram()
    fold_values(histogram, peaks, x)
    true = float(np.quantile(x.abs().numpy(), 0.99))
    assert true <= percentile(histogram, peaks, 0.99) <= true * 2 ** (1 / PER_OCTAVE) * 1.001  # the bin's upper edge
    for high in (0.5, 1.5, 3.0, float(x.max())):
        levels = 256 if high > 1 else 16
        step = high / (levels - 1)
        direct = ((torch.round(x.clamp(0, high) / step) * step - x) ** 2).mean().item()
        assert clip_error(histogram, 0.0, high, levels) == pytest.approx(direct, rel=0.12), high


def _moments(x):
    model = nn.Sequential(nn.Linear(x.shape[1], 4))
    stats = nc.collect(model, x, holdout=0.5, progress=False)
    return stats["0"], stats.heldout["0"]


def test_auto_keeps_the_clip_with_the_least_error_on_the_heldout_samples():
    x = _values(n=40000).reshape(-1, 8)
    fitted, heldout = _moments(x)
    held = x[heldout_mask(0, len(x), 0.5)]
    grids = {clip: input_grid("0", fitted, heldout, 4, clip) for clip in ("minmax", "percentile", "mse")}
    auto = input_grid("0", fitted, heldout, 4, "auto")
    assert auto.judged_on == "held-out"
    assert auto.error == min(g.error for g in grids.values()) and auto.clip == min(grids, key=lambda c: grids[c].error)
    # the MSE clip is fitted on the fitted samples: on them it beats min/max, the outliers' grid
    fitted_mse = {c: clip_error(fitted.input_histogram, (g.quant_min - g.zero_point) * g.scale,
                                (g.quant_max - g.zero_point) * g.scale, 16) for c, g in grids.items()}
    assert fitted_mse["mse"] < fitted_mse["minmax"]
    assert grids["minmax"].scale == pytest.approx(float(held.max()) / 15, rel=0.2)


def test_w8a8_layers_round_their_inputs_then_multiply_in_integers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    x, y = digits_trained(model, epochs=5)
    for symmetric in (True, False):
        compressed = copy.deepcopy(model)
        report = nc.compress(compressed, x[:1400], nc.Uniform(bits=8, symmetric=symmetric, activations=8),
                             progress=False, eval_data=(x[1400:], y[1400:]))
        layer = compressed[0]
        s, z = float(layer.input_scale), int(layer.input_zero_point)
        assert s > 0 and 0 <= z <= 255
        rounded = (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s  # the grid written directly
        with torch.no_grad():
            expected = nn.functional.linear(rounded, layer.weight, layer.bias)
            got = layer(x)
        assert layer._prepared.kind == "w8a8"
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert report.fidelity.agreement >= 0.98
        assert all("input grid 8-bit" in row.note for row in report.rows)


def test_the_rows_error_estimate_follows_the_measured_heldout_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    x, _ = digits_trained(model, epochs=5)
    data = x[:1400]
    held = data[heldout_mask(0, len(data), 0.2)]
    with torch.no_grad():
        hidden = torch.relu(model[0](held))
        target = model[2](hidden)
    for bits in (4, 6):
        compressed = copy.deepcopy(model)
        report = nc.compress(compressed, data, {"2": nc.Uniform(bits=8, activations=bits)}, progress=False)
        with torch.no_grad():
            measured = float((compressed[2](hidden) - target).norm() / target.norm())
        assert report["2"].heldout_error == pytest.approx(measured, rel=0.35), bits


def test_w4a8_saves_and_loads_its_input_grid(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x, _ = digits_trained(model, epochs=2)
    compressed = copy.deepcopy(model)
    report = nc.compress(compressed, x[:1400], nc.GPTQ(bits=4, activations=8), progress=False)
    nc.save(compressed, tmp_path / "out", report)
    loaded = nc.load(copy.deepcopy(model), tmp_path / "out")
    assert loaded[0].input_bits == 8 and torch.equal(loaded[0].input_scale, compressed[0].input_scale)
    with torch.no_grad():
        assert torch.equal(loaded(x), compressed(x))
    scripted = torch.jit.script(compressed)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), compressed(x))


def test_bad_activation_settings_and_inputs_are_refused_in_one_sentence():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="activations is the input code width"):
        nc.Uniform(bits=8, activations=9)
    with pytest.raises(ValueError, match="activation_clip must be one of"):
        nc.Uniform(bits=8, activations=8, activation_clip="max")
    with pytest.raises(ValueError, match="needs target data"):
        nc.compress(copy.deepcopy(model), None, nc.Uniform(bits=8, activations=8), progress=False)
    with pytest.raises(ValueError, match="an embedding's input is token ids"):
        nc.compress(copy.deepcopy(model), torch.randint(0, 10, (32, 3)), nc.Uniform(bits=8, activations=8),
                    layers=["0"], progress=False)


def test_a_w8a8_pointwise_convolution_takes_the_integer_product_over_its_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 1), nn.ReLU(),
                          nn.Conv2d(24, 8, 3, padding=1))
    x = torch.randn(32, 3, 12, 12)
    nc.compress(model, [x], nc.Uniform(bits=8, activations=8), progress=False)
    pointwise, spatial = model[2], model[4]
    with torch.no_grad():
        hidden = torch.relu(model[0](x))
        expected = nn.functional.conv2d(pointwise._quantize_input(hidden), pointwise.weight, pointwise.bias)
        torch.testing.assert_close(pointwise(hidden), expected, atol=1e-5, rtol=1e-5)
        model(x)
    assert pointwise._prepared.kind == "w8a8"
    assert getattr(spatial, "_prepared", None) is None  # a 3×3 kernel rounds its input and convolves in float
