"""N2N learning (Ashok et al., ICLR 2018): reward, student construction, REINFORCE, resume, teacher untouched."""

import copy

import pytest
import torch
from torch import nn

from netcompress.distill.finetune import finetune
from netcompress.prune import n2n as n2n_module
from netcompress.prune.n2n import N2NResult, n2n_search, n2n_student
from netcompress.prune.n2n_policy import n2n_reward


class MLP(nn.Module):
    """64 → 24 → 24 → 24 → 10: fc2 and fc3 (24 → 24) can be removed, fc1 and out cannot."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.out(torch.relu(self.fc3(x)))


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    torch.manual_seed(0)
    teacher = finetune(MLP(), (x[:1200], y[:1200]), epochs=15, lr=5e-3, batch_size=64, seed=0, progress=False)
    return teacher, (x[:1200], y[:1200]), (x[1200:], y[1200:])


SMALL = {"episodes": (2, 2), "rollouts": 2, "student_epochs": 1, "progress": False}


@pytest.fixture(scope="module")
def searched(digits, tmp_path_factory):
    teacher, train, val = digits
    return n2n_search(teacher, train, val, checkpoint=tmp_path_factory.mktemp("n2n") / "search.pt", **SMALL)


def test_reward_is_the_papers_formula():
    for student, teacher, acc, teacher_acc in [(30, 100, 90.0, 95.0), (100, 100, 97.0, 95.0), (1, 400, 50.0, 99.0)]:
        c = 1 - student / teacher
        assert n2n_reward(student, teacher, acc, teacher_acc) == pytest.approx(c * (2 - c) * acc / teacher_acc, rel=1e-12)
    assert n2n_reward(30, 100, 90.0, 90.0) == pytest.approx(0.91)  # C = 0.7: 0.7 · 1.3
    with pytest.raises(ValueError, match="teacher_params"):
        n2n_reward(1, 0, 90.0, 90.0)


def test_actions_build_a_student_of_exactly_the_predicted_sizes(digits):
    teacher, (x, _), _ = digits
    student = n2n_student(teacher, x, remove=["fc3"], keep={"fc1": 0.5, "fc2": 0.25})
    # fc1 keeps round(0.5·24) = 12 units, fc2 round(0.25·24) = 6, fc3 becomes nn.Identity, out reads 6 inputs.
    assert isinstance(student.fc3, nn.Identity)
    assert (student.fc1.in_features, student.fc1.out_features) == (64, 12)
    assert (student.fc2.in_features, student.fc2.out_features) == (12, 6)
    assert (student.out.in_features, student.out.out_features) == (6, 10)
    assert sum(p.numel() for p in student.parameters()) == (64 * 12 + 12) + (12 * 6 + 6) + (6 * 10 + 10)
    assert student(x[:5]).shape == (5, 10)
    with pytest.raises(ValueError, match="remove names layer 'fc1'"):
        n2n_student(teacher, x, remove=["fc1"])  # 64 → 24 has no identity
    with pytest.raises(ValueError, match=r"keep\['fc2'\]"):
        n2n_student(teacher, x, keep={"fc2": 1.5})


def test_the_search_result_is_the_student_its_actions_describe(searched, digits):
    teacher, (x, _), val = digits
    result = searched
    assert isinstance(result, N2NResult)
    assert len(result.history) == 4 and [h["stage"] for h in result.history] == ["removal"] * 2 + ["shrinkage"] * 2
    assert all(len(h["rewards"]) == 2 for h in result.history)
    assert result.params == sum(p.numel() for p in result.student.parameters()) < result.teacher_params
    assert result.reward == pytest.approx(n2n_reward(result.params, result.teacher_params, result.accuracy,
                                                     result.teacher_accuracy))
    assert result.reward == max(r for h in result.history for r in h["rewards"])
    for name in result.removed:
        assert isinstance(result.student.get_submodule(name), nn.Identity)
    for name, share in result.keep.items():
        dense = teacher.get_submodule(name).out_features
        assert result.channels[name] == max(1, round(share * dense))
    rebuilt = n2n_student(n2n_student(teacher, x, remove=result.removed), x, keep=result.keep)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in result.student.parameters()]
    from netcompress.distill.finetune import accuracy

    assert accuracy(result.student, *val) == pytest.approx(result.accuracy)


def test_policy_gradient_moves_probability_towards_the_rewarded_action():
    generator = torch.Generator().manual_seed(0)
    states = torch.rand(4, n2n_module._FEATURES, generator=generator)
    decides = torch.ones(4)
    for choices, autoregressive, layer, good in ((2, False, 1, 1), (10, True, 2, 3)):
        policy = n2n_module._Policy(choices, 8, autoregressive)
        n2n_module._initialise(policy, generator)
        optimizer = torch.optim.Adam(policy.parameters(), lr=0.05)
        fixed = torch.zeros(4, dtype=torch.long)

        def probability():
            with torch.no_grad():
                return policy.logits(states, fixed).softmax(-1)[layer, good].item()  # noqa: B023

        before = probability()
        # One step on two rollouts that differ only at ``layer``: the rewarded one must gain probability.
        rewarded, other = fixed.clone(), fixed.clone()
        rewarded[layer], other[layer] = good, (good + 1) % choices
        n2n_module._reinforce(policy, optimizer, states, decides, [(rewarded, 1.0), (other, 0.0)], baseline=0.5)
        after_one = probability()
        assert after_one > before
        # Then sampling from the policy with the toy reward (1 for the good action at ``layer``) converges on it.
        baseline = 0.0
        for _ in range(30):
            rollouts = [(a, float(a[layer] == good)) for a in
                        (policy.sample(states, decides, fixed, generator, [None] * 4) for _ in range(4))]
            n2n_module._reinforce(policy, optimizer, states, decides, rollouts, baseline)
            baseline = 0.8 * baseline + 0.2 * sum(r for _, r in rollouts) / 4
        assert probability() > 0.9 > before


def test_a_resumed_search_equals_an_uninterrupted_one(digits, searched, tmp_path, monkeypatch):
    teacher, train, val = digits
    calls = {"n": 0}
    original = n2n_module._distil

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # in the second stage: the removal episodes are in the checkpoint by then
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    path = tmp_path / "search.pt"
    monkeypatch.setattr(n2n_module, "_distil", interrupted)
    with pytest.raises(KeyboardInterrupt):
        n2n_search(teacher, train, val, checkpoint=path, **SMALL)
    assert path.exists()
    monkeypatch.setattr(n2n_module, "_distil", original)
    resumed = n2n_search(teacher, train, val, checkpoint=path, **SMALL)
    assert resumed.history == searched.history
    assert (resumed.removed, resumed.keep, resumed.params, resumed.reward) == \
           (searched.removed, searched.keep, searched.params, searched.reward)
    for a, b in zip(resumed.student.state_dict().values(), searched.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="rollouts=2"):
        n2n_search(teacher, train, val, checkpoint=path, **{**SMALL, "rollouts": 3})


def test_the_teacher_is_left_unchanged(digits):
    teacher, train, val = digits
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    kinds = [type(m) for m in teacher.modules()]
    n2n_search(teacher, train, val, episodes=(1, 1), rollouts=2, student_epochs=1, progress=False)
    assert teacher.training and all(m.training for m in teacher.modules())
    assert [type(m) for m in teacher.modules()] == kinds
    assert all(p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    teacher.eval()


@pytest.mark.parametrize("setting, message", [({"episodes": 0}, "episodes"), ({"rollouts": 0}, "rollouts"),
                                              ({"ratios": (0.5, 0.9)}, "ratios"), ({"student_lr": 0}, "student_lr")])
def test_bad_arguments_are_refused_by_name(digits, setting, message):
    teacher, train, val = digits
    with pytest.raises(ValueError, match=message):
        n2n_search(teacher, train, val, **{**SMALL, **setting})


def test_a_malformed_or_foreign_checkpoint_is_refused_in_one_sentence(digits, tmp_path):
    import os

    teacher, train, val = digits
    path = tmp_path / "search.pt"
    for content, message in ((b"not a checkpoint", r"cannot be read as a checkpoint"),
                             (None, r"is not a checkpoint of an N2N search")):
        if content is None:
            torch.save({"settings": {}}, path)
        else:
            path.write_bytes(content)
        with pytest.raises(ValueError, match=message) as error:
            n2n_search(teacher, train, val, checkpoint=path, **SMALL)
        assert str(path) in str(error.value)
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(ValueError, match=r"search.pt is a named pipe, not a regular file"):
        n2n_search(teacher, train, val, checkpoint=path, **SMALL)


def test_a_checkpoint_of_other_data_is_refused(digits, searched, tmp_path):
    teacher, train, val = digits
    path = tmp_path / "search.pt"
    n2n_search(teacher, train, val, checkpoint=path, **{**SMALL, "episodes": (1, 0)})
    with pytest.raises(ValueError, match=r"written by a search with data=[0-9a-f]{64}, not [0-9a-f]{64}"):
        n2n_search(teacher, (train[0] + 1, train[1]), val, checkpoint=path, **{**SMALL, "episodes": (1, 0)})
