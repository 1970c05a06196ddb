"""PEEL: channel pruning by resource reallocation (Hou, Ma, Liu, Wang and Loy, "Network Pruning via
Resource Reallocation", arXiv:2103.01847, 2021).

Instead of pruning the original network step by step, PEEL builds an over-pruned backbone,
measures how much each layer would help if it were given channels back, and hands the FLOPs
budget to the layers that help most, in one round; knowledge distillation from the original
network then recovers the accuracy. Here:

1. *backbone*: every prunable layer (a group of layers coupled by a residual add counts as one)
   keeps the same small share ``over_prune`` of its channels;
2. *importance* (the seed slides name this step but not its estimator; this one is our choice):
   for each layer, the loss on the target data of the backbone with that layer
   alone given all its channels back, subtracted from the backbone's loss (clipped at 0). This
   asks PEEL's question directly (where does an extra channel help the network most, on the
   data it will serve), needs no training, and is cheap: every candidate is built by the
   ``channel`` method (energy ranking, least-squares re-fit of the readers) from one set of
   statistics of the original network, then run once over the data. The loss is measured on
   held-out samples (``holdout``, every fifth by default): the re-fit is a regression, and on
   the samples it was fitted to a layer with few kept channels can look lossless. The loss is the
   cross-entropy on the labels (``importance="loss"``) or, without labels, the relative error of
   the network's outputs against the original's, ``Σ||f(x) − f₀(x)||² / Σ||f₀(x)||²`` (``"output"``);
3. *reallocation* (:mod:`.peel_allocation`): layer ``g`` keeps the share
   ``backbone_g + t · importance_g / max importance`` of its channels (at most all of them): extra
   channels go to layers in proportion to their importance, and ``t`` is bisected so that the
   network's multiply-accumulates meet the target; the rounding remainder is spent one channel at
   a time where a layer is furthest below its share
   (where a coarse channel steps over the target, it is paid for by the finest channels of the
   least important layers, so that the result lands within ``TOLERANCE``);
4. *rebuild*: the ``channel`` method prunes the *original* network to those per-layer counts
   (its dependency tracing shrinks every reader and BatchNorm);
5. *recovery* (``epochs > 0``): :func:`netcompress.finetune` with the original network as teacher.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._core.layers import progress_disabled
from netcompress._core.tensors import _take, call_model, model_device_dtype, model_input
from netcompress._core.tensors import batch_size as samples_in
from netcompress._core.transaction import all_or_nothing, evaluating
from netcompress.compress import compress
from netcompress.distill.finetune import finetune
from netcompress.distill.losses import Logits
from netcompress.prune.family import removable_layers
from netcompress.prune.peel_allocation import TOLERANCE, _largest_share_within, _reallocate, _uniform
from netcompress.prune.structured import check_channel, needed_layers, plan_graph, sparsity_keeping
from netcompress.report import Report, text_table
from netcompress.stats.collect import collect, heldout_mask
from netcompress.stats.flops import channel_costs, count_flops

__all__ = ["Reallocation", "prune_reallocate"]

_PROBE = 4  # samples that trace a candidate network


@dataclass
class Reallocation:
    """What :func:`prune_reallocate` did: channels per layer, FLOPs (multiply-accumulates per sample), losses.

    ``losses`` holds the importance measure (``measure``) of the dense network, the backbone,
    the reallocated network and, after recovery, the distilled one.
    """

    flops: float
    flops_before: int
    flops_after: int
    channels_before: dict[str, int]
    backbone: dict[str, int]
    channels_after: dict[str, int]
    importance: dict[str, float]
    measure: str
    losses: dict[str, float]
    report: Report
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """The share of the dense network's multiply-accumulates the pruned network keeps."""
        return self.flops_after / self.flops_before

    def __str__(self) -> str:
        rows = [(name, before, self.backbone[name], self.channels_after[name],
                 f"{100 * self.channels_after[name] / before:.1f}", f"{self.importance[name]:.4g}")
                for name, before in self.channels_before.items()]
        lines = [text_table(("layer", "channels", "backbone", "kept", "kept %", "importance"), rows, rule=False,
                            right=True)]
        lines.append(f"MACs per sample: {self.flops_before:,} -> {self.flops_after:,} "
                     f"({self.fraction:.3f} of dense, target {self.flops:.3f})")
        lines.append(f"{self.measure}: " + ", ".join(f"{k} {v:.4g}" for k, v in self.losses.items()))
        return "\n".join(lines)


def _check_arguments(flops, over_prune, importance, holdout, epochs, lr, teacher, batch_size) -> None:
    """Refuse bad arguments, each in one sentence naming it, before any work."""
    if isinstance(flops, bool) or not isinstance(flops, (int, float)) or not 0 < flops <= 1:
        raise ValueError(f"flops must be a fraction in (0, 1] of the dense model's multiply-accumulates, got {flops!r}")
    if over_prune is not None and (isinstance(over_prune, bool) or not isinstance(over_prune, (int, float))
                                   or not 0 < over_prune < 1):
        raise ValueError(f"over_prune must be the share in (0, 1) of channels every layer keeps in the backbone "
                         f"(or None to pick it from flops), got {over_prune!r}")
    if importance not in ("auto", "loss", "output"):
        raise ValueError(f"importance must be 'auto', 'loss' or 'output', got {importance!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ValueError(f"holdout must be the share in [0, 1) of samples kept apart to measure importance, "
                         f"got {holdout!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a whole number >= 0 of distillation epochs (0: no recovery), got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive learning rate, got {lr!r}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module (or None to distil from the original model), "
                        f"got {type(teacher).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")


def _as_batches(data, batch_size: int) -> list[tuple[object, torch.Tensor | None]]:
    """``(input, labels or None)`` batches from a tensor, an ``(inputs, labels)`` pair, or an iterable of batches."""
    if isinstance(data, torch.Tensor):
        pairs = [(x, None) for x in data.split(batch_size)]
    elif isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"data holds {len(x)} inputs but {len(y)} labels; give one label per input")
        pairs = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    elif isinstance(data, Iterable):
        pairs = []
        for batch in data:
            if isinstance(batch, (tuple, list)) and batch:
                pairs.append((batch[0], batch[1] if len(batch) > 1 else None))
            else:
                pairs.append((batch, None))
    else:
        raise TypeError(f"data must be an input tensor, an (inputs, labels) pair of tensors or an iterable of "
                        f"batches, got {type(data).__name__}")
    if not pairs:
        raise ValueError("data holds no samples; PEEL measures layer importance on target data")
    return pairs


def _split(batches, holdout: float) -> tuple[list, list]:
    """The fitting and held-out samples, held out by the rule ``collect`` uses (:func:`netcompress.stats.collect.heldout_mask`)."""
    if not holdout:
        return batches, batches
    fit, held, start = [], [], 0
    for x, y in batches:
        size = samples_in(x)
        out = heldout_mask(start, size, holdout)
        start += size
        for part, mask in ((fit, ~out), (held, out)):
            index = mask.nonzero().flatten()
            if len(index):
                part.append((_take(x, index), y[index.to(y.device)] if y is not None else None))
    if not fit or not held:
        raise ValueError(f"holdout={holdout} leaves {'no' if not held else 'only held-out'} samples among {start}; "
                         "pass more data, or holdout=0 to measure importance on the fitted samples")
    return fit, held


def _pruned_copy(original: nn.Module, probe, stats, groups, selected, counts, criterion, refit) -> nn.Module:
    """The original network pruned by the ``channel`` method to ``counts`` channels per group."""
    network = copy.deepcopy(original)
    sparsity = _sparsity(groups, selected, counts, network)
    if sparsity:
        compress(network, [probe], stats=stats, method="channel", sparsity=sparsity, criterion=criterion,
                 refit=refit, progress=False)
    return network


def _sparsity(groups, selected, counts, model: nn.Module) -> dict[str, float]:
    """Per-layer shares to remove that keep each group's count (every selected member of the group)."""
    return sparsity_keeping(model, {name: kept for group, kept in zip(groups, counts, strict=True)
                                    for name in group if name in selected})


def _loss(network: nn.Module, batches, references, measure: str) -> float:
    """Mean cross-entropy on the labels, or the outputs' squared error relative to the original's (float64)."""
    device, dtype = model_device_dtype(network)
    total, scale = 0.0, 0.0
    with evaluating(network), torch.no_grad():
        for (x, y), reference in zip(batches, references, strict=True):
            out = call_model(network, x, device, dtype).double()
            if measure == "loss":
                total += F.cross_entropy(out, y.to(out.device), reduction="sum").item()
                scale += len(y)
            else:
                total += (out - reference).pow(2).sum().item()
                scale += reference.pow(2).sum().item()
    return total / max(scale, torch.finfo(torch.float64).tiny)


def prune_reallocate(
    model: nn.Module,
    data,
    *,
    flops: float,
    over_prune: float | None = None,
    importance: str = "auto",
    holdout: float = 0.2,
    teacher: nn.Module | None = None,
    epochs: int = 0,
    lr: float = 1e-3,
    distill_loss: nn.Module | None = None,
    batch_size: int = 128,
    layers: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
    criterion: str = "energy",
    refit: bool = True,
    seed: int = 0,
    progress: bool | None = None,
) -> Reallocation:
    """Prune ``model``'s channels in place to ``flops`` of its multiply-accumulates with PEEL, all or nothing.

    PEEL (Hou et al., "Network Pruning via Resource Reallocation", arXiv:2103.01847, 2021): an
    over-pruned backbone, each layer's importance measured on the target data as the loss it
    recovers when it alone gets its channels back, channels reallocated in proportion to
    importance under the FLOPs target, the original network pruned to those counts by the
    ``channel`` method, then optionally distilled from the original (see the module docstring).

    Args:
        model: pruned in place (layers become physically smaller); left exactly as it was if
            anything fails.
        data: target data: an input tensor, an ``(inputs, labels)`` pair of tensors, or an
            iterable of batches (a tensor, or a tuple whose first item is the input and second the
            labels). Statistics and distillation use its fitting part, losses its held-out part.
        flops: the share in (0, 1] of the dense network's multiply-accumulates (Linear and
            convolution layers, per sample; see :func:`netcompress.count_flops`) to keep; the
            result lies within ``TOLERANCE`` (2 %, relative) of it, or a ``ValueError`` says why not.
        over_prune: the share of channels every layer keeps in the backbone; default half the
            uniform share that meets ``flops`` (the backbone must cost at most ``flops``).
        importance: ``"loss"`` (cross-entropy on the labels), ``"output"`` (relative output error
            against the original network, no labels needed) or ``"auto"`` (``"loss"`` when every
            batch has labels).
        holdout: the share of samples (every fifth for 0.2) kept apart: the statistics and the
            distillation use the others, the losses (importance included) are measured on these;
            0 uses every sample for everything.
        teacher: the network to distil from when ``epochs > 0``; default a copy of the original.
        epochs, lr, distill_loss, batch_size, seed: the recovery by :func:`netcompress.finetune`
            (``epochs=0``: none); ``distill_loss`` defaults to :class:`distill.Logits` (with
            ``alpha=0``, soft targets only, when the data have no labels).
        layers, exclude: which layers may lose channels (names or ``"re:"`` patterns); layers
            whose channels the tracer cannot follow (the output layer, grouped convolutions) keep
            them, listed in ``skipped``.
        criterion, refit: how the ``channel`` method picks a layer's channels and re-fits readers.
        progress: a tqdm bar over the importance measurements (``None``: only on a terminal).

    Returns:
        A :class:`Reallocation`: channels per layer (dense, backbone, kept), importance, FLOPs
        before and after and their ratio, losses, and the ``channel`` method's :class:`Report`.
    """
    from tqdm.auto import tqdm

    _check_arguments(flops, over_prune, importance, holdout, epochs, lr, teacher, batch_size)
    check_channel(sparsity=0.5, criterion=criterion, refit=refit)
    batches = _as_batches(data, batch_size)
    labelled = all(y is not None for _, y in batches)
    measure = ("loss" if labelled else "output") if importance == "auto" else importance
    if measure == "loss" and not labelled:
        raise ValueError("importance='loss' needs labels; pass data as (inputs, labels) or use importance='output'")
    fit, held = _split(batches, holdout)
    # A few samples are enough to trace the model, count its FLOPs and check each candidate runs.
    probe = _take(batches[0][0], torch.arange(min(samples_in(batches[0][0]), _PROBE)))
    example = model_input(probe, *model_device_dtype(model))
    selected, skipped = removable_layers(model, example, layers, exclude)
    if not selected:
        raise ValueError("no layer of the model can lose channels (the tracer follows none of them); see "
                         "netcompress.compress(..., method='channel') for the reason per layer")
    graph, groups = plan_graph(model, list(selected), example)
    costs = channel_costs(model, example, graph, groups)
    dense = costs([*costs.sizes])
    target = flops * dense
    smallest = costs([1] * len(groups)) / dense
    if smallest > flops * (1 + TOLERANCE):
        raise ValueError(f"flops={flops} is below what pruning channels can reach: with one channel in every "
                         f"prunable layer the network keeps {smallest:.4f} of its multiply-accumulates; ask for more")
    share = over_prune if over_prune is not None else max(_largest_share_within(costs, target) / 2, 1e-9)
    backbone = _uniform(costs.sizes, share)
    if costs(backbone) > target * (1 + TOLERANCE):
        raise ValueError(f"over_prune={over_prune} builds a backbone with {costs(backbone) / dense:.3f} of the dense "
                         f"multiply-accumulates, above flops={flops}; choose a smaller over_prune")

    with all_or_nothing(model, values=epochs > 0):
        original = copy.deepcopy(model)
        stats = collect(original, [x for x, _ in fit], needed_layers(graph, groups), progress=progress)
        device, dtype = model_device_dtype(original)
        with evaluating(original), torch.no_grad():
            references = [call_model(original, x, device, dtype).double() if measure == "output" else None
                          for x, _ in held]

        def build(counts: list[int]) -> nn.Module:
            return _pruned_copy(original, probe, stats, groups, selected, counts, criterion, refit)

        losses = {"dense": _loss(original, held, references, measure)}
        losses["backbone"] = _loss(build(backbone), held, references, measure)
        gains = []
        for g in tqdm(range(len(groups)), desc="PEEL importance", unit="layer", disable=progress_disabled(progress)):
            restored = [costs.sizes[i] if i == g else b for i, b in enumerate(backbone)]
            gains.append(max(0.0, losses["backbone"] - _loss(build(restored), held, references, measure)))
        counts = _reallocate(costs, backbone, gains, target)

        sparsity = _sparsity(groups, selected, counts, model)
        report = Report()
        if sparsity:
            report = compress(model, [probe], stats=stats, method="channel", sparsity=sparsity,
                              criterion=criterion, refit=refit, progress=False)
        losses["reallocated"] = _loss(model, held, references, measure)
        after = count_flops(model, example)
        if abs(after / dense - flops) > TOLERANCE * flops:
            raise ValueError(f"flops={flops} cannot be met within {TOLERANCE:.0%}: the nearest network PEEL builds "
                             f"keeps {after / dense:.4f} of the multiply-accumulates; ask for a nearby target")
        if epochs:
            finetune(model, _finetune_data(fit, labelled), epochs=epochs, lr=lr,
                     teacher=teacher if teacher is not None else original,
                     loss=distill_loss if distill_loss is not None else (None if labelled else Logits(alpha=0.0, beta=1.0)),
                     batch_size=batch_size, seed=seed, progress=progress)
            losses["distilled"] = _loss(model, held, references, measure)

    def per_layer(values) -> dict[str, int | float]:
        return {name: values[i] for i, group in enumerate(groups) for name in group}

    return Reallocation(flops=float(flops), flops_before=int(round(dense)), flops_after=after,
                        channels_before=per_layer(costs.sizes), backbone=per_layer(backbone),
                        channels_after=per_layer(counts), importance=per_layer(gains), measure=measure,
                        losses=losses, report=report, skipped=skipped)


def _finetune_data(fit, labelled: bool):
    """What :func:`finetune` takes: one ``(inputs, labels)`` pair of tensors (reshuffled each epoch), else the batches."""
    if labelled and all(isinstance(x, torch.Tensor) for x, _ in fit):
        return torch.cat([x for x, _ in fit]), torch.cat([y for _, y in fit])
    return [(x, y) for x, y in fit]
