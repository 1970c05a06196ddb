import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet
from netcompress.stats.collect import layers_called_once


def test_linear_statistics_match_direct_sums():
    layer = nn.Linear(6, 4)
    x = torch.randn(50, 6)
    stats = nc.collect(layer, x.split(7), progress=False)[""]
    X = x.double().numpy()
    np.testing.assert_allclose(stats.gram.numpy(), X.T @ X, rtol=1e-10)
    np.testing.assert_allclose(stats.input_sum.numpy(), X.sum(0), rtol=1e-10)
    assert stats.count == 50
    y = layer(x).detach().double().numpy()
    np.testing.assert_allclose(stats.activation_rate.numpy(), (y > 0).mean(0))
    np.testing.assert_allclose(stats.mean_response.numpy(), np.maximum(y, 0).mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.max_response.numpy(), np.maximum(y, 0).max(0), rtol=1e-6)
    assert stats.gram.dtype == torch.float64


def _patches(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """im2col by explicit loops, the reference for the unfold view."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    rows = []
    for i in range(n):
        for r in range(0, h + 2 * pad - k + 1, stride):
            for s in range(0, w + 2 * pad - k + 1, stride):
                rows.append(xp[i, :, r:r + k, s:s + k].reshape(-1))
    return np.array(rows)


def test_conv_statistics_use_the_im2col_view():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.randn(4, 3, 7, 7)
    stats = nc.collect(conv, x, progress=False)[""]
    P = _patches(x.double().numpy(), 3, 2, 1)
    np.testing.assert_allclose(stats.gram.numpy(), P.T @ P, rtol=1e-9, atol=1e-9)
    assert stats.count == len(P)
    y = conv(x).detach().double().numpy()
    np.testing.assert_allclose(stats.activation_rate.numpy(), (y > 0).mean(axis=(0, 2, 3)))


def test_conv_position_sampling_bounds_the_samples():
    conv = nn.Conv2d(2, 3, 3)
    stats = nc.collect(conv, torch.randn(5, 2, 10, 10), positions=7, seed=1, progress=False)[""]
    assert stats.count == 5 * 7
    again = nc.collect(conv, torch.randn(5, 2, 10, 10), positions=7, seed=1, progress=False)[""]
    assert again.count == stats.count


def test_batches_may_be_tuples_or_keyword_dicts():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, *, features):
            return self.fc(features)

    x = torch.randn(20, 3)
    by_tuple = nc.collect(nn.Sequential(nn.Linear(3, 2)), [(x, torch.zeros(20))], progress=False)["0"]
    by_dict = nc.collect(Keyword(), [{"features": x}], progress=False)["fc"]
    np.testing.assert_allclose(by_tuple.gram.numpy(), by_dict.gram.numpy())


def test_low_precision_models_accumulate_in_float64():
    layer = nn.Linear(8, 4).to(torch.bfloat16)
    x = torch.randn(30, 8)
    stats = nc.collect(layer, x, progress=False)[""]
    X = x.to(torch.bfloat16).double().numpy()
    assert stats.gram.dtype == torch.float64
    np.testing.assert_allclose(stats.gram.numpy(), X.T @ X, rtol=1e-10)


def test_model_is_left_in_its_mode_and_without_hooks():
    net = SmallNet().train()
    nc.collect(net, torch.randn(2, 3, 8, 8), progress=False)
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())


def test_empty_data_is_rejected():
    with pytest.raises(ValueError, match="data yielded no samples"):
        nc.collect(SmallNet(), [], progress=False)
    with pytest.raises(ValueError, match="empty tensor"):
        nc.collect(SmallNet(), torch.zeros(0, 3, 8, 8), progress=False)


def test_non_finite_activations_name_the_layer():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="layer '1' received NaN or Inf"):
        nc.collect(net, torch.ones(3, 4), progress=False)


def test_unknown_and_unsupported_layers_are_named():
    net = SmallNet()
    with pytest.raises(ValueError, match="layer 'fc9' does not exist"):
        nc.collect(net, torch.randn(1, 3, 8, 8), layers=["fc9"], progress=False)
    seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(ValueError, match="layer '1'.*a ReLU"):
        nc.collect(seq, torch.randn(2, 3), layers=["1"], progress=False)


def test_wrong_input_shape_gets_one_clear_sentence():
    with pytest.raises(ValueError, match="failed on batch 0 .*match the model's input"):
        nc.collect(nn.Linear(5, 2), torch.randn(3, 4), progress=False)


def test_wide_inputs_accumulate_the_symmetric_gram_by_blocks():
    from netcompress.stats.recorder import SYMMETRIC_BLOCKS_FROM

    layer = nn.Linear(SYMMETRIC_BLOCKS_FROM + 37, 3)
    x = torch.randn(64, SYMMETRIC_BLOCKS_FROM + 37)
    stats = nc.collect(layer, x.split(16), progress=False)[""]
    X = x.double().numpy()
    np.testing.assert_allclose(stats.gram.numpy(), X.T @ X, rtol=1e-10, atol=1e-10)
    assert torch.equal(stats.gram, stats.gram.T)


def test_statistics_round_trip_through_safetensors(tmp_path):
    net = SmallNet()
    stats = nc.collect(net, torch.randn(10, 3, 8, 8), holdout=0.2, progress=False)
    stats.save(tmp_path / "stats.safetensors")
    again = nc.LayerStats.load(tmp_path / "stats.safetensors")
    assert list(again) == list(stats) and again.skipped == stats.skipped
    for part, other in ((stats, again), (stats.heldout, again.heldout)):
        for name, m in part.items():
            o = other[name]
            assert (o.count, o.output_count, o.groups) == (m.count, m.output_count, m.groups)
            assert torch.equal(o.gram, m.gram) and torch.equal(o.norm4, m.norm4)
    (tmp_path / "other.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="not a statistics file"):
        nc.LayerStats.load(tmp_path / "other.safetensors")


def test_stopping_early_gives_the_same_statistics():
    net = SmallNet()
    data = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(4)).split(6)
    whole = nc.collect(net, data, ["conv1", "conv2"], holdout=0.2, progress=False)
    early = nc.collect(net, data, ["conv1", "conv2"], holdout=0.2, progress=False, stop_early=True)
    for part, other in ((whole, early), (whole.heldout, early.heldout)):
        for name, m in part.items():
            assert other[name].count == m.count
            torch.testing.assert_close(other[name].gram, m.gram, rtol=0, atol=0)


def test_stopping_early_is_off_when_a_layer_runs_twice_in_a_pass():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.fc(self.fc(x)))

    net, x = Twice(), torch.randn(12, 4).split(4)
    whole = nc.collect(net, x, ["fc"], progress=False)
    early = nc.collect(net, x, ["fc"], progress=False, stop_early=True)
    assert early["fc"].count == whole["fc"].count == 24
    assert not layers_called_once(net, x[0], ["fc", "out"]) and layers_called_once(net, x[0], ["out"])


def test_when_layers_are_known_to_run_once_even_the_first_pass_stops_at_them():
    net = SmallNet()
    data = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(4)).split(6)
    assert layers_called_once(net, data[0], ["conv1", "conv2", "fc1", "fc2"])
    later = []
    handle = net.fc2.register_forward_hook(lambda *_: later.append(1))  # fc2 runs after conv1, conv2
    early = nc.collect(net, data, ["conv1", "conv2"], progress=False, stop_early=True, called_once=True)
    handle.remove()
    whole = nc.collect(net, data, ["conv1", "conv2"], progress=False)
    assert not later  # no pass went past conv2, the first neither
    for name, m in whole.items():
        torch.testing.assert_close(early[name].gram, m.gram, rtol=0, atol=0)


class _Attention(nn.Module):
    """Query, key and value read one tensor; ``out`` reads another of the same shape."""

    def __init__(self, width: int = 6, in_place: bool = False):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.in_place = in_place

    def forward(self, x):
        q = self.q(x)
        if self.in_place:  # the tensor k reads is no longer the one q read
            x.mul_(2)
        mixed = torch.softmax(q @ self.k(x).transpose(-1, -2), -1) @ self.v(x)
        return self.out(mixed)


def test_layers_reading_one_input_share_one_gram_computed_once():
    torch.manual_seed(0)
    net = _Attention()
    data = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1)).split(1)
    stats = nc.collect(net, data, holdout=0.34, progress=False)
    assert stats.shared == {"k": "q", "v": "q"}
    assert stats.grams == 2  # q/k/v one, out another (same shape, other tensor: not shared)
    assert stats["k"].gram is stats["q"].gram and stats.heldout["v"].gram is stats.heldout["q"].gram
    for name in ("q", "k", "v", "out"):  # each equals the layer collected on its own
        alone = nc.collect(net, data, [name], holdout=0.34, progress=False)
        for part, single in ((stats, alone), (stats.heldout, alone.heldout)):
            np.testing.assert_allclose(part[name].gram.numpy(), single[name].gram.numpy(), rtol=1e-12)
            np.testing.assert_allclose(part[name].response_sum.numpy(), single[name].response_sum.numpy(), rtol=1e-12)
            assert part[name].count == single[name].count


def test_an_input_changed_in_place_between_two_readers_is_not_shared():
    torch.manual_seed(0)
    net = _Attention(in_place=True)
    data = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    stats = nc.collect(net, data.clone(), progress=False)
    assert "k" not in stats.shared and stats.shared == {"v": "k"}
    x = data.clone()
    np.testing.assert_allclose(stats["q"].gram.numpy(), (x.T @ x).double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats["k"].gram.numpy(), (4 * x.T @ x).double().numpy(), rtol=1e-6)


def test_shared_statistics_round_trip_through_safetensors(tmp_path):
    net = _Attention()
    stats = nc.collect(net, torch.randn(2, 5, 6).split(1), holdout=0.5, progress=False)
    stats.save(tmp_path / "s.safetensors")
    loaded = nc.LayerStats.load(tmp_path / "s.safetensors")
    assert loaded.shared == stats.shared and loaded.grams == 2 and loaded.heldout.grams == 2
    np.testing.assert_allclose(loaded["v"].gram.numpy(), stats["v"].gram.numpy())


def test_wide_outputs_are_folded_a_block_of_samples_at_a_time(monkeypatch):
    """A 32,000-word head's responses are taken in float64 in blocks: the same statistics as all at once."""
    import netcompress._core.tensors

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 50), nn.ReLU(), nn.Linear(50, 7))
    x = torch.randn(40, 6)
    whole = nc.collect(net, x.split(10), progress=False)
    monkeypatch.setattr(netcompress._core.tensors, "ROW_BLOCK_ELEMENTS", 60)  # one or a few samples per block
    blocks = nc.collect(net, x.split(10), progress=False)
    for name in whole:
        for field in ("positive_count", "response_sum", "response_max", "gram"):
            torch.testing.assert_close(getattr(blocks[name], field), getattr(whole[name], field))
