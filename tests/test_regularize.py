"""Low-rank regularization: the proximal step against NumPy's SVD, effective ranks, and NuclearNorm in finetune."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet, StopAfter
from netcompress.distill import NuclearNorm, effective_rank, effective_ranks, singular_value_threshold

pytestmark = pytest.mark.usefixtures("one_thread")


def _numpy_threshold(matrix: np.ndarray, threshold: float) -> np.ndarray:
    """``U·max(Σ − threshold, 0)·Vᵀ`` of the (rows, rest) matrix, reshaped back."""
    u, s, vh = np.linalg.svd(matrix.reshape(len(matrix), -1).astype(np.float64), full_matrices=False)
    return ((u * np.maximum(s - threshold, 0)) @ vh).reshape(matrix.shape)


def test_singular_value_threshold_is_numpys_soft_thresholding():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(12, 7))
    s = np.linalg.svd(matrix, compute_uv=False)
    threshold = float(np.median(s))  # about half of the singular values become zero
    got = singular_value_threshold(torch.tensor(matrix), threshold)
    np.testing.assert_allclose(got.numpy(), _numpy_threshold(matrix, threshold), rtol=0, atol=1e-12)
    assert np.linalg.matrix_rank(got.numpy(), tol=1e-9) == int((s > threshold).sum()) < len(s)
    np.testing.assert_allclose(singular_value_threshold(torch.tensor(matrix), 0.0).numpy(), matrix, atol=1e-12)
    assert not singular_value_threshold(torch.tensor(matrix), s[0] * 1.01).any()
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        singular_value_threshold(torch.tensor(matrix), -1.0)


def test_proximal_step_on_linear_and_conv_layers_is_numpys_soft_thresholding():
    torch.manual_seed(0)
    model = SmallNet()
    before = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
    lr, weight = 0.05, 3.0
    NuclearNorm(weight=weight).step(model, lr)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = getattr(model, name)
        assert layer.weight.dtype == torch.float32
        expected = _numpy_threshold(before[f"{name}.weight"], lr * weight)  # conv: its (out, in·kh·kw) matrix
        np.testing.assert_allclose(layer.weight.detach().double().numpy(), expected, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(layer.bias.detach().numpy(), before[f"{name}.bias"])  # biases untouched
    # Only the named layers move.
    model = SmallNet()
    conv1 = model.conv1.weight.detach().clone()
    NuclearNorm(weight=weight, layers=["conv2"]).step(model, lr)
    assert torch.equal(model.conv1.weight, conv1)


def test_effective_rank_counts_the_singular_values_that_keep_the_energy():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(9, 9)))
    v, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    s = np.array([3.0, 2.0, 1.0, 0.1, 0.0, 0.0])  # squared: 9, 4, 1, 0.01 of 14.01
    matrix = torch.tensor((u[:, :6] * s) @ v.T)
    assert [effective_rank(matrix, e) for e in (0.5, 0.9, 0.99, 0.9999, 1.0)] == [1, 2, 3, 4, 4]
    assert effective_rank(matrix.reshape(9, 2, 3, 1)) == 3  # a conv weight is its (out, in·kh·kw) matrix
    assert effective_rank(torch.zeros(4, 5)) == 0
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="energy must be in"):
            effective_rank(matrix, bad)


def test_layers_without_a_plain_weight_are_skipped_with_a_reason_or_refused_when_named():
    torch.manual_seed(0)
    model = nn.Sequential(SmallNet(), nn.Conv2d(4, 4, 3, groups=2), nn.Linear(3, 3))
    nc.compress(model, method="magnitude", sparsity=0.5, layers=["0.fc1"], progress=False)
    nc.compress(model, method="kmeans", bits=3, layers=["0.conv2"], progress=False)
    model[2].weight.requires_grad_(False)
    regularizer = NuclearNorm(weight=1.0)
    assert sorted(regularizer.select(model)) == ["0.conv1", "0.fc2"]
    assert set(regularizer.skipped) == {"0.fc1", "1", "2"}  # the quantized conv2 is no Linear/Conv2d any more
    assert "mask" in regularizer.skipped["0.fc1"] and "groups=2" in regularizer.skipped["1"]
    assert "frozen" in regularizer.skipped["2"]
    ranks = effective_ranks(model)
    assert set(ranks) == {"0.conv1", "0.fc1", "0.fc2", "2"}
    fc1 = model[0].fc1
    assert ranks["0.fc1"] == effective_rank(fc1.weight * fc1.mask)  # a pruned layer: the weight it applies
    for name, message in [("0.fc1", "pruned layer"), ("0.conv2", "not a Linear or Conv2d"), ("1", "grouped"),
                          ("2", "frozen"), ("fc9", "no layer named 'fc9'")]:
        with pytest.raises(ValueError, match=message):
            NuclearNorm(weight=1.0, layers=[name]).select(model)
    for bad in (0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="NuclearNorm weight must be a positive number"):
            NuclearNorm(weight=bad)


def test_finetune_applies_the_proximal_step_with_each_steps_learning_rate():
    torch.manual_seed(0)
    model = SmallNet()
    start = model.fc1.weight.detach().double().numpy().copy()
    x, y = torch.randn(24, 3, 8, 8), torch.randint(0, 10, (24,))
    lr, weight, epochs, steps = 0.05, 2.0, 2, 3  # 24 samples in batches of 8
    regularizer = NuclearNorm(weight=weight, layers=["fc1"])
    nc.finetune(model, (x, y), loss=StopAfter(), epochs=epochs, lr=lr, batch_size=8, schedule="cosine",
                regularize=regularizer, progress=False)
    # The loss moves nothing, so W went through successive soft-thresholdings, which add their thresholds.
    rates = [lr * (1 + np.cos(np.pi * t / (epochs * steps))) / 2 for t in range(epochs * steps)]
    expected = _numpy_threshold(start, weight * sum(rates))
    np.testing.assert_allclose(model.fc1.weight.detach().double().numpy(), expected, rtol=0, atol=1e-5)
    assert regularizer.ranks_before == {"fc1": effective_rank(torch.tensor(start))}
    assert regularizer.ranks_after == {"fc1": effective_rank(model.fc1.weight)}
    assert regularizer.ranks_after["fc1"] < regularizer.ranks_before["fc1"]
    assert "fc1" in regularizer.table()


class _CrossEntropy(nn.Module):
    def forward(self, batch):
        return nn.functional.cross_entropy(batch.student, batch.labels)


def test_resuming_with_a_regularizer_equals_an_uninterrupted_run(tmp_path):
    x, y = torch.randn(24, 3, 8, 8), torch.randint(0, 10, (24,))
    torch.manual_seed(0)
    start = SmallNet()

    def run(model, stop_after, checkpoint):
        regularizer = NuclearNorm(weight=5.0)
        nc.finetune(model, (x, y), loss=[_CrossEntropy(), StopAfter(stop_after)],
                    epochs=3, lr=1e-2, batch_size=8, regularize=regularizer, checkpoint=checkpoint, progress=False)
        return model, regularizer

    straight, straight_ranks = run(copy.deepcopy(start), None, None)
    killed = copy.deepcopy(start)
    with pytest.raises(KeyboardInterrupt):
        run(killed, 2 * 3 + 1, tmp_path / "ckpt.pt")  # killed in the third epoch
    assert effective_ranks(killed) != effective_ranks(start)  # already regularized when training resumes
    resumed, resumed_ranks = run(killed, None, tmp_path / "ckpt.pt")
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    # The ranks of the run's start come from the checkpoint, not from the model training resumed with.
    assert resumed_ranks.ranks_before == straight_ranks.ranks_before == effective_ranks(start)
    assert resumed_ranks.ranks_after == straight_ranks.ranks_after


def _digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    digits = sklearn_datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def test_nuclear_norm_lowers_the_ranks_that_dalr_needs_on_real_digits():
    (x, y), (x_test, y_test) = _digits()
    torch.manual_seed(0)
    trained = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    nc.finetune(trained, (x, y), epochs=15, lr=3e-3, batch_size=64, seed=0, progress=False)

    def tuned(regularize):
        model = copy.deepcopy(trained)
        nc.finetune(model, (x, y), epochs=5, lr=3e-3, batch_size=64, seed=1, regularize=regularize, progress=False)
        return model

    plain, regularizer = tuned(None), NuclearNorm(weight=3.0)
    low = tuned(regularizer)
    assert regularizer.ranks_before == effective_ranks(trained) and regularizer.ranks_after == effective_ranks(low)
    plain_ranks = effective_ranks(plain)
    assert all(regularizer.ranks_after[name] < rank for name, rank in plain_ranks.items())
    # Not by wrecking the network: it still classifies held-out digits about as well.
    assert nc.distill.accuracy(low, x_test, y_test) >= nc.distill.accuracy(plain, x_test, y_test) - 5
    kept = [nc.compress(model, x, method="dalr", energy=0.95, progress=False).params_after for model in (plain, low)]
    assert kept[1] < kept[0]
