"""Fast against standard Siamese training: wall time per step and the loss, on the same ranked batches.

Real photographs that ship with scikit-image (astronaut, coffee, chelsea, rocket; downscaled) are
distorted at five levels by the four kinds of RankIQA (ICCV 2017). Each step draws ``--groups``
ranked groups of one crop at five levels: the fast form scores the ``groups × 5`` images once and
takes the 10 ranked pairs of each group from those scores; the standard form runs both Siamese
branches on every pair (``groups × 10 × 2`` image passes). Both start from the same weights and
draw the same batches (the same seed), so their losses agree step by step; only the time differs.
The network is the paper's *Shallow* (three 3×3 convolutions, a convolution to 1×1, one fc).

    python bench_rankings.py [--steps 30] [--groups 4] [--crop 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from _common import print_table
from netcompress.rankings import RankedSet, Shallow, train_ranker


def photographs():
    from skimage import data

    return [data.astronaut()[::2, ::2], data.coffee()[::2, ::2], data.chelsea()[::2, ::2], data.rocket()[::2, ::2]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ranked = RankedSet(photographs(), crop=args.crop)
    rows, runs = [], {}
    for fast in (True, False):
        torch.manual_seed(0)
        model = Shallow(args.crop)
        runs[fast] = train_ranker(model, ranked, steps=args.steps, groups=args.groups, fast=fast, seed=0,
                                  progress=False)
    for fast, history in runs.items():
        passes = args.groups * ranked.levels if fast else args.groups * 10 * 2
        rows.append(["fast Siamese" if fast else "standard Siamese", str(passes),
                     f"{1e3 * statistics.median(history.seconds[1:]):.1f}",
                     f"{history.losses[0]:.4f}", f"{history.losses[-1]:.4f}"])
    speed = statistics.median(runs[False].seconds[1:]) / statistics.median(runs[True].seconds[1:])
    print(f"Shallow on {args.crop}-pixel crops, {args.groups} ranked groups of {ranked.levels} per step, "
          f"{args.steps} steps, {args.threads} threads; median over steps 2…{args.steps}\n")
    print_table(["form", "image passes per step", "ms per step", "first loss", "last loss"], rows)
    print(f"\nfast is {speed:.2f}× faster per step; the largest loss difference over the steps is "
          f"{max(abs(a - b) for a, b in zip(runs[True].losses, runs[False].losses, strict=True)):.2e}")


if __name__ == "__main__":
    main()
