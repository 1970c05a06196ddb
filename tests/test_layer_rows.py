"""Every weight layer gets a Report row, whatever wraps it, and compress keeps what the user set on it.

* layers re-parametrised by ``torch.nn.utils.prune``, ``weight_norm`` or ``parametrize`` are
  compressed through the weight they compute with, exactly as the equivalent plain layer;
* a frozen layer (``requires_grad=False``) comes out frozen, for every registered method;
* a layer whose parent computes with its weight directly (``F.linear(x, self.qkv.weight)``, as
  torchvision's Swin does) is left dense with the reason, or compressed only where the parent
  then computes with the compressed weight.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune

import netcompress as nc
from conftest import SmallNet
from netcompress._core.tensors import weight_matrix
from test_compress import _data

# ---- 1. re-parametrised layers --------------------------------------------------------------------------------


class _Doubled(nn.Module):
    """A custom parametrization: the layer computes with twice its stored weight."""

    def forward(self, weight):
        return 2 * weight


def _reparametrise(layer: nn.Module, kind: str) -> str:
    """Re-parametrise ``layer`` in place; returns the utility the Report should name."""
    if kind == "prune":
        prune.l1_unstructured(layer, "weight", amount=0.5)
        return "torch.nn.utils.prune"
    if kind == "weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of parametrizations.weight_norm
            torch.nn.utils.weight_norm(layer)
        return "torch.nn.utils.weight_norm"
    if kind == "parametrizations.weight_norm":
        torch.nn.utils.parametrizations.weight_norm(layer)
        return "torch.nn.utils.parametrizations.weight_norm"
    parametrize.register_parametrization(layer, "weight", _Doubled())
    return "torch.nn.utils.parametrize"



class _Tiny(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(8, 16)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        y = torch.relu(self.fc(x)).reshape(-1, 1, 4, 4)
        return self.head(torch.relu(self.conv(y)).flatten(1))


KINDS = ["prune", "weight_norm", "parametrizations.weight_norm", "parametrize"]
METHODS = [("svd", {"rank": 2}), ("dalr", {"rank": 2}), ("magnitude", {"sparsity": 0.5}), ("uniform", {"bits": 4}),
           ("gptq", {"bits": 4})]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("method", "settings"), METHODS, ids=[m for m, _ in METHODS])
def test_a_reparametrised_layer_is_compressed_as_the_plain_layer_of_its_effective_weight(kind, method, settings):
    x = torch.randn(48, 8, generator=torch.Generator().manual_seed(1))
    model, plain = _Tiny(0), _Tiny(0)
    utility = _reparametrise(model.fc, kind)
    _reparametrise(model.conv, kind)
    with torch.no_grad():
        expected = model(x)  # the pre-hooks/parametrizations computed the effective weights
        for name in ("fc", "conv"):
            getattr(plain, name).weight.copy_(getattr(model, name).weight)
    torch.testing.assert_close(plain(x), expected)
    report = nc.compress(model, x, method=method, progress=False, **settings)
    reference = nc.compress(plain, x, method=method, progress=False, **settings)
    assert [r.name for r in report.rows] == ["fc", "conv", "head"]  # before: 'fc' and 'conv' had no row at all
    for name in ("fc", "conv"):
        row, twin = report[name], reference[name]
        assert row.status == twin.status == "compressed"
        assert utility in row.note and "re-parametrisation is gone" in row.note
        assert (row.shape, row.params_before, row.params_after) == (twin.shape, twin.params_before, twin.params_after)
        assert row.relative_error == pytest.approx(twin.relative_error, rel=1e-5, abs=1e-7)
        assert type(getattr(model, name)) is type(getattr(plain, name))  # a plain netcompress layer
        assert not parametrize.is_parametrized(getattr(model, name)) and not getattr(model, name)._forward_pre_hooks
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_structured_pruning_leaves_a_reparametrised_layer_dense_and_says_how_to_undo_it(kind):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    utility = _reparametrise(model[4], kind)
    report = nc.compress(model, torch.randn(32, 8), method="channel", sparsity=0.5, progress=False)
    assert [r.name for r in report.rows] == ["0", "2", "4", "6"]  # before: no row for '4'
    assert report["0"].replaced and model[0].out_features == 8
    assert model[2].out_features == 16  # only its inputs follow layer 0: its own units feed the re-parametrised '4'
    assert report["4"].status == "left dense"
    assert f"it is re-parametrised by {utility}; call torch.nn.utils." in report["4"].note
    from netcompress._core.sources import reparametrized

    assert reparametrized(model[4]) == {"weight": utility}  # left exactly as it was


# ---- 2. frozen layers stay frozen ---------------------------------------------------------------------------------


def _expected_trainable(name: str) -> bool:
    """conv2 frozen whole; fc1's weight frozen, its bias trained; the rest trained."""
    return not (name.startswith("conv2") or (name.startswith("fc1") and name.rpartition(".")[2] != "bias"))


@pytest.mark.parametrize("method", sorted(nc.METHODS))
def test_requires_grad_survives_compress_for_every_method(method):
    model = SmallNet()
    model.conv2.requires_grad_(False)
    model.fc1.weight.requires_grad_(False)
    example = nc.METHODS[method].example
    report = nc.compress(model, _data().split(4), method=method, progress=False, **example)
    replaced = {r.name for r in report.rows if r.replaced}
    assert replaced & {"conv2", "fc1"} and replaced & {"conv1", "fc2"}, "one frozen and one trainable layer compressed"
    wrong = [(name, p.requires_grad) for name, p in model.named_parameters()
             if p.is_floating_point() and p.requires_grad != _expected_trainable(name)]
    assert not wrong, f"{method}: requires_grad not carried over for {wrong}"


def test_copy_trainability_takes_the_weight_flag_for_factors_and_the_bias_flag_for_the_bias():
    from netcompress._core.sources import copy_trainability

    old = nn.Linear(6, 5)
    old.weight.requires_grad_(False)
    new = nn.Sequential(nn.Linear(6, 2, bias=False), nn.Linear(2, 5))
    copy_trainability(new, old)
    assert [p.requires_grad for p in new.parameters()] == [False, False, True]
    prune.random_unstructured(old, "weight", amount=0.5)  # the weight now comes from weight_orig, still frozen
    copy_trainability(new, old)
    assert [p.requires_grad for p in new.parameters()] == [False, False, True]


# ---- 3. a parent that computes with its child's weight (torchvision's Swin) ----------------------------------------


class _Attention(nn.Module):
    """Swin-like: ``qkv`` is never called, its weight goes to F.linear."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        return self.proj(torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v)


class _SwinLike(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = _Attention()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.attn(x))


def _tokens():
    return torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(3))


def _as_reported(model: _SwinLike) -> _SwinLike:
    """What the Report claims: the original with proj and head as compressed, and qkv's weight as its row says."""
    claimed = _SwinLike()
    claimed.attn.proj, claimed.head = model.attn.proj, model.head
    with torch.no_grad():
        weight, bias = weight_matrix(model.attn.qkv)
        claimed.attn.qkv.weight.copy_(weight.reshape(claimed.attn.qkv.weight.shape))
        claimed.attn.qkv.bias.copy_(bias)
    return claimed


@pytest.mark.parametrize(("method", "settings"), [("dalr", {"rank": 2}), ("gptq", {"bits": 4}), ("svd", {"rank": 2})])
def test_a_weight_the_parent_computes_with_is_left_dense_where_the_replacement_has_none(method, settings):
    model, x = _SwinLike(), _tokens()
    report = nc.compress(model, x, method=method, progress=False, **settings)  # before: "saw no samples"
    row = report["attn.qkv"]
    assert row.status == "left dense"
    assert "its parent 'attn' computes with its weight directly (F.linear), so netcompress saw no inputs" in row.note
    assert type(model.attn.qkv) is nn.Linear and report["attn.proj"].replaced and report["head"].replaced
    with torch.no_grad():
        torch.testing.assert_close(model(x), _as_reported(model)(x), rtol=0, atol=0)


@pytest.mark.parametrize(("method", "settings"), [("magnitude", {"sparsity": 0.5}), ("uniform", {"bits": 4})])
def test_a_replacement_whose_weight_the_parent_reads_is_compressed_and_computed_with(method, settings):
    model, x = _SwinLike(), _tokens()
    original = _SwinLike()
    report = nc.compress(model, x, method=method, progress=False, **settings)
    row = report["attn.qkv"]
    assert row.status == "compressed" and "computes with its weight directly (F.linear)" in row.note
    assert row.params_after < row.params_before or row.bits is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), _as_reported(model)(x), rtol=0, atol=0)
        assert not torch.equal(model(x), original(x))  # the parent does compute with the compressed weight


def test_without_data_a_weight_the_parent_reads_in_its_source_is_not_factored_silently():
    model, x = _SwinLike(), _tokens()
    report = nc.compress(model, method="svd", rank=2, progress=False)  # before: a LowRankLinear the parent cannot read
    assert report["attn.qkv"].status == "left dense"
    assert "self.qkv.weight in _Attention" in report["attn.qkv"].note
    with torch.no_grad():
        torch.testing.assert_close(model(x), _as_reported(model)(x), rtol=0, atol=0)


def test_a_named_layer_whose_weight_the_parent_reads_raises_with_the_reason():
    model = _SwinLike()
    with pytest.raises(ValueError, match="'attn' computes with its weight directly"):
        nc.compress(model, _tokens(), method="dalr", rank=2, layers=["attn.qkv"], progress=False)
    with pytest.raises(ValueError, match="a factored replacement has no weight"):
        nc.compress(model, _tokens(), method="svd", rank=2, layers=["attn.qkv"], progress=False)
    assert type(model.attn.qkv) is nn.Linear


def test_collect_records_who_reads_a_weight_directly():
    stats = nc.collect(_SwinLike(), _tokens())
    assert "attn.qkv" not in stats and "attn.proj" in stats
    assert stats.skipped["attn.qkv"] == stats.read_directly["attn.qkv"]
    assert "F.linear" in stats.read_directly["attn.qkv"]
