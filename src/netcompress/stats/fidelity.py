"""The whole model, measured: how closely a compressed network follows the original on held-out target data.

Per-layer errors do not add up to the network's (a 0.1–0.4 relative error in every layer of
EfficientNet-Lite0 left 6–13 % top-1 agreement), so every ``compress`` runs the original and the
compressed network on the samples its statistics kept apart (or on labelled evaluation data) and
reports, first:

* **agreement**: the share of samples whose top-1 class is the original's (classifier outputs:
  ``(samples, classes)`` with more than one class);
* **cosine**: the mean cosine similarity of each sample's output vector with the original's, and
  its minimum (an embedding model's measure);
* **relative error**: ``‖Y − Ŷ‖_F / ‖Y‖_F`` over all held-out outputs;
* **accuracy** before and after, where labels are given.

The original's outputs are computed before any layer changes and kept per batch (outputs only, a
few kilobytes per sample of logits), never the activations inside.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from netcompress._core.tensors import _take, batch_size, call_model, model_device_dtype
from netcompress._core.transaction import evaluating
from netcompress.report import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE, Fidelity
from netcompress.stats.split import heldout_mask

__all__ = ["DEFAULT_MIN_AGREEMENT", "DEFAULT_MIN_COSINE", "Fidelity", "References", "heldout_part", "main_output",
           "measure", "reference_outputs"]

def main_output(output) -> torch.Tensor:
    """The tensor a network answers with: itself, a model output's first tensor (``logits``, ``last_hidden_state``)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    raise ValueError(f"the model's output ({type(output).__name__}) holds no floating tensor to compare")


def heldout_part(data: Iterable | torch.Tensor, holdout: float, heldout: bool = True) -> Iterator:
    """The held-out samples of ``data`` (or, ``heldout=False``, the others), batch by batch: the very ones
    :func:`~netcompress.collect` keeps apart (or fits on)."""
    samples = 0
    for batch in (data,) if isinstance(data, torch.Tensor) else data:
        size = batch_size(batch)
        held = heldout_mask(samples, size, holdout) if holdout else torch.zeros(size, dtype=torch.bool)
        samples += size
        chosen = held if heldout else ~held
        if chosen.all():
            yield batch
        elif chosen.any():
            yield _take(batch, chosen.nonzero().squeeze(1))


def _labelled(data) -> Iterator[tuple[object, torch.Tensor | None]]:
    """``(inputs, labels or None)`` batches of evaluation data: a pair of tensors, or batches of pairs."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        yield data
        return
    for batch in data:
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
            yield batch[0], batch[1]
        else:
            yield batch, None


@dataclass
class References:
    """The original network's outputs on the evaluation batches (and those batches), computed before any change."""

    batches: list
    labels: list[torch.Tensor | None]
    outputs: list[torch.Tensor]
    where: str


@torch.no_grad()
def _outputs(model: nn.Module, batches: list, chunk: int = 64) -> list[torch.Tensor]:
    device, dtype = model_device_dtype(model)
    outputs = []
    with evaluating(model):
        for batch in batches:
            size = batch_size(batch)
            pieces = [main_output(call_model(model, _take(batch, torch.arange(i, min(i + chunk, size))), device, dtype))
                      .detach().float().cpu() for i in range(0, size, chunk)]
            outputs.append(torch.cat(pieces))
    return outputs


def reference_outputs(model: nn.Module, data, holdout: float, eval_data=None) -> References | None:
    """The original's outputs on labelled ``eval_data``, else on the held-out part of ``data`` (``None``: none)."""
    if eval_data is not None:
        pairs = list(_labelled(eval_data))
        batches, labels, where = [b for b, _ in pairs], [y for _, y in pairs], "evaluation"
    elif data is not None:  # without a held-out share, the samples the methods fitted (said so)
        batches = list(heldout_part(data, holdout)) if holdout > 0 else list(heldout_part(data, 0.0, heldout=False))
        labels, where = [None] * len(batches), "held-out" if holdout > 0 else "in-sample"
    else:
        return None
    keep = [i for i, b in enumerate(batches) if batch_size(b) > 0]  # empty data is refused by the pass, not here
    batches, labels = [batches[i] for i in keep], [labels[i] for i in keep]
    if not batches:
        return None
    return References(batches, labels, _outputs(model, batches), where)


def _top1(output: torch.Tensor) -> torch.Tensor | None:
    """Each sample's top-1 class, for ``(samples, classes)`` outputs with several classes; else ``None``."""
    return output.argmax(-1) if output.dim() == 2 and output.shape[-1] > 1 else None


def measure(model: nn.Module, references: References) -> Fidelity:
    """``model`` (compressed) against the original's outputs on the same batches."""
    outputs = _outputs(model, references.batches)
    error = energy = 0.0
    cosines, agree, correct_before, correct_after, labelled = [], 0, 0, 0, 0
    classifier = True
    for before, after, labels in zip(references.outputs, outputs, references.labels, strict=True):
        if before.shape != after.shape:
            raise ValueError(f"the compressed model answers with shape {list(after.shape)}, the original with "
                             f"{list(before.shape)}")
        b64, a64 = before.double(), after.double()
        error += float((a64 - b64).pow(2).sum())
        energy += float(b64.pow(2).sum())
        flat_b, flat_a = b64.reshape(len(b64), -1), a64.reshape(len(a64), -1)
        cosines.append(torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=1, eps=1e-12))
        top_b, top_a = _top1(before), _top1(after)
        classifier = classifier and top_b is not None
        if top_b is not None:
            agree += int((top_b == top_a).sum())
            if labels is not None:
                labelled += len(labels)
                correct_before += int((top_b == labels.to(top_b.device)).sum())
                correct_after += int((top_a == labels.to(top_a.device)).sum())
    cosine = torch.cat(cosines)
    samples = len(cosine)
    return Fidelity(
        samples=samples,
        relative_error=math.sqrt(error / energy) if energy > 0 else 0.0,
        cosine=float(cosine.mean()), min_cosine=float(cosine.min()),
        agreement=agree / samples if classifier else None,
        accuracy_before=correct_before / labelled if labelled else None,
        accuracy_after=correct_after / labelled if labelled else None,
        where=references.where,
    )
