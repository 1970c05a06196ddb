"""Codistillation across processes (Anil et al., "Large scale distributed neural network training
through online distillation", ICLR 2018, Algorithm 1), on the real ``torch.distributed``.

Each rank trains its own model on its own shard with the task loss; after the burn-in it adds the
distillation loss towards the mean prediction of the *other* ranks' models on its current batch.
Those predictions come from stale local copies of the others' models, refreshed every
``exchange_every`` steps by an all-gather of the flattened weights (taken at the start of the step).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from netcompress._core.layers import progress_disabled
from netcompress.distill.finetune import batches
from netcompress.distill.losses import codistillation_losses

__all__ = ["CodistillStats", "codistill_distributed"]


@dataclass
class CodistillStats:
    """What :func:`codistill_distributed` sent: ``exchanges`` all-gathers of ``bytes_per_exchange`` bytes each."""

    exchanges: int = 0
    bytes_per_exchange: int = 0

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank contributed to the all-gathers (its flattened weights, once per exchange)."""
        return self.exchanges * self.bytes_per_exchange


def _state(model: nn.Module) -> list[torch.Tensor]:
    """The tensors exchanged: parameters, then floating-point buffers (e.g. batch-norm statistics)."""
    return [p for p in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]


def _check(name: str, ok: bool, value, requirement: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")


def codistill_distributed(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], *, epochs: int, lr: float,
                          burn_in_epochs: int = 1, weight: float = 1.0, temperature: float = 1.0,
                          batch_size: int = 128, exchange_every: int = 1, seed: int = 0,
                          group: dist.ProcessGroup | None = None, stats: CodistillStats | None = None,
                          progress: bool | None = None) -> nn.Module:
    """Train this rank's ``model`` on its shard ``data`` = (inputs, labels), codistilling with the other ranks.

    Per step (Adam, mini-batches from :func:`netcompress.distill.finetune.batches` with ``seed``):
    during the first ``burn_in_epochs`` epochs the loss is the cross-entropy only; afterwards it is
    ``CE(y, z_i) + weight·H(mean_{j≠i} σ(z_j/T), σ(z_i/T))`` where ``z_j`` are the predictions of
    the stale copies of the other ranks' models on this rank's batch. The copies are refreshed on
    the first distillation step and then every ``exchange_every`` steps, with the weights all ranks
    had at the start of that step (the copies run in train mode, as the models do in ``codistill``).
    No weights are exchanged during the burn-in.

    With ``exchange_every=1`` and every rank given the same data and ``seed``, rank ``i`` computes
    exactly what the single-process ``codistill([m_0, …, m_{N-1}], data, …)`` computes for ``m_i``,
    for models without random layers: dropout (and drop-connect) in the copies draws from this
    rank's generator, so with them the two agree in distribution, not bit for bit.
    Every rank must call this with the same architecture, ``epochs``, ``burn_in_epochs``,
    ``exchange_every`` and number of batches per epoch (checked collectively: all ranks raise).
    ``stats``, if given, is filled with the number of exchanges and the bytes sent. ``progress``
    shows a bar over the epochs: ``True`` on this rank, ``False`` nowhere, ``None`` (the default)
    on rank 0 only, and only on a terminal.
    """
    from tqdm.auto import tqdm

    _check("epochs", isinstance(epochs, int) and epochs >= 0, epochs, "an integer >= 0")
    _check("lr", isinstance(lr, (int, float)) and lr > 0, lr, "> 0")
    _check("burn_in_epochs", isinstance(burn_in_epochs, int) and burn_in_epochs >= 0, burn_in_epochs,
           "an integer >= 0")
    _check("weight", isinstance(weight, (int, float)) and weight >= 0, weight, ">= 0")
    _check("temperature", isinstance(temperature, (int, float)) and temperature > 0, temperature, "> 0")
    _check("batch_size", isinstance(batch_size, int) and batch_size >= 1, batch_size, "an integer >= 1")
    _check("exchange_every", isinstance(exchange_every, int) and exchange_every >= 1, exchange_every,
           "an integer >= 1")
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise ValueError("data must be an (inputs, labels) pair of tensors")
    x, y = data
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"data needs as many labels as inputs, at least one (got {len(x)} inputs, {len(y)} labels)")
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("group: codistill_distributed needs an initialised torch.distributed process group")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if world < 2:
        raise ValueError(f"group: codistillation needs at least two ranks, got {world}")

    own = _state(model)
    numel = sum(t.numel() for t in own)
    dtype = torch.cat([t.detach().reshape(-1)[:1] for t in own]).dtype if own else torch.float32
    device = own[0].device if own else torch.device("cpu")
    steps_per_epoch = -(-len(x) // batch_size)
    # Collective agreement check: every rank sees every rank's settings and raises the same error.
    settings = torch.tensor([numel, epochs, burn_in_epochs, exchange_every, steps_per_epoch], dtype=torch.int64,
                            device=device)
    gathered = [torch.empty_like(settings) for _ in range(world)]
    dist.all_gather(gathered, settings, group=group)
    names = ["model (number of exchanged values)", "epochs", "burn_in_epochs", "exchange_every",
             "data (batches per epoch)"]
    for k, name in enumerate(names):
        values = [int(g[k]) for g in gathered]
        if len(set(values)) != 1:
            raise ValueError(f"{name} must be the same on every rank, got {values}")
    if numel == 0:
        raise ValueError("model has no parameters to codistill")

    others = {j: copy.deepcopy(model) for j in range(world) if j != rank}
    for copy_ in others.values():
        copy_.requires_grad_(False)
        copy_.train()
    if stats is not None:
        stats.bytes_per_exchange = numel * torch.empty((), dtype=dtype).element_size()

    def exchange() -> None:
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in own])
            received = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(received, flat, group=group)
            for j, copy_ in others.items():
                offset = 0
                for target in _state(copy_):
                    target.copy_(received[j][offset:offset + target.numel()].view_as(target))
                    offset += target.numel()
        if stats is not None:
            stats.exchanges += 1

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    distill_step = 0
    hidden = True if progress is None and rank != 0 else progress_disabled(progress)  # one bar, not one per rank
    for epoch in tqdm(range(epochs), desc=f"codistill rank {rank}", unit="epoch", disable=hidden):
        for xb, yb in batches(x, y, batch_size, seed=seed, epoch=epoch):
            if epoch < burn_in_epochs:
                loss = F.cross_entropy(model(xb), yb)
            else:
                if distill_step % exchange_every == 0:
                    exchange()  # before this step's update: the copies hold the weights at its start
                distill_step += 1
                logits = []
                for j in range(world):
                    if j == rank:
                        logits.append(model(xb))
                    else:
                        with torch.no_grad():
                            logits.append(others[j](xb))
                loss = codistillation_losses(logits, yb, weight=weight, temperature=temperature)[rank]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model
