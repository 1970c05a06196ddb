"""Sequential (block by block) compression: each block sees the inputs the compressed blocks before it give."""

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress._core.blocks import find_blocks
from netcompress._core.layers import replace_module
from netcompress.quantize import gptq


class Stack(nn.Module):
    def __init__(self, width: int = 24, depth: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(10, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth))
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _data():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(400, 10, generator=g) @ torch.randn(10, 10, generator=g)).split(100)


def test_blocks_are_the_stack_children_in_order_with_the_rest_around_them():
    model = Stack()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert find_blocks(model, names) == [["stem"], ["blocks.0.0"], ["blocks.1.0"], ["blocks.2.0"], ["head"]]
    assert find_blocks(model, ["head", "blocks.1.0"], "blocks") == [["blocks.1.0"], ["head"]]
    with pytest.raises(ValueError, match="blocks='head' is not a ModuleList"):
        find_blocks(model, names, "head")


def test_sequential_gptq_equals_compressing_each_block_on_the_compressed_prefix():
    model, data = Stack(), _data()
    reference = copy.deepcopy(model)
    for name in ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0", "head"]:  # by hand, with the public pieces
        stats = nc.collect(reference, data, [name], holdout=0.2, progress=False)
        replace_module(reference, name, gptq(reference.get_submodule(name), stats[name], bits=3))
    report = nc.compress(model, data, method="gptq", bits=3, sequential=True, progress=False)
    assert [r.name for r in report.rows if r.replaced] == ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0", "head"]
    x = torch.cat(data)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_sequential_refuses_what_it_cannot_do_and_leaves_the_model():
    model, data = Stack(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="method 'channel' is a structural method"):
        nc.compress(model, data, method="channel", sparsity=0.5, sequential=True, progress=False)
    with pytest.raises(ValueError, match="pass data, not stats"):
        nc.compress(model, stats=nc.collect(model, data, progress=False), method="gptq", bits=4, sequential=True,
                    progress=False)
    with pytest.raises(ValueError, match="blocks='nothing'"):
        nc.compress(model, data, method="gptq", bits=4, sequential=True, blocks="nothing", progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_global_magnitude_threshold_spans_every_block_in_sequential_mode():
    data = _data()
    masks = {}
    for sequential in (False, True):
        model = Stack()
        with torch.no_grad():
            model.blocks[1][0].weight.mul_(10)  # one block with far larger weights: a global threshold spares it
        nc.compress(model, data, method="magnitude", sparsity=0.5, scope="global", sequential=sequential,
                    progress=False)
        masks[sequential] = {n: m.mask.clone() for n, m in model.named_modules() if hasattr(m, "mask")}
    assert masks[True].keys() == masks[False].keys()
    assert all(torch.equal(masks[True][n], masks[False][n]) for n in masks[True])
    assert masks[True]["blocks.1.0"].float().mean() > 0.5  # not the per-layer 50 %


def test_blocks_without_sequential_is_refused():
    with pytest.raises(ValueError, match="pass sequential=True with it"):
        nc.compress(Stack(), _data(), method="gptq", bits=4, blocks="blocks", progress=False)


def _numpy_sequential_dalr(weights, biases, x, rank, centre):
    """Reduced-rank regression of each layer's original outputs on the compressed prefix's inputs, in NumPy.

    Layer l: ``Z = W X`` on the original network's inputs ``X``, regressors ``X̃`` (the compressed
    layers before it); ``C = Z X̃ᵀ (X̃ X̃ᵀ)⁻¹``, ``Ŵ = U_k U_kᵀ C`` with ``U_k`` the leading left
    singular vectors of the fitted outputs ``C X̃``. Centred (bias compensation): on ``X − x̄`` and
    ``X̃ − x̃̄``, and ``b̂ = b + W x̄ − Ŵ x̃̄``.
    """
    import numpy as np

    original, compressed, result = x.T, x.T, []
    for W, b in zip(weights, biases, strict=True):
        X, Xt = original, compressed
        if centre:
            X, Xt = X - X.mean(1, keepdims=True), Xt - Xt.mean(1, keepdims=True)
        C = np.linalg.solve(Xt @ Xt.T, Xt @ (W @ X).T).T
        U = np.linalg.svd(C @ Xt, full_matrices=False)[0][:, :rank]
        W_new = U @ U.T @ C
        b_new = b + W @ original.mean(1) - W_new @ compressed.mean(1) if centre else b
        result.append((W_new, b_new))
        original = np.tanh(W @ original + b[:, None])
        compressed = np.tanh(W_new @ compressed + b_new[:, None])
    return result


@pytest.mark.parametrize("method", ["dalr", "dalr-bc"])
def test_sequential_dalr_equals_a_numpy_reduced_rank_regression_on_the_compressed_prefix(method):
    import numpy as np

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 6)).double()
    x = torch.randn(300, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layers = [model[0], model[2], model[4]]
    expected = _numpy_sequential_dalr([m.weight.detach().numpy() for m in layers],
                                      [m.bias.detach().numpy() for m in layers], x.numpy(), 3, method == "dalr-bc")
    original = copy.deepcopy(model)
    report = nc.compress(model, x.split(100), method=method, rank=3, lam=0.0, shrinkage=0.0, holdout=0,
                         sequential=True, progress=False)
    for i, (W_new, b_new) in zip((0, 2, 4), expected, strict=True):
        factored = model[i]
        np.testing.assert_allclose((factored.up.weight @ factored.down.weight).detach().numpy(), W_new, atol=1e-9)
        np.testing.assert_allclose(factored.up.bias.detach().numpy(), b_new, atol=1e-9)
    # each row's error is against the original network's outputs of that layer
    seen = {}
    model[4].register_forward_hook(lambda m, a, out: seen.update(new=out))
    original[4].register_forward_hook(lambda m, a, out: seen.update(old=out))
    with torch.no_grad():
        model(x), original(x)
    direct = float((seen["new"] - seen["old"]).norm() / seen["old"].norm())
    assert report["4"].relative_error == pytest.approx(direct, rel=1e-6)


def test_sequential_low_rank_budget_is_spent_within_each_block_and_reports_against_the_original():
    model, data = Stack(), _data()
    report = nc.compress(model, data, method="dalr", budget=0.6, sequential=True, progress=False)
    assert all(r.status in ("compressed", "left dense") for r in report.rows)
    assert sum(r.params_after for r in report.rows) <= 0.6 * sum(r.params_before for r in report.rows) + 24 * 2
    assert all(r.heldout_error is not None for r in report.rows if r.replaced)


@pytest.mark.parametrize("method", ["svd", "svd-bc", "dalr", "dalr-bc"])
def test_every_rank_error_against_the_original_network_equals_the_error_measured_directly(method):
    """The curves that size ranks in sequential mode, in sample and held out, against direct forward passes."""
    from netcompress.sequential import original_layers

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 10)).double()
    original = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    fit, held = torch.randn(200, 8, dtype=torch.float64, generator=g), torch.randn(50, 8, dtype=torch.float64, generator=g)
    first = nc.collect(model, fit, ["0"], progress=False)
    replace_module(model, "0", nc.METHODS["dalr"].fn(model[0], first["0"], 3).module(3))
    stats = {part: nc.collect(model, data, ["2"], progress=False,
                              reference=lambda: original_layers(model, {"0": original[0]}))["2"]
             for part, data in (("fit", fit), ("held", held))}
    f = nc.METHODS[method].fn(model[2], stats["fit"], 10)
    curve = f.relative_error_on(stats["held"])
    for k in (1, 4, 10):
        with torch.no_grad():
            for part, x in (("fit", fit), ("held", held)):
                new, old = f.module(k)(torch.tanh(model[0](x))), original[2](torch.tanh(original[0](x)))
                direct = float((new - old).norm() / old.norm())
                measured = f.relative_error(k) if part == "fit" else float(curve[k]) ** 0.5
                assert measured == pytest.approx(direct, rel=1e-6, abs=1e-9), (part, k)


def test_fully_shrunk_sequential_dalr_is_truncated_svd():
    """α = 1 shrinks both XX̃ᵀ and X̃X̃ᵀ to one scaled identity: C → W, and DALR's factors are SVD's."""
    model, data = Stack(), _data()
    svd_model = copy.deepcopy(model)
    nc.compress(model, data, method="dalr", rank=3, shrinkage=1.0, sequential=True, progress=False)
    nc.compress(svd_model, data, method="svd", rank=3, progress=False)
    for name in ("blocks.0.0", "blocks.1.0", "head"):
        a, b = model.get_submodule(name), svd_model.get_submodule(name)
        torch.testing.assert_close(a.up.weight @ a.down.weight, b.up.weight @ b.down.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sequential", [False, True])
def test_errors_measured_a_few_output_rows_at_a_time_are_the_same(monkeypatch, sequential):
    """A language model's 32,000-row head is compared in row blocks: same errors as all rows at once."""
    import netcompress._core.tensors

    reports = []
    for elements in (1 << 22, 30):  # 30 values: one or two rows per block
        monkeypatch.setattr(netcompress._core.tensors, "ROW_BLOCK_ELEMENTS", elements)
        model = Stack()
        reports.append(nc.compress(model, _data(), method="uniform", bits=3, sequential=sequential, progress=False))
    for a, b in zip(*(r.rows for r in reports), strict=True):
        assert b.relative_error == pytest.approx(a.relative_error, rel=1e-9)
        assert b.heldout_error == pytest.approx(a.heldout_error, rel=1e-9)


class _Fanout(nn.Module):
    """A layer whose output three layers read: two narrow ones and one wider than its input."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 5)
        self.q, self.k, self.wide = nn.Linear(5, 3), nn.Linear(5, 4), nn.Linear(5, 40)

    def forward(self, x):
        h = torch.tanh(self.first(x))
        return torch.cat([self.q(h), self.k(h), self.wide(h)], dim=1)


def test_errors_against_the_original_of_layers_sharing_an_input_and_of_a_wide_layer_equal_direct_ones():
    """Σ‖Wx‖² is kept per layer (each its own W, one shared Σ x x̃ᵀ); a wide layer's goes through WᵀW."""
    from netcompress.sequential import original_layers

    torch.manual_seed(0)
    model = _Fanout().double()
    original = copy.deepcopy(model)
    with torch.no_grad():
        model.first.weight.add_(0.2 * torch.randn_like(model.first.weight))  # the "compressed" prefix
    x = torch.randn(300, 6, dtype=torch.float64)
    stats = nc.collect(model, x.split(100), ["q", "k", "wide"], progress=False,
                       reference=lambda: original_layers(model, {"first": original.first}))
    assert stats.shared == {"k": "q", "wide": "q"} and stats.grams == 1
    with torch.no_grad():
        h, h_own = torch.tanh(original.first(x)), torch.tanh(model.first(x))
        for name in ("q", "k", "wide"):
            layer = getattr(original, name)
            new_weight = layer.weight + 0.1 * torch.randn_like(layer.weight)
            new_bias = layer.bias + 0.1 * torch.randn_like(layer.bias)
            measured = nc.relative_output_error(layer.weight, layer.bias, new_weight, new_bias, stats[name])
            target = layer(h)
            direct = float((h_own @ new_weight.T + new_bias - target).norm() / target.norm())
            assert measured == pytest.approx(direct, rel=1e-9), name
