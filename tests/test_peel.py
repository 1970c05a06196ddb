"""PEEL (prune_reallocate), FLOPs counting, and the per-layer sparsity of the ``channel`` method."""

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.prune import peel as reallocate
from netcompress.stats.flops import layer_flops

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only wait on each other


class SmallCNN(nn.Module):
    """conv (stride 2) → BN → ReLU, a grouped conv, a 1×1 conv, max-pool, flatten, one Linear layer."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.c3 = nn.Conv2d(8, 6, 1, bias=False)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.bn(self.c1(x)))))
        return self.fc(torch.max_pool2d(self.c3(x), 2).flatten(1))


class BNNet(nn.Module):
    """Two conv → BN → ReLU → pool stages and two Linear layers: every hidden layer can lose channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.c2, self.b2 = nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 2 * 2, 48)
        self.fc2 = nn.Linear(48, 5)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        return self.fc(torch.relu(self.c3(self.c2(a) + a)).flatten(1))


def _bn_net():
    torch.manual_seed(0)
    model = BNNet().eval()
    with torch.no_grad():
        for bn in (model.b1, model.b2):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(64, 1, 8, 8)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- FLOPs ---------------------------------------------------------------------------------------

def test_count_flops_equals_the_hand_formula():
    model = SmallCNN()
    # per sample: outputs × (in / groups) × kernel area, summed over the layers; BN, ReLU, pooling cost nothing
    c1 = (8 * 8 * 8) * 3 * 3 * 3      # stride 2, padding 1: 16×16 → 8×8
    c2 = (8 * 8 * 8) * (8 // 4) * 3 * 3  # groups=4
    c3 = (6 * 8 * 8) * 8 * 1 * 1
    fc = 10 * 6 * 4 * 4
    assert nc.count_flops(model, torch.randn(5, 3, 16, 16)) == c1 + c2 + c3 + fc == 27_072
    assert nc.count_flops(model, torch.randn(1, 3, 16, 16)) == 27_072  # per sample, whatever the batch
    assert layer_flops(model, torch.randn(2, 3, 16, 16)) == {"c1": c1, "c2": c2, "c3": c3, "fc": fc}
    # a Linear layer on tokens costs in · out per token
    assert nc.count_flops(nn.Linear(5, 7), torch.randn(2, 3, 5)) == 3 * 5 * 7
    # LeNet-5 (Caffe): 20·24²·25 + 50·8²·500 + 800·500 + 500·10
    from experiments.models import LeNet5
    assert nc.count_flops(LeNet5(), torch.zeros(1, 784)) == 288_000 + 1_600_000 + 400_000 + 5_000


def test_count_flops_counts_a_low_rank_layer_through_its_two_factors():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    x = torch.randn(64, 20)
    nc.compress(model, x, method="svd", rank={"0": 4}, progress=False)
    assert nc.count_flops(model, x) == 20 * 4 + 4 * 30 + 30 * 10


# --- the channel method with a share per layer ---------------------------------------------------

def test_channel_takes_a_sparsity_per_layer_and_keeps_exact_counts():
    model, x = _bn_net()
    nc.compress(model, x.split(32), method="channel", sparsity={"c1": 1 - 5 / 12, "fc1": 1 - 7 / 48}, progress=False)
    assert (model.c1.out_channels, model.b1.num_features, model.c2.in_channels) == (5, 5, 5)
    assert (model.fc1.out_features, model.fc2.in_features) == (7, 7)
    assert model.c2.out_channels == 16  # not named: left as it was
    assert model(x).shape == (64, 5)


def test_coupled_layers_must_be_given_one_share():
    torch.manual_seed(0)
    model, x = Residual(), torch.randn(32, 3, 8, 8)
    with pytest.raises(ValueError, match="must keep the same channels"):
        nc.compress(model, x, method="channel", sparsity={"c1": 0.5, "c2": 0.25}, progress=False)
    nc.compress(model, x, method="channel", sparsity={"c1": 0.5, "c2": 0.5}, progress=False)
    assert model.c1.out_channels == model.c2.out_channels == model.c3.in_channels == 4


def test_a_bad_share_in_the_dict_names_the_layer():
    model, x = _bn_net()
    with pytest.raises(ValueError, match="layer 'fc1'.*sparsity must be a fraction"):
        nc.compress(model, x, method="channel", sparsity={"c1": 0.5, "fc1": 1.5}, progress=False)


# --- PEEL ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.5, 0.25])
def test_peel_meets_the_flops_target_within_two_percent_and_runs(target):
    model, x = _bn_net()
    dense = nc.count_flops(model, x[:1])
    result = nc.prune_reallocate(model, x, flops=target, progress=False)
    reached = nc.count_flops(model, x[:1]) / dense
    assert abs(reached - target) <= 0.02 * target
    assert result.flops_before == dense and result.flops_after == nc.count_flops(model, x[:1])
    assert result.fraction == pytest.approx(reached)
    # the layers really shrank to the reported counts, readers and BatchNorms with them
    assert result.channels_after == {"c1": model.c1.out_channels, "c2": model.c2.out_channels,
                                     "fc1": model.fc1.out_features}
    assert model.b1.num_features == model.c2.in_channels == model.c1.out_channels
    assert model.fc1.in_features == 4 * model.c2.out_channels
    assert sum(result.channels_after.values()) < 12 + 16 + 48
    assert all(result.backbone[n] <= result.channels_after[n] for n in result.backbone)
    assert model(x).shape == (64, 5) and torch.isfinite(model(x)).all()
    assert result.skipped["fc2"].startswith("its units cannot be removed")
    assert "MACs per sample" in str(result)


class Redundant(nn.Module):
    """12 → 32 → 32 → 4, where ``fc2``'s 32 units are 8 distinct ones and 24 redundant copies of them."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        with torch.no_grad():
            copies = torch.arange(32) % 8  # unit j repeats unit j mod 8 ...
            self.fc2.weight.copy_(self.fc2.weight[copies])
            self.fc2.bias.copy_(self.fc2.bias[copies])
            self.out.weight[:, 8:] = 0  # ... and only the first copy is read, so the function has 8 units

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_the_layer_that_matters_gets_the_larger_share():
    torch.manual_seed(0)
    model, x = Redundant().eval(), torch.randn(300, 12)
    result = nc.prune_reallocate(model, x, flops=0.3, over_prune=0.25, progress=False)
    assert result.measure == "output"
    # the backbone already keeps fc2's 8 distinct units: giving back its copies adds nothing,
    # while fc1's lost channels carry information
    assert result.backbone == {"fc1": 8, "fc2": 8}
    assert result.importance["fc1"] > 0.01
    assert result.importance["fc2"] < 1e-6 * result.importance["fc1"] + 1e-9
    kept = {n: result.channels_after[n] / result.channels_before[n] for n in ("fc1", "fc2")}
    assert kept["fc1"] > kept["fc2"]
    assert result.channels_after == {"fc1": 21, "fc2": 8}  # 12·k + 8·k + 8·4 ≤ 0.3 · 1536 MACs
    assert result.losses["reallocated"] < result.losses["backbone"]


@pytest.mark.parametrize("arguments, message", [
    ({"flops": 0}, r"flops must be a fraction in \(0, 1\]"),
    ({"flops": 1.5}, r"flops must be a fraction in \(0, 1\]"),
    ({"flops": True}, r"flops must be a fraction"),
    ({"flops": "0.5"}, r"flops must be a fraction"),
    ({"flops": 1e-4}, r"flops=0.0001 is below what pruning channels can reach"),
    ({"flops": 0.2, "over_prune": 1.0}, r"over_prune must be the share in \(0, 1\)"),
    ({"flops": 0.2, "over_prune": 0.9}, r"over_prune=0.9 builds a backbone .* above flops=0.2"),
    ({"flops": 0.5, "importance": "accuracy"}, r"importance must be 'auto', 'loss' or 'output'"),
    ({"flops": 0.5, "importance": "loss"}, r"importance='loss' needs labels"),
    ({"flops": 0.5, "holdout": 1.0}, r"holdout must be the share in \[0, 1\)"),
    ({"flops": 0.5, "epochs": -1}, r"epochs must be a whole number >= 0"),
    ({"flops": 0.5, "lr": 0}, r"lr must be a positive learning rate"),
    ({"flops": 0.5, "criterion": "rate"}, r"criterion must be 'energy' or 'l1'"),
    ({"flops": 0.5, "layers": ["fc2"]}, r"cannot prune the units of layer 'fc2'"),
])
def test_bad_arguments_raise_one_sentence_naming_them_and_leave_the_model(arguments, message):
    model, x = _bn_net()
    before = _state(model)
    with pytest.raises(ValueError, match=message):
        nc.prune_reallocate(model, x, progress=False, **arguments)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.c1.out_channels == 12


def test_a_failure_after_pruning_puts_the_model_back(monkeypatch):
    model, x = _bn_net()
    before, reference = _state(model), model(x)
    modules = dict(model.named_modules())

    def broken(*args, **kwargs):
        raise RuntimeError("training diverged")

    monkeypatch.setattr(reallocate, "finetune", broken)
    with pytest.raises(RuntimeError, match="training diverged"):
        nc.prune_reallocate(model, x, flops=0.3, epochs=1, progress=False)
    assert dict(model.named_modules()) == modules  # the very same module objects, none swapped
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), reference)


def test_peel_on_real_digits_keeps_accuracy_and_recovers_with_distillation():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    x, y, test_x, test_y = images[order[:1000]], labels[order[:1000]], images[order[1000:]], labels[order[1000:]]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    nc.finetune(net, (x, y), epochs=10, lr=3e-3, seed=0, progress=False)

    def accuracy(model):
        with torch.no_grad():
            return (model.eval()(test_x).argmax(1) == test_y).float().mean().item()

    dense = accuracy(net)
    pruned = copy.deepcopy(net)
    result = nc.prune_reallocate(pruned, (x, y), flops=0.15, epochs=2, lr=1e-3, progress=False)
    assert result.measure == "loss" and abs(result.fraction - 0.15) <= 0.02 * 0.15
    assert nc.count_flops(pruned, x[:1]) == result.flops_after < 0.16 * nc.count_flops(net, x[:1])
    assert result.losses["reallocated"] < result.losses["backbone"]
    assert set(result.losses) == {"dense", "backbone", "reallocated", "distilled"}
    assert dense > 0.9 and accuracy(pruned) > dense - 0.03, (dense, accuracy(pruned), str(result))
