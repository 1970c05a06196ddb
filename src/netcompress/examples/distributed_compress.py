"""Compress a network with target data spread over several processes (or machines), as one process would.

    torchrun --nproc_per_node 2 -m netcompress.examples.distributed_compress --out compressed/
    torchrun --nproc_per_node 2 -m netcompress.examples.distributed_compress --out gptq/ --method gptq --bits 4 --sequential

Every process builds the same dense network (rank 0 trains a small MLP on the UCI digits that
ship with scikit-learn, or loads ``--init``, and broadcasts its weights) and takes the strided
shard ``data[rank::world]`` of the target data. ``nc.compress`` gathers the statistics of its
shard and all-reduces them over ``torch.distributed`` (gloo, on CPU), once per pass over the data
(once, or once per block with ``--sequential``), so every process computes the compressed model
that one process computes from all the data: the same held-out samples, the same statistics up
to the order of floating-point sums (``--dtype float64`` makes every rounding and pruning decision
agree as well). Every process must run ``compress`` with the same arguments, each on at least one
sample. Rank 0 saves the model with ``nc.save`` and prints the Report.

Run without torchrun, the script is that one process (a process group of one). Needs the ``demo`` extra (scikit-learn).
Across machines: ``torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d --rdzv-endpoint HOST:29500 …``.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

import netcompress as nc
from netcompress.examples._common import process_group

LOWRANK_DEFAULT_BUDGET = 0.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory rank 0 saves the compressed model to (nc.save)")
    parser.add_argument("--method", default="dalr", help="a registered method (default dalr)")
    parser.add_argument("--rank", type=int, help="low-rank methods: the rank of every layer")
    parser.add_argument("--budget", type=float,
                        help=f"low-rank methods: fraction of the parameters kept (default {LOWRANK_DEFAULT_BUDGET})")
    parser.add_argument("--bits", type=int, help="quantization methods: bits per weight")
    parser.add_argument("--sparsity", type=float, help="pruning methods: fraction of the weights removed")
    parser.add_argument("--sequential", action="store_true", help="compress block by block (gptq, sparsegpt, …)")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the samples held out (default 0.2)")
    parser.add_argument("--samples", type=int, help="use the first N target samples (default all 1,000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=256, help="hidden width of the MLP")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the dense MLP (rank 0)")
    parser.add_argument("--init", help="safetensors state dict of the dense MLP, instead of training one")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="the network's dtype (statistics are float64 either way)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output in --out")
    return parser.parse_args(argv)


def compress_arguments(args: argparse.Namespace) -> dict:
    """The keywords of ``nc.compress`` these options stand for (the same in every process)."""
    settings = {k: getattr(args, k) for k in ("rank", "budget", "bits", "sparsity") if getattr(args, k) is not None}
    if nc.METHODS[args.method].family == "lowrank" and not {"rank", "budget"} & set(settings):
        settings["budget"] = LOWRANK_DEFAULT_BUDGET
    return dict(method=args.method, sequential=args.sequential, holdout=args.holdout, progress=False, **settings)


def target_data(args: argparse.Namespace):
    """The UCI digits split (28×28, MNIST-like) and the target samples every process shards."""
    from netcompress.prototype.data import uci_digits

    split = uci_digits(seed=args.seed)
    dtype = getattr(torch, args.dtype)
    split.train_x, split.test_x = split.train_x.to(dtype), split.test_x.to(dtype)
    return split, split.train_x[: args.samples]


def dense_model(args: argparse.Namespace, split) -> torch.nn.Module:
    """The network to compress, identical in every process: loaded or trained on rank 0, then broadcast."""
    from safetensors.torch import load_file

    from netcompress.prototype.models import WideMLP

    torch.manual_seed(args.seed)
    model = WideMLP(width=args.width).to(getattr(torch, args.dtype))
    if args.init is not None:
        model.load_state_dict(load_file(args.init))
    elif dist.get_rank() == 0:
        nc.finetune(model, (split.train_x, split.train_y), epochs=args.epochs, lr=1e-3, seed=args.seed, progress=False)
    for tensor in model.state_dict().values():  # every process must compress the very same weights
        dist.broadcast(tensor, src=0)
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).double().mean().item()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with process_group() as (rank, world):
        split, data = target_data(args)
        model = dense_model(args, split)
        before = accuracy(model, split.test_x, split.test_y)
        shard = data[rank::world]  # strided: the held-out samples are those one process holds out
        report = nc.compress(model, shard.split(args.batch_size), **compress_arguments(args))
        if rank == 0:
            nc.save(model, args.out, report, overwrite=args.overwrite)
            print(f"{world} process(es), {len(data)} target samples ({len(shard)} on rank 0), "
                  f"method {args.method}{' (sequential)' if args.sequential else ''}")
            print(report)
            print(f"test accuracy: dense {before:.4f}, compressed {accuracy(model, split.test_x, split.test_y):.4f}")
            print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
