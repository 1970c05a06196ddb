"""Structured pruning before any fine-tuning: which ranking keeps most accuracy at equal FLOPs.

Two networks trained on real data: LeNet-5 on the MNIST subset (conv1, conv2 and fc1 lose the
same share of filters/units; accuracy on the 1,000 held-out images) and the digits MLP
(784-1024-1024-10, MNIST then UCI digits; fc6 and fc7 lose units; accuracy on the 797 held-out
digits). Statistics come from 1,000 training images. Rankings: the plain L1 norm of a filter,
``channel``'s target output energy (with and without its least-squares re-fit), and
``activation``'s mean, max and rate of the rectified response (no re-fit).

    python bench_channel_pruning.py [--networks lenet5,widemlp-digits]
"""

from __future__ import annotations

import argparse
import copy

import netcompress as nc
from _common import print_table, trained
from bench_inference import multiply_adds
from netcompress.distill.finetune import accuracy

RANKINGS = (("channel", "l1", False), ("channel", "energy", False), ("channel", "energy", True),
            ("activation", "mean", None), ("activation", "max", None), ("activation", "rate", None))
PRUNED = {"lenet5": ["conv1", "conv2", "fc1"], "widemlp-digits": ["fc6", "fc7"]}


def table(network: str) -> None:
    model, data = trained(network)
    calibration = data.train_x[:1000].split(250)
    dense = accuracy(model, data.test_x, data.test_y)
    flops = multiply_adds(model, data.test_x[:1])
    rows = []
    for sparsity in (0.25, 0.5, 0.625, 0.75):
        row = [f"{sparsity:.3f}"]
        for method, criterion, refit in RANKINGS:
            pruned = copy.deepcopy(model)
            extra = {} if refit is None else {"refit": refit}
            nc.compress(pruned, calibration, method=method, sparsity=sparsity, layers=PRUNED[network],
                        criterion=criterion, progress=False, **extra)
            if len(row) == 1:
                row.append(f"{multiply_adds(pruned, data.test_x[:1]) / flops:.3f}")
            row.append(f"{accuracy(pruned, data.test_x, data.test_y):.2f}")
        rows.append(row)
    print(f"\n{network}: uncompressed accuracy {dense:.2f}%, no fine-tuning after pruning, layers {PRUNED[network]}\n")
    print_table(["share removed", "FLOPs kept", "L1 norm", "target energy", "target energy + LS re-fit",
                 "act. mean", "act. max", "act. rate"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="lenet5,widemlp-digits")
    for network in parser.parse_args().networks.split(","):
        table(network)


if __name__ == "__main__":
    main()
