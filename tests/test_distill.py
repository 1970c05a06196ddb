"""Distillation losses against direct implementations of their formulas; finetune with a teacher."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from conftest import SmallNet, StopAfter, softmax_np
from netcompress.distill import losses as distill


def test_logits_loss_is_the_seeds_formula():
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    y = rng.integers(0, 5, 6)
    T, alpha, beta = 3.0, 0.3, 0.7
    hard = -np.log(softmax_np(zs)[np.arange(6), y]).mean()
    soft = -(softmax_np(zt / T) * np.log(softmax_np(zs / T))).sum(1).mean()
    batch = distill.Batch(torch.tensor(zs), torch.tensor(y), torch.tensor(zt))
    loss = distill.Logits(temperature=T, alpha=alpha, beta=beta)(batch)
    assert loss.item() == pytest.approx(alpha * hard + beta * soft, rel=1e-10)


def test_attention_transfer_is_the_normalised_energy_map_distance():
    rng = np.random.default_rng(1)
    fs, ft = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 4, 4))

    def att(f):
        a = (f ** 2).mean(1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    expected = ((att(fs) - att(ft)) ** 2).mean()
    batch = distill.Batch(torch.zeros(2, 1), student_features={"s": torch.tensor(fs)},
                          teacher_features={"t": torch.tensor(ft)})
    assert distill.AttentionTransfer([("s", "t")])(batch).item() == pytest.approx(expected, rel=1e-10)


def test_self_attention_distillation_targets_the_deeper_block_only():
    torch.manual_seed(0)
    shallow = torch.randn(2, 3, 8, 8, requires_grad=True)
    deep = torch.randn(2, 6, 4, 4, requires_grad=True)
    loss = distill.SelfAttention(["a", "b"])(distill.Batch(torch.zeros(2), student_features={"a": shallow, "b": deep}))
    loss.backward()
    assert shallow.grad.abs().sum() > 0 and deep.grad is None  # the deeper map teaches, it is not pulled
    up = F.interpolate(deep.detach().pow(2).mean(1, keepdim=True), size=(8, 8), mode="bilinear", align_corners=False)
    expected = ((F.softmax(shallow.detach().pow(2).mean(1).flatten(1), 1) - F.softmax(up.flatten(1), 1)) ** 2).sum() / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_inter_region_affinity_compares_cosine_graphs_of_region_moments():
    rng = np.random.default_rng(2)
    fs, ft = rng.normal(size=(1, 3, 4, 4)), rng.normal(size=(1, 2, 4, 4))

    def graph(f):
        cells = f[0].reshape(f.shape[1], 2, 2, 2, 2).transpose(1, 3, 0, 2, 4).reshape(4, f.shape[1], 4)
        nodes = np.concatenate([cells.mean(2), np.sqrt(cells.var(2) + 1e-8)], 1)
        nodes /= np.linalg.norm(nodes, axis=1, keepdims=True)
        return nodes @ nodes.T

    expected = ((graph(fs) - graph(ft)) ** 2).mean()
    batch = distill.Batch(torch.zeros(1), student_features={"s": torch.tensor(fs)}, teacher_features={"t": torch.tensor(ft)})
    loss = distill.InterRegionAffinity("s", "t", regions=2)(batch)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hint_regressor_learns_and_codistillation_uses_the_others_mean():
    hint = distill.Hint("s", "t", 3, 5)
    features = torch.randn(2, 3, 4, 4)
    batch = distill.Batch(torch.zeros(2), student_features={"s": features}, teacher_features={"t": torch.randn(2, 5, 4, 4)})
    expected = F.mse_loss(hint.regressor(features), batch.teacher_features["t"])
    assert hint(batch).item() == pytest.approx(expected.item())
    logits = [torch.randn(4, 3, requires_grad=True) for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 0])
    losses = distill.codistillation_losses(logits, labels, weight=0.5)
    others = (F.softmax(logits[1], 1) + F.softmax(logits[2], 1)).detach() / 2
    expected = F.cross_entropy(logits[0], labels) + 0.5 * -(others * F.log_softmax(logits[0], 1)).sum(1).mean()
    assert losses[0].item() == pytest.approx(expected.item())
    losses[0].backward()
    assert logits[1].grad is None  # model 0's loss does not move the others


def test_finetune_with_teacher_freezes_it_and_keeps_compression():
    torch.manual_seed(0)
    teacher = SmallNet()
    student = copy.deepcopy(teacher)
    nc.compress(student, method="magnitude", sparsity=0.6, progress=False)
    nc.compress(student, method="kmeans", bits=3, progress=False)
    codes = {n: m.codes.clone() for n, m in student.named_modules() if hasattr(m, "codes")}
    before = copy.deepcopy(teacher.state_dict())
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    loss = [distill.Logits(temperature=2.0), distill.AttentionTransfer([("conv2", "conv2")]),
            distill.Hint("fc1", "fc1", 40, 40, spatial=False)]
    nc.finetune(student, (x, y), teacher=teacher, loss=loss, epochs=2, lr=1e-2, batch_size=8, progress=False)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in teacher.parameters())
    for name, c in codes.items():
        module = student.get_submodule(name)
        assert torch.equal(module.codes, c) and (module.weight.detach()[~module.mask] == 0).all()


def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    x, y = torch.randn(40, 3, 8, 8), torch.randint(0, 10, (40,))
    torch.manual_seed(0)
    teacher, start = SmallNet(), SmallNet()

    def run(stop_after, checkpoint):
        model = copy.deepcopy(start)
        torch.manual_seed(1)
        hint = distill.Hint("fc1", "fc1", 40, 40, spatial=False)
        nc.finetune(model, (x, y), teacher=teacher, loss=[distill.Logits(), hint, StopAfter(stop_after)], epochs=4,
                    lr=1e-2, batch_size=8, schedule="cosine", checkpoint=checkpoint, progress=False)
        return model

    straight = run(None, None)
    with pytest.raises(KeyboardInterrupt):
        run(2 * 5 + 3, tmp_path / "ckpt.pt")  # killed in the third epoch; checkpoints after epochs 1 and 2
    resumed = run(None, tmp_path / "ckpt.pt")
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_temperature_must_be_positive():
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            distill.Logits(temperature=bad)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill.codistillation_losses([torch.zeros(2, 3)] * 2, None, temperature=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(teacher="wide"), "teacher outputs .* differ"),
    (dict(loss=distill.AttentionTransfer([("conv9", "conv2")])), "student has no layer named 'conv9'"),
    (dict(loss=distill.AttentionTransfer([("conv2", "nope")])), "teacher has no layer named 'nope'"),
    (dict(teacher=None, loss=distill.Logits()), "distils from a teacher; pass teacher="),
])
def test_bad_distillation_settings(kwargs, message):
    teacher = SmallNet()
    if kwargs.get("teacher") == "wide":
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(192, 11))
    kwargs = {"teacher": teacher, **{k: v for k, v in kwargs.items() if k != "teacher" or v is None}}
    with pytest.raises(ValueError, match=message):
        nc.finetune(SmallNet(), (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))), epochs=1, lr=1e-3,
                    progress=False, **kwargs)


def test_codistilled_models_agree_more_than_independently_trained_ones():
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(6))

    def pair(burn_in):
        torch.manual_seed(0)
        models = [SmallNet(), SmallNet()]
        nc.distill.codistill(models, (x, y), epochs=6, lr=1e-2, burn_in_epochs=burn_in, weight=2.0, batch_size=16,
                           progress=False)
        outs = [m(x).detach() for m in models]
        return (F.softmax(outs[0], 1) - F.softmax(outs[1], 1)).abs().mean().item()

    assert pair(burn_in=1) < pair(burn_in=6)  # burn-in for the whole run = independent training
    with pytest.raises(ValueError, match="at least two models"):
        nc.distill.codistill([SmallNet()], (x, y), epochs=1, lr=1e-3)


def test_recipes_can_distil_from_the_uncompressed_network():
    torch.manual_seed(0)
    model = SmallNet()
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    steps = [{"method": "kmeans", "bits": 2},
             {"finetune": {"epochs": 1, "lr": 1e-3, "distill": {"temperature": 2.0, "alpha": 0.5, "beta": 0.5}}}]
    nc.run_pipeline(model, steps, train=(x, y), progress=False)
    assert isinstance(model.fc1, nc.quantize.QuantizedLinear)
    with pytest.raises(ValueError, match="distill takes a mapping"):
        nc.run_pipeline(SmallNet(), [{"finetune": {"epochs": 1, "lr": 1e-3, "distill": {"T": 2}}}], train=(x, y))
