"""N2N learning: a teacher compressed into a student by two policies trained with REINFORCE.

Ashok, Rhinehart, Beainy and Kitani, "N2N learning: network to network compression via policy
gradient reinforcement learning", ICLR 2018. Two stages, each a policy over the teacher's
sequence of layers (Linear/Conv2d, in the order the forward pass calls them), each layer
described by (type, kernel, stride, padding, outputs, inputs, whether it has a choice):

1. *layer removal*: a bidirectional LSTM (the paper's Fig. 2a: whether a layer can go depends on
   the layers before and after it) chooses keep/remove per layer. A removed layer becomes
   ``nn.Identity``, so only a layer whose input and output have the same shape can be removed
   (called once, e.g. a ``width → width`` Linear); every other layer is always kept (the authors' code
   resizes the next layer to fit instead; here the student keeps the teacher's remaining weights);
2. *layer shrinkage*: on the best student of stage 1, a bidirectional LSTM over the layers feeds
   an LSTM cell that also sees the ratio chosen for the previous layer (autoregressive, as the authors'
   shrinkage controller: shrinking a layer changes the next layer's input) and chooses the
   share of output channels each layer keeps from ``ratios``. The layers shrink physically by the
   ``channel`` method (:mod:`.structured`: energy ranking, least-squares re-fit of the readers);
   layers it cannot prune (the output layer) keep their channels, layers coupled by a residual add
   take the ratio chosen for the first of them.

Each candidate student is distilled from the teacher for a few epochs (:func:`netcompress.finetune`,
:class:`~netcompress.distill.Logits`) and scored on held-out data with the paper's reward
``R = C(2 − C) · A_student / A_teacher``, ``C = 1 − params_student / params_teacher``; a student
that cannot be built or run scores ``−1`` (the authors' code). The policy moves by REINFORCE,
``∇J ≈ 1/m Σ_i (R_i − b) Σ_t ∇ log π(a_t | h_t)`` over ``m`` rollouts, with ``b`` a moving average
of past rewards, and Adam. A student met again in the same stage is not retrained: its reward is
reused (as the authors' code does), which saves most of the time once a policy has converged.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._core.checkpoint import module_digest, read_checkpoint, tensor_digest, verify_run, write_checkpoint
from netcompress._core.layers import DENSE, innermost, progress_disabled, replace_module
from netcompress._core.transaction import evaluating
from netcompress.compress import compress
from netcompress.distill.finetune import accuracy, finetune
from netcompress.distill.losses import Logits
from netcompress.prune.family import removable_layers
from netcompress.prune.structured import plan_graph, sparsity_keeping

__all__ = ["INVALID_REWARD", "SHRINK_RATIOS", "N2NResult", "n2n_reward", "n2n_search", "n2n_student"]

SHRINK_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # shares of channels kept (the paper's 0.1 … 1)
INVALID_REWARD = -1.0  # a student that cannot be built or run (the authors' code)
BASELINE_DECAY = 0.8  # b ← 0.8·b + 0.2·mean reward of the episode: tracks a reward that climbs over ~30 episodes
_FEATURES = 7  # per-layer descriptor length, see _descriptors
_PROBE = 4  # samples that trace a network


def n2n_reward(student_params: int, teacher_params: int, student_accuracy: float, teacher_accuracy: float) -> float:
    """The paper's reward ``C(2 − C) · A_student / A_teacher`` with ``C = 1 − student_params / teacher_params``.

    ``C(2 − C)`` rises steeply for small compressions and flattens near ``C = 1``, so that past a
    point accuracy, not size, decides (Ashok et al., ICLR 2018).
    """
    if teacher_params <= 0 or teacher_accuracy <= 0:
        raise ValueError(f"teacher_params and teacher_accuracy must be positive, got {teacher_params}, {teacher_accuracy}")
    c = 1.0 - student_params / teacher_params
    return c * (2.0 - c) * student_accuracy / teacher_accuracy


@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    removable: bool  # called once, with input and output of the same shape


def _sequence(model: nn.Module, example: torch.Tensor) -> list[_Layer]:
    """The Linear/Conv2d layers of ``model`` in the order a forward pass on ``example`` calls them."""
    leaves = innermost(model, DENSE)
    calls: dict[str, list[bool]] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: calls.setdefault(n, []).append(
        isinstance(i[0], torch.Tensor) and i[0].shape == o.shape)) for n, m in leaves.items()]
    try:
        with evaluating(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [_Layer(n, leaves[n], same == [True]) for n, same in calls.items()]


def _descriptors(layers: list[_Layer], decides: list[bool]) -> torch.Tensor:
    """Per layer the paper's state (type, kernel, stride, padding, outputs) plus inputs and whether it has a choice."""
    rows = []
    for layer, decide in zip(layers, decides, strict=True):
        m = layer.module
        conv = isinstance(m, nn.Conv2d)
        outputs, inputs = (m.out_channels, m.in_channels) if conv else (m.out_features, m.in_features)
        padding = m.padding[0] if conv and isinstance(m.padding, tuple) else 0
        rows.append([float(conv), (m.kernel_size[0] if conv else 1) / 7, (m.stride[0] if conv else 1) / 4,
                     padding / 4, math.log2(outputs) / 10, math.log2(inputs) / 10, float(decide)])
    return torch.tensor(rows, dtype=torch.float32)


class _Policy(nn.Module):
    """A bidirectional LSTM over the layer descriptors, then per layer a distribution over ``choices`` actions.

    With ``autoregressive`` an LSTM cell reads each layer's context with the previous layer's action
    (one-hot, or a start symbol) before the output layer, as the authors' shrinkage controller does.
    """

    def __init__(self, choices: int, hidden: int, autoregressive: bool):
        super().__init__()
        self.choices = choices
        self.encoder = nn.LSTM(_FEATURES, hidden, batch_first=True, bidirectional=True)
        self.cell = nn.LSTMCell(2 * hidden + choices + 1, hidden) if autoregressive else None
        self.head = nn.Linear(hidden if autoregressive else 2 * hidden, choices)

    def _walk(self, states: torch.Tensor, choose) -> torch.Tensor:
        """``(layers, choices)`` logits, row by row; ``choose(t, row)`` gives layer ``t``'s action, which the
        next row reads when autoregressive."""
        context = self.encoder(states[None])[0][0]
        if self.cell is None:
            rows = self.head(context)
            for t in range(len(rows)):
                choose(t, rows[t])
            return rows
        h = c = context.new_zeros(1, self.cell.hidden_size)
        previous, rows = self.choices, []  # the start symbol before the first layer
        for t in range(len(states)):
            one_hot = F.one_hot(torch.tensor(previous), self.choices + 1).to(context.dtype)
            h, c = self.cell(torch.cat([context[t], one_hot])[None], (h, c))
            rows.append(self.head(h)[0])
            previous = int(choose(t, rows[-1]))
        return torch.stack(rows)

    def logits(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The logits of every layer with ``actions`` taken (row ``t`` depends on ``actions[:t]`` only)."""
        return self._walk(states, lambda t, row: actions[t])

    def log_prob(self, states: torch.Tensor, actions: torch.Tensor, decides: torch.Tensor) -> torch.Tensor:
        """``Σ_t log π(a_t | h_t)`` over the layers that have a choice."""
        chosen = self.logits(states, actions).log_softmax(-1).gather(1, actions[:, None])[:, 0]
        return (chosen * decides).sum()

    @torch.no_grad()
    def sample(self, states: torch.Tensor, decides: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator,
               follow: Sequence[int | None]) -> torch.Tensor:
        """One action per layer: drawn where ``decides``, copied from layer ``follow[t]`` or ``fixed`` elsewhere."""
        actions = fixed.clone()

        def choose(t: int, row: torch.Tensor) -> torch.Tensor:
            if follow[t] is not None:
                actions[t] = actions[follow[t]]
            elif decides[t]:
                actions[t] = torch.multinomial(row.softmax(-1), 1, generator=generator)[0]
            return actions[t]

        self._walk(states, choose)
        return actions


def _initialise(policy: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default uniform ``±1/√fan`` initialisation, drawn from ``generator`` so that a seed fixes it."""
    with torch.no_grad():
        for module in policy.modules():
            if isinstance(module, (nn.LSTM, nn.LSTMCell)):
                bound = 1 / math.sqrt(module.hidden_size)
            elif isinstance(module, nn.Linear):
                bound = 1 / math.sqrt(module.in_features)
            else:
                continue
            for p in module.parameters(recurse=False):
                p.uniform_(-bound, bound, generator=generator)


def _reinforce(policy: _Policy, optimizer: torch.optim.Optimizer, states: torch.Tensor, decides: torch.Tensor,
               rollouts: Sequence[tuple[torch.Tensor, float]], baseline: float) -> None:
    """One REINFORCE step: ascend ``1/m Σ_i (R_i − b) log π(actions_i)`` (REINFORCE with a baseline, as the paper)."""
    optimizer.zero_grad()
    loss = -sum((reward - baseline) * policy.log_prob(states, actions, decides) for actions, reward in rollouts)
    (loss / len(rollouts)).backward()
    optimizer.step()


def n2n_student(base: nn.Module, data: torch.Tensor, *, remove: Sequence[str] = (),
                keep: dict[str, float] | None = None) -> nn.Module:
    """A copy of ``base`` with the layers ``remove`` replaced by ``nn.Identity`` and each layer of ``keep``
    shrunk to ``round(keep[name] · channels)`` output channels (at least one) by the ``channel`` method.

    ``data`` (an input tensor) gives the statistics the channel ranking and re-fit use; ``base`` is not
    modified and the student is returned in eval mode. A layer of ``remove`` must have inputs and outputs
    of one shape; layers coupled by a residual add must be given the same share.
    """
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a tensor of inputs, got {type(data).__name__}")
    student = copy.deepcopy(base)
    layers = {layer.name: layer for layer in _sequence(student, data[:_PROBE])}
    for name in remove:
        if name not in layers or not layers[name].removable:
            raise ValueError(f"remove names layer {name!r}, which is not a Linear/Conv2d layer called once with "
                             "inputs and outputs of the same shape; only such layers can become nn.Identity")
        replace_module(student, name, nn.Identity())
    kept = {}
    for name, share in (keep or {}).items():
        if name not in layers or name in remove:
            raise ValueError(f"keep names layer {name!r}, which is not a remaining Linear/Conv2d layer of the model")
        if not 0 < share <= 1:
            raise ValueError(f"keep[{name!r}] must be a share in (0, 1] of the layer's channels, got {share!r}")
        channels = layers[name].module.weight.shape[0]
        kept[name] = max(1, min(channels, round(share * channels)))
    sparsity = sparsity_keeping(student, kept)
    if sparsity:
        compress(student, list(data.split(256)), method="channel", sparsity=sparsity, progress=False)
    return student.eval()


@dataclass
class N2NResult:
    """What :func:`n2n_search` found: the best student (highest reward) and the search's history.

    ``removed`` lists the layers the student replaced by ``nn.Identity``; ``keep`` the share of
    output channels chosen for each shrinkable layer (empty for a stage-1 student); ``channels``
    the output channels of every remaining Linear/Conv2d layer. ``accuracy`` values are in percent on
    the ``val_data`` the rewards used. ``history`` holds one entry per episode: its stage, rewards
    per rollout, their mean, the baseline used, and the best reward so far.
    """

    student: nn.Module
    stage: str
    removed: list[str]
    keep: dict[str, float]
    channels: dict[str, int]
    params: int
    teacher_params: int
    accuracy: float
    teacher_accuracy: float
    reward: float
    history: list[dict] = field(default_factory=list)

    @property
    def compression(self) -> float:
        """``C = 1 − params / teacher_params``."""
        return 1 - self.params / self.teacher_params

    def __str__(self) -> str:
        return (f"N2N best student ({self.stage}): {self.params:,} parameters ({self.teacher_params / self.params:.1f}x "
                f"fewer than the teacher's {self.teacher_params:,}), accuracy {self.accuracy:.2f} % (teacher "
                f"{self.teacher_accuracy:.2f} %), reward {self.reward:.4f}; removed {self.removed or 'none'}; "
                f"channels {self.channels}")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _pair(data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise TypeError(f"{name} must be an (inputs, labels) pair of tensors, got {type(data).__name__}")
    if len(data[0]) != len(data[1]) or len(data[0]) == 0:
        raise ValueError(f"{name} must hold as many labels as inputs, at least one (got {len(data[0])} inputs, "
                         f"{len(data[1])} labels)")
    return data


def _check(teacher, episodes, rollouts, student_epochs, student_lr, policy_lr, hidden, ratios) -> tuple[int, int]:
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    pair = (episodes, episodes) if isinstance(episodes, int) else tuple(episodes)
    if len(pair) != 2 or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in pair) or not any(pair):
        raise ValueError(f"episodes must be a whole number > 0, or a (removal, shrinkage) pair of whole numbers >= 0 "
                         f"not both 0, got {episodes!r}")
    for name, value in (("rollouts", rollouts), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if isinstance(student_epochs, bool) or not isinstance(student_epochs, int) or student_epochs < 0:
        raise ValueError(f"student_epochs must be a whole number >= 0 of distillation epochs, got {student_epochs!r}")
    for name, value in (("student_lr", student_lr), ("policy_lr", policy_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive learning rate, got {value!r}")
    if not ratios or any(not 0 < r <= 1 for r in ratios) or list(ratios) != sorted(set(ratios)) or ratios[-1] != 1:
        raise ValueError(f"ratios must be increasing shares in (0, 1] ending at 1.0 (keep every channel), got {ratios!r}")
    return pair


def _distil(student: nn.Module, teacher: nn.Module, train, *, epochs: int, lr: float, loss: nn.Module,
            batch_size: int, seed: int) -> None:
    """The brief training of a candidate student: distillation from the teacher (the paper trains each student
    a few epochs on the teacher's outputs before measuring its accuracy)."""
    if epochs:
        finetune(student, train, epochs=epochs, lr=lr, teacher=teacher, loss=loss, batch_size=batch_size, seed=seed,
                 progress=False)


@dataclass
class _Stage:
    """One stage's policy, its optimiser and baseline, the episodes done, and the rewards of students met."""

    name: str
    policy: _Policy
    optimizer: torch.optim.Optimizer
    episodes: int
    done: int = 0
    baseline: float | None = None
    cache: dict[str, list[float]] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(), "done": self.done,
                "baseline": self.baseline, "cache": dict(self.cache)}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.done, self.baseline, self.cache = int(state["done"]), state["baseline"], dict(state["cache"])


@dataclass
class _Choices:
    """A stage's decision problem over a layer sequence: who decides, what the others take, and how actions build."""

    layers: list[_Layer]
    decides: torch.Tensor  # float mask: the layers whose action is drawn and counted in log π
    fixed: torch.Tensor  # the action of a layer without a choice
    follow: list[int | None]  # a layer that copies another's action (coupled channels)

    @property
    def states(self) -> torch.Tensor:
        return _descriptors(self.layers, [bool(d) for d in self.decides])


def _removal_choices(teacher: nn.Module, example: torch.Tensor) -> _Choices:
    layers = _sequence(teacher, example)
    return _Choices(layers, torch.tensor([float(layer.removable) for layer in layers]),
                    torch.zeros(len(layers), dtype=torch.long), [None] * len(layers))


def _shrink_choices(base: nn.Module, example: torch.Tensor, ratios: Sequence[float]) -> _Choices:
    layers = _sequence(base, example)
    index = {layer.name: i for i, layer in enumerate(layers)}
    graph, placed = plan_graph(base, [], example)[0], set()
    decides, follow = [0.0] * len(layers), [None] * len(layers)
    for name in removable_layers(base, example)[0]:
        group = graph.group(name)
        if name in placed or any(member in graph.blocked for member in group):
            continue  # already decided, or coupled to a layer the channel method cannot prune
        placed.update(group)
        positions = sorted(index[member] for member in group if member in index)
        decides[positions[0]] = 1.0
        for p in positions[1:]:
            follow[p] = positions[0]  # coupled by a residual add: the channel method needs one share for all
    return _Choices(layers, torch.tensor(decides), torch.full((len(layers),), len(ratios) - 1), follow)


class _Search:
    """The state of one :func:`n2n_search`: both stages, the best students so far, the history, the generator."""

    def __init__(self, teacher, train, val, settings: dict, loss: nn.Module, generator: torch.Generator):
        self.teacher, self.train, self.val, self.settings, self.loss = teacher, train, val, settings, loss
        self.generator, self.example, self.history = generator, train[0][:_PROBE], []
        with evaluating(teacher):
            self.teacher_accuracy = accuracy(teacher, *val)
        self.teacher_params = _params(teacher)
        hidden, lr = settings["hidden"], settings["policy_lr"]
        self.stages = {}
        for name, choices, autoregressive, episodes in (("removal", 2, False, settings["episodes"][0]),
                                                        ("shrinkage", len(settings["ratios"]), True,
                                                         settings["episodes"][1])):
            policy = _Policy(choices, hidden, autoregressive)
            _initialise(policy, generator)
            self.stages[name] = _Stage(name, policy, torch.optim.Adam(policy.parameters(), lr=lr), episodes)
        teacher_state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        # The teacher itself scores C = 0, reward 0: a student must do better to be kept.
        self.best = self.stage1 = {"stage": "teacher", "removed": [], "keep": {}, "state": teacher_state,
                                   "reward": 0.0, "accuracy": self.teacher_accuracy, "params": self.teacher_params}

    def state_dict(self) -> dict:
        return {"version": 1, "settings": self.settings, "generator": self.generator.get_state(),
                "stages": {n: s.state_dict() for n, s in self.stages.items()}, "history": self.history,
                "best": self.best, "stage1": self.stage1}

    def load_state_dict(self, state: dict, path=None) -> None:
        """Resume from ``state`` after checking its settings against this search's (the shared check)."""
        if not isinstance(state, dict) or not all(k in state for k in ("settings", "generator", "stages", "history",
                                                                        "best", "stage1")):
            raise ValueError(f"checkpoint {path} is not a checkpoint of an N2N search; delete it or pass another "
                             "checkpoint path")
        verify_run(path, state["settings"], self.settings, run="search")
        self.generator.set_state(state["generator"])
        for name, stage in self.stages.items():
            stage.load_state_dict(state["stages"][name])
        self.history, self.best, self.stage1 = list(state["history"]), state["best"], state["stage1"]

    def rebuild(self, candidate: dict) -> nn.Module:
        """The student a candidate record describes: its architecture rebuilt, then its weights loaded."""
        x = self.train[0]
        student = n2n_student(self.teacher, x, remove=candidate["removed"])
        if candidate["keep"]:
            student = n2n_student(student, x, keep=candidate["keep"])
        student.load_state_dict(candidate["state"])
        return student.eval()

    def evaluate(self, build, seed: int) -> tuple[float, float, int, nn.Module | None]:
        """Reward, accuracy (%), parameters and the student; a student that cannot be built or run scores −1."""
        try:
            student = build()
            _distil(student, self.teacher, self.train, epochs=self.settings["student_epochs"],
                    lr=self.settings["student_lr"], loss=self.loss, batch_size=self.settings["batch_size"], seed=seed)
            acc = accuracy(student, *self.val)
        except (ValueError, RuntimeError):
            return INVALID_REWARD, 0.0, 0, None
        params = _params(student)
        return n2n_reward(params, self.teacher_params, acc, self.teacher_accuracy), acc, params, student

    def run(self, stage: _Stage, choices: _Choices, describe, save, bar) -> None:
        """Episodes of ``rollouts`` students each, a REINFORCE step after each, a checkpoint after each step."""
        states, rollouts = choices.states, self.settings["rollouts"]
        while stage.done < stage.episodes:
            drawn = []
            for _ in range(rollouts):
                actions = stage.policy.sample(states, choices.decides, choices.fixed, self.generator, choices.follow)
                seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
                key = ",".join(map(str, actions.tolist()))
                if key not in stage.cache:
                    removed, keep = describe(actions)
                    reward, acc, params, student = self.evaluate(
                        lambda removed=removed, keep=keep: self.candidate(stage.name, removed, keep), seed)
                    stage.cache[key] = [reward, acc, params]
                    if student is not None:
                        self.offer(stage.name, removed, keep, student, reward, acc, params)
                drawn.append((actions, stage.cache[key][0]))
            rewards = [r for _, r in drawn]
            mean = sum(rewards) / len(rewards)
            if stage.baseline is None:  # first episode: its own mean, so that its advantages sum to zero
                stage.baseline = mean
            _reinforce(stage.policy, stage.optimizer, states, choices.decides, drawn, stage.baseline)
            self.history.append({"stage": stage.name, "episode": stage.done, "rewards": rewards, "mean": mean,
                                 "baseline": stage.baseline, "best": self.best["reward"]})
            stage.baseline = BASELINE_DECAY * stage.baseline + (1 - BASELINE_DECAY) * mean
            stage.done += 1
            save()
            bar.update(1)
            bar.set_postfix(best=f"{self.best['reward']:.4f}")

    def candidate(self, stage: str, removed: list[str], keep: dict[str, float]) -> nn.Module:
        """A new student: stage 1 removes layers of the teacher, stage 2 shrinks the best student of stage 1."""
        if stage == "removal":
            return n2n_student(self.teacher, self.train[0], remove=removed)
        return n2n_student(self.base, self.train[0], keep=keep)

    def offer(self, stage: str, removed, keep, student: nn.Module, reward: float, acc: float, params: int) -> None:
        record = {"stage": stage, "removed": list(removed), "keep": dict(keep),
                  "state": {k: v.detach().clone() for k, v in student.state_dict().items()},
                  "reward": reward, "accuracy": acc, "params": params}
        if reward > self.best["reward"]:
            self.best = record
        if stage == "removal" and reward > self.stage1["reward"]:
            self.stage1 = record


def n2n_search(
    teacher: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor],
    *,
    episodes: int | tuple[int, int] = 20,
    rollouts: int = 5,
    student_epochs: int = 3,
    student_lr: float = 1e-3,
    distill_loss: nn.Module | None = None,
    ratios: Sequence[float] = SHRINK_RATIOS,
    hidden: int = 16,
    policy_lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> N2NResult:
    """Search a smaller student of ``teacher`` with N2N learning (Ashok et al., ICLR 2018); ``teacher`` is not modified.

    Stage 1 trains a layer-removal policy for ``episodes`` episodes, stage 2 a layer-shrinkage
    policy on the best student of stage 1 (see the module docstring). Each episode draws
    ``rollouts`` students, distils each from the teacher for ``student_epochs`` on ``train_data``,
    rewards it with :func:`n2n_reward` on ``val_data``, then takes one REINFORCE step.

    Args:
        teacher: the trained network; only Linear/Conv2d layers called once with inputs and outputs
            of one shape can be removed (the others are always kept), and shrinkage needs a model
            ``torch.fx`` can trace (as the ``channel`` method does).
        train_data, val_data: ``(inputs, labels)`` tensors: distillation data, and the held-out data
            whose accuracy enters the reward.
        episodes: per stage, or a ``(removal, shrinkage)`` pair (0 skips that stage).
        rollouts: students drawn per episode (the ``m`` of the policy gradient).
        student_epochs, student_lr, batch_size, distill_loss: the brief distillation of each student;
            ``distill_loss`` defaults to :class:`~netcompress.distill.Logits` with Hinton et al.'s weighting
            (``T = 4``, ``0.1`` on the labels, ``0.9·T²`` on the soft targets).
        ratios: the shares of channels a layer may keep (increasing, ending at 1.0).
        hidden, policy_lr: the LSTM policies' hidden size and Adam learning rate.
        seed: every random choice (policy initialisation, actions, distillation shuffles) comes from a
            ``torch.Generator`` seeded with it.
        checkpoint: a file written after every episode; if it exists, the search resumes from it and
            ends exactly as an uninterrupted one (a checkpoint of other settings, another teacher (a
            SHA-256 of its weights) or other data (a SHA-256 of both pairs' tensors) raises ``ValueError``).
        progress: a tqdm bar over episodes (``None``: only on a terminal).

    Returns:
        An :class:`N2NResult`: the best student found (highest reward over both stages), its size,
        accuracy and reward, the actions that built it, and one history entry per episode.
    """
    from tqdm.auto import tqdm

    pair = _check(teacher, episodes, rollouts, student_epochs, student_lr, policy_lr, hidden, ratios)
    train, val = _pair(train_data, "train_data"), _pair(val_data, "val_data")
    settings = {"episodes": list(pair), "rollouts": rollouts, "student_epochs": student_epochs,
                "student_lr": float(student_lr), "ratios": [float(r) for r in ratios], "hidden": hidden,
                "policy_lr": float(policy_lr), "batch_size": batch_size, "seed": seed,
                "teacher_params": _params(teacher), "samples": [len(train[0]), len(val[0])],
                "teacher": module_digest(teacher), "data": tensor_digest([*train, *val])}
    loss = distill_loss if distill_loss is not None else Logits(temperature=4.0, alpha=0.1, beta=0.9 * 4.0 ** 2)
    search = _Search(teacher, train, val, settings, loss, torch.Generator().manual_seed(seed))
    removal = _removal_choices(teacher, search.example)
    # Traced now, so that a model the channel method cannot follow fails before stage 1, not after it.
    shrinkable = removable_layers(teacher, search.example)[0] if pair[1] else {}
    if not (pair[0] and removal.decides.any()) and not shrinkable:
        raise ValueError("teacher has no layer N2N can remove (none has inputs and outputs of one shape) or shrink "
                         "(the channel method can prune none); give a deeper network")
    state = read_checkpoint(checkpoint)
    if state is not None:
        search.load_state_dict(state, checkpoint)

    def save() -> None:
        if checkpoint is not None:
            write_checkpoint(checkpoint, search.state_dict())

    with tqdm(total=sum(pair), initial=sum(s.done for s in search.stages.values()), desc="N2N", unit="episode",
              disable=progress_disabled(progress)) as bar:
        if removal.decides.any():
            def removed_by(actions):
                return [layer.name for layer, a in zip(removal.layers, actions.tolist(), strict=True) if a == 1], {}

            search.run(search.stages["removal"], removal, removed_by, save, bar)
        else:
            bar.update(pair[0])  # nothing to remove: stage 1 is skipped
        search.base = search.rebuild(search.stage1)
        shrink = _shrink_choices(search.base, search.example, ratios) if pair[1] else None
        if shrink is not None and shrink.decides.any():
            def kept_by(actions):
                chosen = zip(shrink.layers, actions.tolist(), shrink.decides.tolist(), shrink.follow, strict=True)
                return search.stage1["removed"], {layer.name: float(ratios[a]) for layer, a, decides, follow in chosen
                                                  if decides or follow is not None}

            search.run(search.stages["shrinkage"], shrink, kept_by, save, bar)
        else:
            bar.update(pair[1])
    best = search.best
    student = search.rebuild(best)
    channels = {layer.name: layer.module.weight.shape[0] for layer in _sequence(student, search.example)}
    return N2NResult(student=student, stage=best["stage"], removed=list(best["removed"]), keep=dict(best["keep"]),
                     channels=channels, params=int(best["params"]), teacher_params=search.teacher_params,
                     accuracy=float(best["accuracy"]), teacher_accuracy=search.teacher_accuracy,
                     reward=float(best["reward"]), history=list(search.history))
