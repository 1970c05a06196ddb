"""Compress a network with target data spread over several processes (or machines), as one process would.

    torchrun --nproc_per_node 2 -m examples.distributed_compress --out compressed/
    torchrun --nproc_per_node 2 -m examples.distributed_compress --out gptq/ --method gptq --bits 4 --sequential

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
import math
import os

import torch
import torch.distributed as dist

import netcompress as nc
from examples._common import check_output, launched_world, process_group, refused, run_as_program

__all__ = ["check_arguments", "compress_arguments", "dense_model", "main", "parse_args", "target_data"]

LOWRANK_DEFAULT_BUDGET = 0.25
DIGITS = 1000  # training digits of the UCI split, the target samples


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
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out netcompress did not write (only its own files replaced)")
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, in one ``ValueError`` sentence, what would fail after training or in the process group.

    Checked before any process group is joined: numbers in range, ``--method`` registered and taking
    the sizes given, ``--init`` a safetensors state dict of this MLP (read, bounded by the MLP's size),
    and on rank 0 (which writes it) ``--out`` a path ``nc.save`` may write, as ``netcompress compress -o``.
    """
    from netcompress.pipeline import check_steps

    for name, low in (("width", 1), ("batch_size", 1), ("epochs", 0), ("samples", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if not 0 <= args.seed < 2**31:
        raise ValueError(f"--seed must be between 0 and 2**31 - 1, got {args.seed}")
    if not (math.isfinite(args.holdout) and 0 <= args.holdout < 1):
        raise ValueError(f"--holdout must be a share in [0, 1) of the samples, got {args.holdout}")
    if args.rank is not None and args.rank < 1:
        raise ValueError(f"--rank must be at least 1, got {args.rank}")
    if args.method not in nc.METHODS:
        raise ValueError(f"--method {args.method!r} is not a registered method; choose one of {', '.join(nc.METHODS)}")
    settings = {k: v for k, v in compress_arguments(args).items() if k not in ("method", "progress")}
    try:
        check_steps([{"method": args.method, **settings}])
    except (TypeError, ValueError) as error:
        raise ValueError(f"--method {args.method}: {str(error).removeprefix('step 1: ')}") from None
    samples, world = DIGITS if args.samples is None else min(args.samples, DIGITS), launched_world()
    if samples < world:
        raise ValueError(f"--samples {samples} leaves some of the {world} processes without a sample; "
                         "give at least one per process")
    if args.init is not None:
        args.init_state = _read_init(args)  # read once: training takes it from here
    if os.environ.get("RANK", "0") == "0":  # only rank 0 writes --out
        check_output(args.out, args.overwrite)


def _read_init(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The ``--init`` state dict, refused in one sentence unless it holds exactly this MLP's tensors."""
    from experiments.models import WideMLP
    from safetensors.torch import load

    from netcompress._core.files import read_bytes

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in WideMLP(width=args.width).state_dict().items()}
    limit = 8 * sum(math.prod(shape) for shape in expected.values()) + (1 << 20)  # float64 and a header
    data = read_bytes(args.init, "--init file", limit)
    try:
        state = load(data)
    except Exception as error:  # safetensors raises its own error type
        raise ValueError(f"--init {args.init} is not a safetensors file ({error}); write it with "
                         "safetensors.torch.save_file(model.state_dict(), PATH)") from None
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        first = next(k for k in sorted({*got, *expected}) if got.get(k) != expected.get(k))
        raise ValueError(f"--init {args.init} does not hold the MLP of --width {args.width}: tensor {first!r} is "
                         f"{got.get(first, 'missing')}, expected {expected.get(first, 'none')}; give the width it "
                         "was trained with")
    return state


def compress_arguments(args: argparse.Namespace) -> dict:
    """The keywords of ``nc.compress`` these options stand for (the same in every process)."""
    settings = {k: getattr(args, k) for k in ("rank", "budget", "bits", "sparsity") if getattr(args, k) is not None}
    if nc.METHODS[args.method].family == "lowrank" and not {"rank", "budget"} & set(settings):
        settings["budget"] = LOWRANK_DEFAULT_BUDGET
    return dict(method=args.method, sequential=args.sequential, holdout=args.holdout, progress=False, **settings)


def target_data(args: argparse.Namespace):
    """The UCI digits split (28×28, MNIST-like) and the target samples every process shards."""
    from experiments.data import uci_digits

    split = uci_digits(seed=args.seed)
    dtype = getattr(torch, args.dtype)
    split.train_x, split.test_x = split.train_x.to(dtype), split.test_x.to(dtype)
    return split, split.train_x[: args.samples]


def dense_model(args: argparse.Namespace, split) -> torch.nn.Module:
    """The network to compress, identical in every process: loaded or trained on rank 0, then broadcast."""
    from experiments.models import WideMLP

    torch.manual_seed(args.seed)
    model = WideMLP(width=args.width).to(getattr(torch, args.dtype))
    if args.init is not None:
        model.load_state_dict(getattr(args, "init_state", None) or _read_init(args))
    elif dist.get_rank() == 0:
        nc.finetune(model, (split.train_x, split.train_y), epochs=args.epochs, lr=1e-3, seed=args.seed, progress=False)
    for tensor in model.state_dict().values():  # every process must compress the very same weights
        dist.broadcast(tensor, src=0)
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).double().mean().item()


def main(argv: list[str] | None = None) -> None:
    """Parse and check ``argv`` (every bad argument is one ``error:`` sentence, before any work), then compress."""
    args = parse_args(argv)
    try:
        check_arguments(args)
    except ValueError as error:
        raise refused(error) from None
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
    run_as_program(main)
