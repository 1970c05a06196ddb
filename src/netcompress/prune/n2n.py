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
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from netcompress._core.checkpoint import module_digest, read_checkpoint, tensor_digest, verify_run, write_checkpoint
from netcompress._core.layers import progress_disabled, replace_module
from netcompress._core.transaction import evaluating
from netcompress.compress import compress
from netcompress.distill.finetune import accuracy, finetune
from netcompress.distill.losses import Logits
from netcompress.prune.family import removable_layers
from netcompress.prune.n2n_policy import _FEATURES as _FEATURES  # read here by the tests
from netcompress.prune.n2n_policy import (
    BASELINE_DECAY,
    INVALID_REWARD,
    _Choices,
    _initialise,
    _Policy,
    _reinforce,
    _removal_choices,
    _sequence,
    _shrink_choices,
    _Stage,
    n2n_reward,
)
from netcompress.prune.structured import sparsity_keeping

__all__ = ["SHRINK_RATIOS", "N2NResult", "n2n_search", "n2n_student"]

SHRINK_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # shares of channels kept (the paper's 0.1 … 1)
_PROBE = 4  # samples that trace a network


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
