"""Benchmark (b): a DALR sweep over 8 ranks against 8 single compressions.

The sweep decomposes once at the largest rank and truncates; the single
compressions each redo the work. Both run from the same statistics.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import netcompress as nc
from _common import print_table
from bench_dalr import inputs

RANKS = (8, 16, 32, 64, 128, 256, 384, 512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=int, default=2048)
    parser.add_argument("--inp", type=int, default=4608)
    parser.add_argument("--samples", type=int, default=4096)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(args.inp, args.out))
    stats = nc.collect(model, inputs(args.samples, args.inp).split(512), progress=False)

    start = time.perf_counter()
    swept = {rank: row.relative_error for rank, _, row in nc.sweep(model, stats, "0", RANKS)}
    t_sweep = time.perf_counter() - start

    singles, t_single = {}, []
    for rank in RANKS:
        start = time.perf_counter()
        f = nc.lowrank.dalr(model[0], stats["0"], rank)
        f.module(rank)
        singles[rank] = f.relative_error(rank)
        t_single.append(time.perf_counter() - start)

    print(f"DALR on a {args.out}×{args.inp} layer, ranks {', '.join(map(str, RANKS))}\n")
    print_table(
        ["", "seconds", "relative output errors"],
        [
            ["one sweep over 8 ranks", f"{t_sweep:.2f}", " ".join(f"{swept[r]:.4f}" for r in RANKS)],
            ["8 single compressions", f"{sum(t_single):.2f}", " ".join(f"{singles[r]:.4f}" for r in RANKS)],
            ["one single compression (mean)", f"{sum(t_single) / len(RANKS):.2f}", ""],
            [f"one single compression at rank {RANKS[-1]}", f"{t_single[-1]:.2f}", ""],
        ],
    )
    print(f"\nthe sweep costs {t_sweep / t_single[-1]:.2f}× the single compression at its largest rank "
          f"and is {sum(t_single) / t_sweep:.2f}× faster than the 8 single compressions")


if __name__ == "__main__":
    main()
