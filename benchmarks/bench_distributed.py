"""Training across 2 processes (gloo, CPU) with fewer bytes: TernGrad against a float32 all-reduce, and codistillation.

Every configuration runs the examples of :mod:`examples` in real processes (spawned by
``torch.multiprocessing``, one thread each, a ``file://`` rendezvous), on the real UCI digits that
ship with scikit-learn (1,000 images to train, 797 to test), for the same number of epochs and once
per seed:

* data-parallel LeNet-5, SGD with momentum, 2 ranks × 32 images a step: gradients averaged by
  DDP's float32 all-reduce, by TernGrad (Wen et al., NIPS 2017) without clipping, and by TernGrad
  clipped at 2.5σ; test accuracy, bytes each rank handed to the collective (counted by the hooks),
  and the largest weight difference between the ranks;
* two LeNet-5 on the two halves of the data: codistilled (Anil et al., ICLR 2018; weights exchanged
  every 10 steps after 2 epochs of burn-in) against trained independently, and one LeNet-5 on all
  the data; every model's test accuracy and that of the two models' averaged predictions.

    python benchmarks/bench_distributed.py [--seeds 0 1 2 3 4] [--epochs 20] [--data digits] [--render]

Writes results/distributed.md, results/distributed.json and the plot results/distributed.png.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch.multiprocessing as mp

from _common import print_table
from distributed_tables import CODISTILL_HEADER, TERNGRAD_HEADER, _mean, codistill_rows, paired, terngrad_rows

RESULTS = Path(__file__).resolve().parent / "results"

TERNGRAD = {"float32 all-reduce": ["--comm", "float32"], "TernGrad": ["--comm", "terngrad"],
            "TernGrad, clipped at 2.5σ": ["--comm", "terngrad", "--clip", "2.5"]}
CODISTILL = {"1 model, all data (1 process)": (1, ["--mode", "independent"]),
             "2 independent models, half each": (2, ["--mode", "independent"]),
             "2 codistilled models, half each": (2, ["--mode", "codistill"])}


def _worker(rank: int, world: int, init: str, example: str, argv: list[str], out: str) -> None:
    """One rank: join the group, run the example's ``run``, rank 0 writes the result."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        module = importlib.import_module(f"examples.{example}")
        result = module.run(module.parse_args(argv))
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def launch(example: str, world: int, argv: list[str]) -> dict:
    """The result of one run of ``examples.<example>`` on ``world`` spawned processes."""
    with tempfile.TemporaryDirectory() as folder:
        init, out = os.path.join(folder, "rendezvous"), os.path.join(folder, "result.json")
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned processes before they import torch
        mp.spawn(_worker, args=(world, init, example, argv, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def measure(seeds: list[int], common: list[str]) -> dict:
    """Every configuration once per seed: ``{"terngrad": {name: [result, …]}, "codistill": {…}}``."""
    raw: dict = {"terngrad": {}, "codistill": {}}
    print("TernGrad against float32 all-reduce", flush=True)
    for name, options in TERNGRAD.items():
        raw["terngrad"][name] = [launch("terngrad", 2, [*common, *options, "--seed", str(s)]) for s in seeds]
        print(f"  {name}: {_mean([r['test_accuracy'] for r in raw['terngrad'][name]])} %", flush=True)
    print("codistillation", flush=True)
    for name, (world, options) in CODISTILL.items():
        runs = [launch("codistill", world, [*common, *options, "--seed", str(s)]) for s in seeds]
        raw["codistill"][name] = runs
        print(f"  {name}: {_mean([a for r in runs for a in r['test_accuracy']])} %", flush=True)
    return raw


def plot(raw: dict, path: Path) -> None:
    """Left: test accuracy against the megabytes each rank sent, per gradient exchange (mean over seeds).
    Right: every model's test accuracy, one dot per model and seed, per way of training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in raw["terngrad"].items():
        epochs = len(runs[0]["accuracy_per_epoch"])
        megabytes = [runs[0]["bytes_sent"] * (e + 1) / epochs / 1e6 for e in range(epochs)]
        mean = [statistics.mean(r["accuracy_per_epoch"][e] for r in runs) * 100 for e in range(epochs)]
        left.plot(megabytes, mean, marker="o", markersize=3, label=name)
    left.set(xscale="log", xlabel="MB sent per rank (log scale)", ylabel="test accuracy % (mean over seeds)",
             title="data-parallel LeNet-5, 2 ranks: one dot per epoch")
    left.legend()
    for k, runs in enumerate(raw["codistill"].values()):
        values = [100 * a for r in runs for a in r["test_accuracy"]]
        right.scatter([k] * len(values), values, alpha=0.7)
        right.hlines(statistics.mean(values), k - 0.25, k + 0.25, color="black")
    right.set_xticks(range(len(raw["codistill"])), [n.split(",")[0] for n in raw["codistill"]], fontsize=8)
    right.set(ylabel="test accuracy %", title="each model, each seed (bar: mean)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def render(raw: dict, command: str, seconds: float) -> str:
    """The Markdown of results/distributed.md; also prints the tables."""
    header_t, header_c = TERNGRAD_HEADER, CODISTILL_HEADER
    ternary, codistilled = terngrad_rows(raw), codistill_rows(raw)
    print()
    print_table(header_t, ternary)
    print()
    print_table(header_c, codistilled)
    print(paired(raw))
    first = raw["terngrad"]["TernGrad"][0]
    lines = [f"# Training across processes with fewer bytes ({first['data']}, {first['epochs']} epochs)", "",
             f"`{command}` ({seconds:.0f} s on this machine). Accuracy: mean ± standard deviation over the seeds.", "",
             "## Data-parallel LeNet-5, 2 processes (gloo), SGD with momentum", "",
             "| " + " | ".join(header_t) + " |", "|" + "---|" * len(header_t)]
    lines += ["| " + " | ".join(row) + " |" for row in ternary]
    lines += ["", "## Codistillation: LeNet-5 on each half of the data, 2 processes (gloo), Adam", "",
              "| " + " | ".join(header_c) + " |", "|" + "---|" * len(header_c)]
    lines += ["| " + " | ".join(row) + " |" for row in codistilled]
    lines += ["", paired(raw), "", "![accuracy against bytes, and codistillation](distributed.png)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--data", default="digits", choices=("digits", "mnist"))
    parser.add_argument("--render", action="store_true",
                        help="only rewrite distributed.md and .png from the measurements in distributed.json")
    args = parser.parse_args()
    command = (f"python benchmarks/bench_distributed.py --seeds {' '.join(map(str, args.seeds))} "
               f"--epochs {args.epochs} --data {args.data}")
    RESULTS.mkdir(exist_ok=True)
    if args.render:
        saved = json.loads((RESULTS / "distributed.json").read_text())
        raw, command, seconds = saved["raw"], saved["command"], saved["seconds"]
    else:
        start = time.perf_counter()
        raw = measure(args.seeds, ["--data", args.data, "--epochs", str(args.epochs)])
        seconds = time.perf_counter() - start
        (RESULTS / "distributed.json").write_text(json.dumps({"command": command, "seconds": seconds, "raw": raw},
                                                             indent=1))
    (RESULTS / "distributed.md").write_text(render(raw, command, seconds))
    plot(raw, RESULTS / "distributed.png")
    print(f"\nwrote {RESULTS / 'distributed.md'} and distributed.png")


if __name__ == "__main__":
    main()
