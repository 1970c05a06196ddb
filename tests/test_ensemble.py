"""Ensemble knowledge distillation: the soft target and the loss against direct NumPy formulas; finetune with teachers."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet, StopAfter, softmax_np
from netcompress.distill import losses as distill

pytestmark = pytest.mark.usefixtures("one_thread")


def _direct_loss(zs, teachers, weights, y, T, alpha, beta):
    """``α·H(y, σ(z_s)) + β·H(Σ_k w_k σ(z_k/T), σ(z_s/T))`` in float64 NumPy, weights normalised."""
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    target = sum(wk * softmax_np(zk / T) for wk, zk in zip(w, teachers, strict=True))
    soft = -(target * np.log(softmax_np(zs / T))).sum(1).mean()
    hard = -np.log(softmax_np(zs)[np.arange(len(y)), y]).mean()
    return alpha * hard + beta * soft, target


def test_ensemble_target_is_the_weighted_mean_of_softened_probabilities():
    rng = np.random.default_rng(0)
    teachers = [rng.normal(size=(6, 5)) * s for s in (1.0, 3.0, 0.5)]
    weights, T = [1.0, 2.0, 5.0], 2.5
    _, expected = _direct_loss(np.zeros((6, 5)), teachers, weights, np.zeros(6, int), T, 0.0, 1.0)
    got = distill.ensemble_probabilities([torch.tensor(z) for z in teachers], T, weights)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, rtol=1e-12)
    # Probabilities are averaged, not logits: the softmax of the mean logit is a different target.
    mean_logit = sum(w * z for w, z in zip(np.array(weights) / 8.0, teachers, strict=True))
    assert np.abs(softmax_np(mean_logit / T) - expected).max() > 1e-2
    equal = distill.ensemble_probabilities([torch.tensor(z) for z in teachers], T)
    np.testing.assert_allclose(equal.numpy(), sum(softmax_np(z / T) for z in teachers) / 3, rtol=1e-12)
    with pytest.raises(ValueError, match="teacher_weights has 1 entries for 3 teachers"):
        distill.ensemble_probabilities([torch.tensor(z) for z in teachers], T, [1.0])


def test_logits_loss_with_an_ensemble_is_the_direct_formula():
    rng = np.random.default_rng(1)
    zs, y = rng.normal(size=(7, 4)), rng.integers(0, 4, 7)
    teachers = [rng.normal(size=(7, 4)) * 2 for _ in range(3)]
    weights, T, alpha = (0.2, 0.3, 0.5), 4.0, 0.3
    expected, _ = _direct_loss(zs, teachers, weights, y, T, alpha, T ** 2)  # Hinton's T² scaling of the soft term
    batch = distill.Batch(torch.tensor(zs), torch.tensor(y), tuple(torch.tensor(z) for z in teachers),
                          teacher_weights=weights)
    loss = distill.Logits(temperature=T, alpha=alpha, beta=T ** 2)(batch)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


class _Recorder(distill.Logits):
    """Logits that keeps the student outputs and the loss value of every batch it sees."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def forward(self, batch):
        loss = super().forward(batch)
        self.seen.append((batch.student.detach().clone(), loss.item()))
        return loss


def _teachers(seed: int = 3) -> list[nn.Module]:
    torch.manual_seed(seed)
    with_dropout = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    return [SmallNet(), with_dropout, SmallNet()]


def test_finetune_distils_from_the_ensemble_of_frozen_teachers():
    teachers = _teachers()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    with torch.no_grad():  # eval mode: finetune must switch off the dropout of the second teacher
        reference = [t.eval()(x).double().numpy() for t in teachers]
    teachers[1].train()
    teachers[2].conv1.weight.requires_grad_(False)
    modes = [{n: m.training for n, m in t.named_modules()} for t in teachers]
    flags = [{n: p.requires_grad for n, p in t.named_parameters()} for t in teachers]
    before = [copy.deepcopy(t.state_dict()) for t in teachers]
    T, alpha, weights = 3.0, 0.4, [1.0, 2.0, 3.0]
    recorder = _Recorder(temperature=T, alpha=alpha, beta=T ** 2)
    nc.finetune(SmallNet(), [(x, y)], teacher=teachers, teacher_weights=weights, loss=recorder, epochs=2, lr=1e-2,
                progress=False)
    for student_out, value in recorder.seen:
        expected, _ = _direct_loss(student_out.double().numpy(), reference, weights, y.numpy(), T, alpha, T ** 2)
        assert value == pytest.approx(expected, rel=1e-5)
    assert len(recorder.seen) == 2 and recorder.seen[0][1] != recorder.seen[1][1]  # the student did learn
    for t, mode, flag, state in zip(teachers, modes, flags, before, strict=True):
        assert {n: m.training for n, m in t.named_modules()} == mode
        assert {n: p.requires_grad for n, p in t.named_parameters()} == flag
        assert all(p.grad is None for p in t.parameters())
        assert all(torch.equal(v, t.state_dict()[k]) for k, v in state.items())


def test_one_teacher_in_a_list_trains_exactly_like_that_teacher_alone():
    torch.manual_seed(0)
    teacher, start = SmallNet(), SmallNet()
    x, y = torch.randn(24, 3, 8, 8), torch.randint(0, 10, (24,))

    def run(**kwargs):
        model = copy.deepcopy(start)
        torch.manual_seed(1)
        nc.finetune(model, (x, y), epochs=3, lr=1e-2, batch_size=8, seed=2, progress=False, **kwargs)
        return model.state_dict()

    alone = run(teacher=teacher)
    moved = {k: v for k, v in alone.items() if not torch.equal(v, start.state_dict()[k])}
    assert moved  # training changed the student, so equality below is not trivial
    for kwargs in (dict(teacher=[teacher]), dict(teacher=[teacher], teacher_weights=[7.0])):
        for key, value in run(**kwargs).items():
            torch.testing.assert_close(value, alone[key], rtol=0, atol=0)
    ensemble = run(teacher=[teacher, SmallNet()])
    assert any(not torch.equal(ensemble[k], alone[k]) for k in moved)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(teacher_weights=[1.0, 2.0]), ValueError, "teacher_weights has 2 entries for 3 teachers"),
    (dict(teacher_weights=[1.0, 0.0, 2.0]), ValueError, "teacher_weights must all be positive"),
    (dict(teacher_weights=[1.0, -1.0, 2.0]), ValueError, "teacher_weights must all be positive"),
    (dict(teacher_weights=[1.0, float("nan"), 2.0]), ValueError, "teacher_weights must all be positive"),
    (dict(teacher=None, teacher_weights=[1.0]), ValueError, "teacher_weights weighs teachers; pass teacher="),
    (dict(teacher=[]), TypeError, "teacher must be an nn.Module or a non-empty sequence"),
    (dict(teacher=[SmallNet(), "big"]), TypeError, "teacher must be an nn.Module or a non-empty sequence"),
    (dict(loss=distill.AttentionTransfer([("conv2", "conv2")])), ValueError, "takes one teacher, got 3"),
    (dict(teacher=[SmallNet(), nn.Sequential(nn.Flatten(), nn.Linear(192, 11))]), ValueError,
     r"teacher outputs \(4, 11\) and student outputs \(4, 10\) differ"),
])
def test_bad_ensemble_settings_raise_one_clear_error(kwargs, error, message):
    kwargs = {"teacher": [SmallNet(), SmallNet(), SmallNet()], **kwargs}
    student = SmallNet()
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(error, match=message):
        nc.finetune(student, (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))), epochs=1, lr=1e-3,
                    progress=False, **kwargs)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # rejected before any step


def test_resuming_an_ensemble_distillation_equals_an_uninterrupted_run(tmp_path):
    x, y = torch.randn(24, 3, 8, 8), torch.randint(0, 10, (24,))
    teachers = _teachers(seed=4)
    torch.manual_seed(5)
    start = SmallNet()

    def run(stop_after, checkpoint):
        model = copy.deepcopy(start)
        nc.finetune(model, (x, y), teacher=teachers, teacher_weights=[3.0, 1.0, 1.0],
                    loss=[distill.Logits(temperature=2.0), StopAfter(stop_after)], epochs=3, lr=1e-2, batch_size=8,
                    schedule="cosine", checkpoint=checkpoint, progress=False)
        return model

    straight = run(None, None)
    with pytest.raises(KeyboardInterrupt):
        run(2 * 3 + 1, tmp_path / "ckpt.pt")  # killed in the third epoch; checkpoints after epochs 1 and 2
    # Put back even when killed: train mode (as built) and trainable.
    assert all(m.training for t in teachers for m in t.modules())
    assert all(p.requires_grad for t in teachers for p in t.parameters())
    resumed = run(None, tmp_path / "ckpt.pt")
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
