"""The whole model, measured: every compress reports its held-out fidelity, checked against direct computations;
BatchNorm statistics re-estimated after a structural change equal the batch averages computed by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from netcompress._core.batchnorm import reestimate_batchnorm
from netcompress.stats.collect import heldout_mask
from netcompress.stats.fidelity import Fidelity, heldout_part


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)).eval()


def test_fidelity_is_the_agreement_cosine_and_error_on_the_samples_collect_holds_out():
    model = _mlp()
    original = copy.deepcopy(model)
    x = torch.randn(300, 16)
    batches = list(x.split(100))
    report = nc.compress(model, batches, nc.Uniform(bits=3), progress=False)
    # the held-out samples, chosen directly by the rule collect applies to the global sample index
    held = torch.cat([b[heldout_mask(i * 100, 100, 0.2)] for i, b in enumerate(batches)])
    assert torch.equal(torch.cat(list(heldout_part(batches, 0.2))), held)
    with torch.no_grad():
        before, after = original(held).double(), model(held).double()
    fidelity = report.fidelity
    assert fidelity.samples == len(held) == 60 and fidelity.where == "held-out"
    assert fidelity.agreement == pytest.approx(float((before.argmax(1) == after.argmax(1)).double().mean()))
    assert fidelity.cosine == pytest.approx(float(F.cosine_similarity(before, after, dim=1).mean()), rel=1e-5)
    assert fidelity.relative_error == pytest.approx(float((after - before).norm() / before.norm()), rel=1e-5)
    assert str(report).splitlines()[0] == str(fidelity)  # said first


def test_labelled_evaluation_data_gives_accuracy_before_and_after():
    model = _mlp()
    original = copy.deepcopy(model)
    x, ex = torch.randn(200, 16), torch.randn(80, 16)
    ey = original(ex).argmax(1)  # labels the original gets all right
    report = nc.compress(model, x, nc.DALR(rank=3), eval_data=(ex, ey), progress=False)
    with torch.no_grad():
        expected = float((model(ex).argmax(1) == ey).double().mean())
    assert report.fidelity.where == "evaluation" and report.fidelity.samples == 80
    assert report.fidelity.accuracy_before == 1.0
    assert report.fidelity.accuracy_after == pytest.approx(expected)
    assert report.fidelity.agreement == pytest.approx(expected)


def test_fidelity_travels_with_the_report_json_and_names_what_is_below_a_threshold():
    model = _mlp()
    report = nc.compress(model, torch.randn(200, 16), nc.DALR(rank=1), progress=False)
    again = nc.Report.from_json(report.to_json())
    assert again.fidelity == report.fidelity
    assert report.fidelity.below(min_agreement=1.01) .startswith("the compressed model keeps agreement")
    assert report.fidelity.below(min_agreement=0.0) is None
    embedding = Fidelity(samples=10, relative_error=0.5, cosine=0.8, min_cosine=0.1)
    assert embedding.measure == ("cosine", 0.8) and "cosine 0.8000" in embedding.below(min_cosine=0.9)
    with pytest.raises(ValueError, match="fidelity"):
        Fidelity.from_dict({"samples": 3})


class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def test_batchnorm_reestimate_is_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    model = _ConvBN().eval()
    batches = [torch.randn(12, 3, 6, 6) for _ in range(3)]
    with torch.no_grad():
        inputs = [model.c1(b) for b in batches]
    assert reestimate_batchnorm(model, batches) == 2
    mean = torch.stack([i.mean((0, 2, 3)) for i in inputs]).mean(0)
    var = torch.stack([i.var((0, 2, 3), unbiased=True) for i in inputs]).mean(0)
    torch.testing.assert_close(model.b1.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.b1.running_var, var, rtol=1e-5, atol=1e-6)
    assert not model.training and model.b1.momentum == 0.1  # modes and momentum put back


def test_a_failed_reestimate_leaves_the_statistics_as_they_were():
    torch.manual_seed(0)
    model = _ConvBN().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError):
        reestimate_batchnorm(model, [torch.randn(4, 3, 6, 6), torch.randn(4, 5, 6, 6)])  # the second does not fit
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_structural_compression_reestimates_batchnorm_by_default_and_not_when_told():
    torch.manual_seed(0)
    x = torch.randn(60, 3, 6, 6)
    auto, off = _ConvBN().eval(), _ConvBN().eval()
    off.load_state_dict(auto.state_dict())
    report = nc.compress(auto, x.split(20), nc.Channel(sparsity=0.5), layers=["c1"], progress=False)
    assert report.batchnorm == 2 and "BatchNorm statistics re-estimated" in str(report)
    report_off = nc.compress(off, x.split(20), nc.Channel(sparsity=0.5), layers=["c1"], batchnorm=False,
                             progress=False)
    assert report_off.batchnorm is None
    assert not torch.equal(auto.b2.running_mean, off.b2.running_mean)
    quantized = nc.compress(_ConvBN().eval(), x, nc.Uniform(bits=8), progress=False)
    assert quantized.batchnorm is None  # nothing resized: the statistics still hold
