"""Codistillation across ranks on real digits (Anil et al., ICLR 2018), or independent models for comparison.

    torchrun --nproc_per_node 2 -m examples.codistill                      # codistillation
    torchrun --nproc_per_node 2 -m examples.codistill --mode independent   # no distillation
    python -m examples.codistill --mode independent                        # 1 model, all data

Each rank trains its own model (LeNet-5 by default, weights drawn from ``--seed`` + rank) with Adam
on its strided shard of the training images. With ``--mode codistill`` it runs
:func:`netcompress.distributed.codistill_distributed`: after ``--burn-in`` epochs each model also
matches the mean prediction of the other ranks' models on its batch, from copies refreshed every
``--exchange-every`` steps. With ``--mode independent`` each rank trains on its shard alone (as
``nc.finetune``, the same batches and optimizer); in a world of one that is one model on all the
data. Rank 0 prints every rank's test accuracy, the accuracy of their averaged predictions, and the
bytes exchanged.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.distributed as dist

from examples import _common as common
from netcompress.distill.finetune import finetune
from netcompress.distributed import CodistillStats, codistill_distributed

__all__ = ["check_world", "main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("codistill", "independent"), default="codistill")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--burn-in", type=int,
                        help="epochs of the task loss alone first (default 2, or --epochs − 1 if fewer; "
                             "at least one epoch must codistil)")
    parser.add_argument("--exchange-every", type=int, default=10,
                        help="steps between exchanges of the models' weights (default 10)")
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the distillation loss (default 1)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32, help="images per rank and step (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    common.add_options(parser, seed_help="weights (+ rank), data split and shuffling")
    args = parser.parse_args(argv)
    common.check_options(parser, args)
    if args.exchange_every < 1:
        parser.error(f"--exchange-every must be at least 1, got {args.exchange_every}")
    if args.burn_in is None:  # at least one epoch codistils: a run of only burn-in would exchange nothing
        args.burn_in = min(2, max(args.epochs - 1, 0))
    if not 0 <= args.burn_in <= args.epochs:
        parser.error(f"--burn-in must be between 0 and --epochs ({args.epochs}), got {args.burn_in}")
    if args.mode == "codistill" and args.epochs > 0 and args.burn_in == args.epochs:
        parser.error(f"--burn-in {args.burn_in} leaves none of the {args.epochs} epoch(s) to codistil, so no weights "
                     "would be exchanged; pass a smaller --burn-in, more --epochs, or --mode independent")
    if not (math.isfinite(args.temperature) and args.temperature > 0) or not (
            math.isfinite(args.weight) and args.weight >= 0):
        parser.error(f"--temperature must be > 0 and --weight >= 0, got {args.temperature} and {args.weight}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` says in the current process group; every rank returns the results of all ranks."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.mode == "codistill" and world < 2:
        raise ValueError("--mode codistill needs at least two ranks: launch it with "
                         "torchrun --nproc_per_node 2 -m examples.codistill")
    on = common.device(args.device)
    split = common.task(args.data, args.seed, on)
    network = common.model(args.model, args.seed + rank).to(on)  # models start apart, as independently trained ones do
    x, y = common.shard(split.train_x, split.train_y, rank, world)
    stats, start = CodistillStats(), time.perf_counter()
    show = rank == 0 and args.progress
    if args.mode == "codistill":
        codistill_distributed(network, (x, y), epochs=args.epochs, lr=args.lr, burn_in_epochs=args.burn_in,
                              weight=args.weight, temperature=args.temperature, batch_size=args.batch_size,
                              exchange_every=args.exchange_every, seed=args.seed, stats=stats, progress=show)
    else:
        finetune(network, (x, y), epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                 progress=show)
    seconds = time.perf_counter() - start
    outputs = common.logits(network, split.test_x)
    every = [torch.empty_like(outputs) for _ in range(world)]
    dist.all_gather(every, outputs)
    ensemble = torch.stack([z.softmax(1) for z in every]).mean(0)
    return {
        "mode": args.mode, "data": args.data, "model": args.model, "world": world, "epochs": args.epochs,
        "burn_in": args.burn_in, "exchange_every": args.exchange_every, "samples_per_rank": len(x),
        "seed": args.seed, "test_accuracy": [common.accuracy(z, split.test_y) for z in every],
        "ensemble_accuracy": common.accuracy(ensemble, split.test_y),
        "exchanges": stats.exchanges, "bytes_per_exchange": stats.bytes_per_exchange, "bytes_sent": stats.bytes_sent,
        "seconds": seconds,
    }


def summary(result: dict) -> str:
    """What rank 0 prints."""
    accuracies = ", ".join(f"{a:.4f}" for a in result["test_accuracy"])
    lines = [f"{result['world']} rank(s), {result['mode']}: {result['model']} on {result['data']}, "
             f"{result['epochs']} epochs of {result['samples_per_rank']:,} images per rank in {result['seconds']:.1f} s",
             f"test accuracy of each rank's model: {accuracies}"]
    if result["world"] > 1:
        lines.append(f"test accuracy of their averaged predictions: {result['ensemble_accuracy']:.4f}")
    if result["mode"] == "codistill":
        lines.append(f"{result['exchanges']} exchanges of {result['bytes_per_exchange']:,} bytes per rank "
                     f"({result['bytes_sent']:,} in all)")
    return "\n".join(lines)


def check_world(args: argparse.Namespace) -> None:
    """Refuse codistillation in a world of one before any process group is joined (``run`` checks it again)."""
    if args.mode == "codistill" and common.launched_world() < 2:
        raise ValueError("--mode codistill needs at least two ranks: launch it with "
                         "torchrun --nproc_per_node 2 -m examples.codistill")


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, refuse what cannot run in one ``error:`` sentence, train, and print on rank 0."""
    common.launch(run, summary, parse_args(argv), check=check_world)


if __name__ == "__main__":
    common.run_as_program(main)
