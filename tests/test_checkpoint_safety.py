"""Checkpoints: check first, then change (issue 22, item 4).

A checkpoint of another run, another architecture or optimizer, or a malformed file is refused
in one sentence naming the file and the first difference, and the model is bit-for-bit untouched.
"""

import os

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.distill import losses as distill
from netcompress.rankings import RankedSet, Shallow, train_ranker

X, Y = torch.randn(24, 8, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 3
SETTINGS = {"epochs": 2, "lr": 1e-3, "batch_size": 8, "progress": False}


def _net(width=6):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _untouched(model, before):
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], v) and now[k].dtype == v.dtype
                                                for k, v in before.items())


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A checkpoint of a finished two-epoch run, and its bytes (each test gets a fresh copy)."""
    path = tmp_path_factory.mktemp("ckpt") / "run.pt"
    nc.finetune(_net(), (X, Y), checkpoint=path, **SETTINGS)
    return path.read_bytes()


@pytest.fixture
def checkpoint(written, tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(written)
    return path


def _refused(path, message, model=None, data=(X, Y), **settings):
    model = model if model is not None else _net()
    before = _state(model)
    with pytest.raises(ValueError, match=message) as error:
        nc.finetune(model, data, checkpoint=path, **{**SETTINGS, **settings})
    text = str(error.value)
    assert str(path) in text and "\n" not in text, text
    assert _untouched(model, before)
    return text


@pytest.mark.parametrize("settings, message", [
    ({"lr": 1e-2}, r"written by a run with lr=0.001, not 0.01; pass the same settings and data, or another"),
    ({"epochs": 3}, r"with epochs=2, not 3"),
    ({"batch_size": 4}, r"with batch_size=8, not 4"),
    ({"schedule": "cosine"}, r"with schedule=constant, not cosine"),
    ({"weight_decay": 1e-4}, r"with weight_decay=0.0, not 0.0001"),
    ({"seed": 1}, r"with seed=0, not 1"),
    ({"freeze_batchnorm": True}, r"with freeze_batchnorm=false, not true"),
])
def test_a_checkpoint_of_other_settings_is_refused_and_the_student_is_untouched(checkpoint, settings, message):
    _refused(checkpoint, message, **settings)


def test_a_checkpoint_of_other_data_loss_or_teacher_is_refused(checkpoint, tmp_path):
    _refused(checkpoint, r"with data.sha256=[0-9a-f]{64}, not [0-9a-f]{64}", data=(X * 2, Y))
    _refused(checkpoint, r"with data.lengths=\[24, 24\], not \[23, 23\]", data=(X[:23], Y[:23]))
    teacher = _net()
    path = tmp_path / "distilled.pt"
    nc.finetune(_net(), (X, Y), teacher=teacher, loss=distill.Logits(temperature=4.0), checkpoint=path, **SETTINGS)
    _refused(path, r"with loss.0.temperature=4.0, not 2.0", teacher=teacher, loss=distill.Logits(temperature=2.0))
    other = _net()
    with torch.no_grad():
        other[0].weight.add_(1)
    _refused(path, r"with teachers=\[\"[0-9a-f]{64}\"\], not", teacher=other, loss=distill.Logits(temperature=4.0))
    _refused(path, r"with loss.0.type=netcompress.distill.losses.Logits, not .*_CrossEntropy")


def test_a_checkpoint_of_another_architecture_or_optimizer_is_refused(checkpoint):
    _refused(checkpoint, r"written for a student whose tensor '0.weight' is torch.float32 \(6, 8\), not torch.float32 "
             r"\(5, 8\): another architecture", model=_net(width=5))
    double = _net().double()
    _refused(checkpoint, r"tensor '0.weight' is torch.float32 \(6, 8\), not torch.float64", model=double)
    frozen = _net()
    frozen[0].weight.requires_grad_(False)  # one parameter fewer in the optimizer: before, the student was overwritten
    _refused(checkpoint, r"written with an optimizer of other parameter groups or shapes", model=frozen)


def _forge(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("optimizer"), r"is malformed: its 'optimizer' is not an optimizer's state"),
    (lambda s: s.pop("rng"), r"is malformed: 'rng' is not a random generator's state"),
    (lambda s: s.update(epoch="1"), r"is malformed: 'epoch' is '1', not an integer from 0 to 1"),
    (lambda s: s.update(epoch=7), r"is malformed: 'epoch' is 7, not an integer from 0 to 1"),
    (lambda s: s.update(epoch=True), r"is malformed: 'epoch' is True"),
    (lambda s: s["student"].update({"0.weight": torch.zeros(2, 2)}),
     r"is malformed: student tensor '0.weight' is not torch.float32 \(6, 8\)"),
    (lambda s: s["student"].pop("2.bias"), r"is malformed: its 'student' tensors are not the ones its architecture"),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)),
     r"is malformed: optimizer state 'exp_avg' of parameter 0 is torch.float32 \(3,\), not float \(6, 8\)"),
    (lambda s: s["optimizer"]["state"].update({9: {}}), r"holds state for a parameter 9 it does not have"),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr="fast"), r"optimizer setting 'lr' is a str"),
    (lambda s: s.pop("run"), r"records no settings of the run that wrote it"),
    (lambda s: s.pop("format"), r"was not written by this version of netcompress"),
    (lambda s: s.update(version=2), r"has version 2, not 1"),
    (lambda s: s.pop("architecture"), r"is malformed: it lists no architecture"),
])
def test_a_malformed_checkpoint_is_one_sentence_and_changes_nothing(checkpoint, edit, message):
    _forge(checkpoint, edit)
    _refused(checkpoint, message)


def test_a_truncated_foreign_or_special_file_is_one_sentence(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    _refused(checkpoint, r"cannot be read as a checkpoint: it is truncated or damaged; delete it")
    checkpoint.write_text("epoch,loss\n1,0.5\n")  # torch's own error was "(101)"
    _refused(checkpoint, r"cannot be read as a checkpoint: it is not a torch.save archive, so not a checkpoint")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, checkpoint)  # torch's own error was 40 lines on weights_only
    _refused(checkpoint, r"cannot be read as a checkpoint: it is not a torch.save archive")
    torch.save([1, 2, 3], checkpoint)
    _refused(checkpoint, r"holds a list, not a checkpoint netcompress wrote")
    torch.save({"epoch": 1, "student": {}}, checkpoint)  # the format before fingerprints
    _refused(checkpoint, r"was not written by this version of netcompress")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    _refused(fifo, r"checkpoint .*fifo.pt is a named pipe, not a regular file")
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    _refused(folder, r"is a directory")


def test_the_same_run_resumes_to_the_uninterrupted_result_with_batches_from_an_iterable(tmp_path):
    from conftest import StopAfter

    batches = [(X[i:i + 8], Y[i:i + 8]) for i in range(0, 24, 8)]

    def run(stop_after, path, data=batches):
        model = _net()
        nc.finetune(model, data, loss=[distill.Logits(), StopAfter(stop_after)], teacher=_net(4), checkpoint=path,
                    **{**SETTINGS, "epochs": 3})
        return model

    straight = run(None, None)
    with pytest.raises(KeyboardInterrupt):
        run(3 + 2, tmp_path / "it.pt")  # killed in the second epoch
    resumed = run(None, tmp_path / "it.pt")
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))
    other = [(x + 1, y) for x, y in batches]
    with pytest.raises(ValueError, match=r"with data.sha256=[0-9a-f]{64}, not"):
        run(None, tmp_path / "it.pt", data=other)


def test_a_run_on_a_shuffled_loader_resumes_to_the_uninterrupted_result(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from conftest import StopAfter

    def run(stop_after, path):
        loader = DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        model = _net()
        nc.finetune(model, loader, loss=[distill.Logits(), StopAfter(stop_after)], teacher=_net(4), checkpoint=path,
                    **{**SETTINGS, "epochs": 3})
        return model

    straight = run(None, None)
    with pytest.raises(KeyboardInterrupt):
        run(3 + 2, tmp_path / "loader.pt")  # killed in the second epoch: the loader's generator had moved on
    resumed = run(None, tmp_path / "loader.pt")
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))


def test_a_loader_without_a_length_trains(tmp_path):
    from torch.utils.data import DataLoader, IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(X, Y, strict=True))

    model = _net()
    before = model.state_dict()["0.weight"].clone()
    nc.finetune(model, DataLoader(Stream(), batch_size=8), checkpoint=tmp_path / "s.pt", **SETTINGS)
    assert not torch.equal(model.state_dict()["0.weight"], before)


def test_a_checkpoint_does_not_change_the_order_a_shuffled_loader_gives(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    def run(path, seed=0):
        loader = DataLoader(TensorDataset(X[:24], Y[:24]), batch_size=8, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        model = _net()
        nc.finetune(model, loader, checkpoint=path, **{**SETTINGS, "epochs": 2})
        return model

    plain, checkpointed = run(None), run(tmp_path / "loader.pt")  # drawing a batch to hash it would reshuffle
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), checkpointed.state_dict().values(),
                                                 strict=True))
    torch.manual_seed(123)  # the global random state before finetune is not part of the run
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 run(tmp_path / "loader.pt").state_dict().values(), strict=True))


@pytest.fixture(scope="module")
def ranked():
    from skimage import data

    return RankedSet([data.astronaut()[::8, ::8]], crop=48, kinds=("noise",))


def _ranker(ranked, path, width=2, **settings):
    torch.manual_seed(0)
    model = Shallow(48, width=width)
    before = _state(model)
    with pytest.raises(ValueError) as error:
        train_ranker(model, ranked, **{"steps": 2, "groups": 1, "progress": False, "checkpoint": path, **settings})
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert _untouched(model, before)
    return str(error.value)


def test_a_ranker_checkpoint_of_another_run_is_refused_and_the_model_is_untouched(ranked, tmp_path):
    from skimage import data

    path = tmp_path / "ranker.pt"
    torch.manual_seed(0)
    train_ranker(Shallow(48, width=2), ranked, steps=2, groups=1, checkpoint=path, progress=False)
    assert "lr=0.001, not 0.01" in _ranker(ranked, path, lr=1e-2)
    assert "groups=1, not 2" in _ranker(ranked, path, groups=2)
    assert "margin=1.0, not 0.5" in _ranker(ranked, path, margin=0.5)
    assert "fast=true, not false" in _ranker(ranked, path, fast=False)
    other = RankedSet([data.coffee()[::8, ::8]], crop=48, kinds=("noise",))
    assert "data.sha256=" in _ranker(other, path)
    assert "whose tensor 'features.0.weight' is torch.float32 (2, 3, 3, 3), not torch.float32 (3, 3, 3, 3)" in \
        _ranker(ranked, path, width=3)
    assert "'step' is 2, not an integer from 1 to 1" in _ranker(ranked, path, steps=1)
    _forge(path, lambda s: s.update(losses=["x", 1.0]))
    assert "'losses' is not a list of 2 numbers" in _ranker(ranked, path)
    path.write_bytes(b"\x00" * 100)
    assert "cannot be read as a checkpoint" in _ranker(ranked, path)
