"""Layers real models are made of: padding wrappers, grouped convs, attention, tied weights; all or nothing."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc


class StaticSamePaddingConv(nn.Conv2d):
    """TensorFlow-style 'SAME' convolution with its padding fixed at construction (as EfficientNet's)."""

    def __init__(self, cin, cout, k, stride, image_size):
        super().__init__(cin, cout, k, stride, bias=False)
        pad = max((math.ceil(image_size / stride) - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class DynamicPaddingConv(nn.Conv2d):
    def forward(self, x):  # pads from the input size: netcompress cannot know what it computes
        return super().forward(F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)))


class MobileBlock(nn.Module):
    """Stem with static 'same' padding, a depthwise conv, a pointwise conv, a 'same'-padded conv, a head."""

    def __init__(self):
        super().__init__()
        self.stem = StaticSamePaddingConv(3, 16, 3, 2, 16)
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.pointwise = nn.Conv2d(16, 24, 1)
        self.same = nn.Conv2d(24, 24, 4, padding="same")
        self.dynamic = DynamicPaddingConv(24, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.pointwise(F.relu(self.depthwise(x))))
        x = F.relu(self.dynamic(F.relu(self.same(x))))
        return self.head(x.mean((2, 3)))


def _images(n=24, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _unchanged(model, before):
    state, types = before
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in state.items())
    assert [type(m) for m in model.modules()] == types


def test_every_weight_layer_ends_in_the_report_and_padded_convs_are_compressed():
    torch.manual_seed(0)
    model = MobileBlock().eval()
    x = _images()
    reference = model(x)
    report = nc.compress(model, x, method="dalr", keep=0.9, progress=False)
    status = {r.name: (r.status, r.note) for r in report.rows}
    assert set(status) == {"stem", "depthwise", "pointwise", "same", "dynamic", "head"}
    assert status["stem"][0] == "compressed" and status["same"][0] == "compressed"
    assert status["depthwise"][0] == "left dense" and "grouped" in status["depthwise"][1]
    assert status["dynamic"][0] == "left dense" and "overrides forward" in status["dynamic"][1]
    out = model(x)
    assert out.shape == reference.shape and torch.isfinite(out).all()


def test_padded_conv_statistics_and_full_rank_factorization_are_exact():
    torch.manual_seed(0)
    model = MobileBlock().eval()
    x = _images()
    stats = nc.collect(model, x, ["stem", "same"], progress=False)
    for name in ("stem", "same"):
        layer = model.get_submodule(name)
        inputs = []
        handle = layer.register_forward_hook(lambda m, a, o, seen=inputs: seen.append(a[0]))
        model(x)
        handle.remove()
        padded = layer.static_padding(inputs[0]) if name == "stem" else F.pad(inputs[0], layer._reversed_padding_repeated_twice)
        cols = F.unfold(padded, layer.kernel_size, stride=layer.stride).transpose(1, 2).reshape(-1, layer.weight[0].numel())
        torch.testing.assert_close(stats[name].gram, cols.double().T @ cols.double(), rtol=1e-6, atol=1e-6)
    full = copy.deepcopy(model)
    full_rank = {"stem": 16, "same": 24}
    nc.compress(full, x, method="svd", rank=full_rank, progress=False)
    torch.testing.assert_close(full(x), model(x), rtol=1e-4, atol=1e-4)


def test_grouped_convolutions_keep_one_gram_block_per_group():
    conv = nn.Conv2d(12, 12, 3, padding=1, groups=4)
    x = torch.randn(5, 12, 6, 6)
    m = nc.collect(nn.Sequential(conv), x, progress=False)["0"]
    assert m.gram.shape == (4, 27, 27)
    cols = F.unfold(F.pad(x, (1, 1, 1, 1)), 3).transpose(1, 2).reshape(-1, 108).double()
    for g in range(4):
        block = cols[:, g * 27:(g + 1) * 27]
        torch.testing.assert_close(m.gram[g], block.T @ block)
    # the error of a grouped layer reads its own group's block
    noisy = conv.weight.detach() + 0.01 * torch.randn_like(conv.weight)
    y = conv(x)
    y_hat = F.conv2d(x, noisy, conv.bias, padding=1, groups=4)
    expected = ((y - y_hat).norm() / y.norm()).item()
    got = nc.relative_output_error(conv.weight, conv.bias, noisy, conv.bias, m, groups=4)
    assert got == pytest.approx(expected, rel=1e-4)


def test_quantization_takes_grouped_convolutions():
    model = MobileBlock().eval()
    x = _images()
    report = nc.compress(model, x, method="uniform", bits=8, progress=False)
    assert report["depthwise"].status == "compressed"
    assert report["depthwise"].relative_error < 0.05
    assert torch.isfinite(model(x)).all()


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_multihead_attention_projection_is_left_dense_and_the_model_runs():
    torch.manual_seed(0)
    model = Attention().eval()
    x = torch.randn(6, 5, 16)
    report = nc.compress(model, x, method="dalr", keep=0.5, progress=False)
    assert report["attn.out_proj"].status == "left dense"
    assert "MultiheadAttention" in report["attn.out_proj"].note
    assert report["fc"].status == "compressed"
    assert model(x).shape == (6, 5, 4)
    with pytest.raises(ValueError, match="attn.out_proj.*MultiheadAttention"):
        nc.compress(Attention(), x, method="dalr", keep=0.5, layers=["attn.out_proj"], progress=False)


def test_tied_weights_are_left_dense():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.body = nn.Linear(8, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(torch.relu(self.body(self.embed(ids))))

    model = Tied()
    ids = torch.randint(0, 20, (16, 4))
    report = nc.compress(model, ids, method="svd", rank=4, progress=False)
    assert report["head"].status == "left dense" and "tied" in report["head"].note
    assert model.head.weight is model.embed.weight
    assert model(ids).shape == (16, 4, 20)


class ReadsItsWeight(nn.Module):
    """A model whose forward computes with a layer's weight directly: replacing the layer breaks it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.fc(x) * self.fc.weight.mean())


class ReadsItsWeightsDtype(ReadsItsWeight):
    """Reads only the weight's dtype (no computation netcompress sees), yet a replacement without one breaks it."""

    def forward(self, x):
        return self.out(self.fc(x.to(self.fc.weight.dtype)))


@pytest.mark.parametrize("method, settings", [("dalr", {"rank": 2}), ("magnitude", {"sparsity": 0.5})])
def test_a_layer_whose_weight_the_model_computes_with_is_not_replaced_by_one_without(method, settings):
    model = ReadsItsWeight()
    x = torch.randn(32, 8)
    report = nc.compress(model, x, method=method, progress=False, **settings)
    note = report["fc"].note
    assert "its weight is also read directly by the model's forward (torch.mean)" in note
    if method == "magnitude":  # a masked layer's .weight is the pruned weight it computes with
        assert report["fc"].replaced and "its replacement's weight is what that module now computes with" in note
    else:
        assert report["fc"].status == "left dense" and type(model.fc) is nn.Linear
    assert model(x).shape == (32, 2)


def test_a_model_broken_by_the_swap_is_put_back():
    model = ReadsItsWeightsDtype()
    x = torch.randn(32, 8)
    before = _state(model)
    with pytest.raises(ValueError, match="failed at forward.*left unchanged"):
        nc.compress(model, x, method="dalr", rank=2, progress=False)
    _unchanged(model, before)
    assert model(x).shape == (32, 2)


def test_errors_leave_the_model_as_it_was():
    model = MobileBlock()
    x = _images()
    before = _state(model)
    with pytest.raises(ValueError, match="layer 'nothere' does not exist"):
        nc.compress(model, x, method="magnitude", sparsity={"pointwise": 0.5, "nothere": 0.2}, progress=False)
    _unchanged(model, before)
    with pytest.raises(ValueError, match="layer 'head'.*sparsity must be a fraction"):
        nc.compress(model, x, method="magnitude", sparsity={"pointwise": 0.5, "head": 1.5}, progress=False)
    _unchanged(model, before)
    with pytest.raises(ValueError, match="lam must be a finite number"):
        nc.compress(model, x, method="dalr", rank=2, lam=float("inf"), layers=["head"], progress=False)
    _unchanged(model, before)
    with pytest.raises(ValueError, match="keep must be a fraction"):
        nc.compress(model, x, method="dalr", keep=1.5, progress=False)
    _unchanged(model, before)


def test_settings_are_refused_before_the_statistics_pass():
    class Exploding:
        def __iter__(self):
            raise AssertionError("the data was read before the settings were checked")

    for method, settings in [("dalr", {"rank": 10_000}), ("dalr", {"keep": 0.5, "lam": -1.0}),
                             ("magnitude", {"sparsity": 1.5}), ("channel", {"sparsity": 0.5, "criterion": "bogus"})]:
        with pytest.raises(ValueError):
            nc.compress(MobileBlock(), Exploding(), method=method, progress=False, **settings)


def test_nan_weights_and_empty_data_are_refused():
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf weights"):
        nc.compress(model, torch.randn(20, 6), method="dalr", rank=1, layers=["2"], progress=False)
    with pytest.raises(ValueError, match="empty tensor"):
        nc.compress(nn.Sequential(nn.Linear(6, 2)), torch.zeros(0, 6), method="dalr", rank=1, progress=False)


def test_fewer_samples_than_features_warns_and_reports_held_out_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.warns(UserWarning, match="fewer target samples than input features"):
        report = nc.compress(model, torch.randn(40, 64), method="dalr", rank=8, layers=["0"], progress=False)
    row = report["0"]
    assert "samples < 64 input features" in row.note
    assert row.heldout_error is not None and row.heldout_error > row.relative_error


def test_dalr_never_loses_to_svd_on_held_out_data_with_few_samples():
    """With fewer samples than inputs, shrinkage moves DALR towards SVD instead of overfitting."""
    g = torch.Generator().manual_seed(0)
    p, out = 96, 48
    mixing = torch.randn(p, p, generator=g) * torch.logspace(0, -1.5, p)  # correlated inputs, decaying spectrum
    layer = nn.Linear(p, out)
    calibration = torch.randn(40, p, generator=g) @ mixing.T
    heldout = torch.randn(2000, p, generator=g) @ mixing.T
    stats = nc.collect(layer, calibration, progress=False)[""]
    truth = nc.collect(layer, heldout, progress=False)[""]
    for k in range(1, out + 1, 4):
        errors = {}
        for name in ("svd", "dalr"):
            f = getattr(nc.lowrank, name)(layer, stats, k)
            A, B, b = f.factors(k)
            errors[name] = nc.relative_output_error(layer.weight, layer.bias, (A @ B).float(), b, truth)
        assert errors["dalr"] <= errors["svd"] + 1e-9, (k, errors)
    # without shrinkage the same regression overfits the 40 samples at some rank
    overfit = []
    for k in range(1, out + 1, 4):
        f = nc.lowrank.dalr(layer, stats, k, shrinkage=0)
        A, B, b = f.factors(k)
        fs = nc.lowrank.svd(layer, stats, k)
        As, Bs, bs = fs.factors(k)
        overfit.append(nc.relative_output_error(layer.weight, layer.bias, (A @ B).float(), b, truth)
                       > nc.relative_output_error(layer.weight, layer.bias, (As @ Bs).float(), bs, truth))
    assert any(overfit)


def test_budget_leaves_a_layer_dense_where_factoring_saves_too_little():
    torch.manual_seed(0)
    # a tiny full-rank layer beside a large nearly low-rank one: the budget should factor the large one
    big = nn.Linear(256, 256)
    with torch.no_grad():
        big.weight.copy_(torch.randn(256, 4) @ torch.randn(4, 256) / 16 + 0.001 * torch.randn(256, 256))
    model = nn.Sequential(big, nn.ReLU(), nn.Linear(256, 6))
    x = torch.randn(600, 256)
    report = nc.compress(model, x, method="dalr", budget=0.5, progress=False)
    assert report["0"].status == "compressed"
    assert report["2"].status == "left dense" and "budget" in report["2"].note
    assert report.params_after <= 0.5 * report.params_before


def test_finetune_can_keep_batchnorm_statistics_frozen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    before = model[1].running_mean.clone(), model[1].running_var.clone()
    data = (torch.randn(64, 4) * 3 + 2, torch.randint(0, 2, (64,)))
    nc.finetune(model, data, epochs=1, lr=1e-2, freeze_batchnorm=True, progress=False)
    assert torch.equal(model[1].running_mean, before[0]) and torch.equal(model[1].running_var, before[1])
    nc.finetune(model, data, epochs=1, lr=1e-2, progress=False)
    assert not torch.equal(model[1].running_mean, before[0])


class KeywordNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, features=None, scale=None):
        return self.fc2(torch.relu(self.fc1(features * scale)))


def test_structured_pruning_with_keyword_inputs():
    torch.manual_seed(0)
    model = KeywordNet()
    batches = [{"features": torch.randn(16, 12), "scale": torch.ones(16, 1)} for _ in range(4)]
    report = nc.compress(model, batches, method="channel", sparsity=0.5, progress=False)
    assert model.fc1.out_features == 16 and model.fc2.in_features == 16
    assert report["fc1"].status == "compressed"
    assert model(**batches[0]).shape == (16, 3)


def test_exclude_leaves_layers_as_they_are():
    model = MobileBlock()
    report = nc.compress(model, _images(), method="magnitude", sparsity=0.5, exclude=["head", "re:point.*"],
                         progress=False)
    assert report["head"].status == "not selected" and report["pointwise"].status == "not selected"
    assert type(model.head) is nn.Linear and type(model.pointwise) is nn.Conv2d
    with pytest.raises(ValueError, match="exclude names layer 'nope'"):
        nc.compress(MobileBlock(), _images(), method="magnitude", sparsity=0.5, exclude=["nope"], progress=False)


def test_a_warning_free_run_with_enough_samples():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nc.compress(model, torch.randn(200, 8), method="dalr", rank=2, progress=False)
