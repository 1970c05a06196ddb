"""N2N's policies: what they decide over, the reward they learn from, and how (Ashok et al., ICLR 2018).

* the teacher's Linear/Conv2d layers in the order a forward pass calls them, and each layer's
  descriptor (type, kernel, stride, padding, outputs, inputs, whether it has a choice);
* the policy: a bidirectional LSTM over the descriptors, autoregressive for layer shrinkage,
  initialised from a seeded generator, and its REINFORCE step with a baseline;
* each stage's decision problem (which layers decide, what the others take, which layers follow
  another's action) and its state (policy, optimiser, baseline, the rewards of students met);
* the paper's reward of a student, :func:`n2n_reward`.

The search that trains them, and builds and distils the students, is :func:`netcompress.prune.n2n.n2n_search`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._core.layers import DENSE, innermost
from netcompress._core.transaction import evaluating
from netcompress.prune.family import removable_layers
from netcompress.prune.structured import plan_graph

__all__ = ["BASELINE_DECAY", "INVALID_REWARD", "n2n_reward"]

INVALID_REWARD = -1.0  # a student that cannot be built or run (the authors' code)
BASELINE_DECAY = 0.8  # b ← 0.8·b + 0.2·mean reward of the episode: tracks a reward that climbs over ~30 episodes
_FEATURES = 7  # per-layer descriptor length, see _descriptors


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
