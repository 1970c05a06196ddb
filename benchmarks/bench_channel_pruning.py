"""Channel pruning before any fine-tuning: data-aware ranking with least-squares re-fit against plain L1.

LeNet-5 trained on the real MNIST subset; conv1, conv2 and fc1 lose the same share of
filters/units under both criteria, so the FLOPs are equal. Statistics come from 1,000
training images; accuracy is on the 1,000 held-out images.
"""

from __future__ import annotations

import copy

import netcompress as nc
from _common import print_table, trained
from bench_inference import multiply_adds
from netcompress.distill.finetune import accuracy


def main() -> None:
    model, data = trained("lenet5")
    calibration = data.train_x[:1000].split(250)
    dense = accuracy(model, data.test_x, data.test_y)
    flops = multiply_adds(model, data.test_x[:1])
    rows = []
    for sparsity in (0.25, 0.5, 0.625, 0.75):
        row = [f"{sparsity:.3f}"]
        for criterion, refit in (("l1", False), ("energy", False), ("energy", True)):
            pruned = copy.deepcopy(model)
            nc.compress(pruned, calibration, method="channel", sparsity=sparsity, layers=["conv1", "conv2", "fc1"],
                        criterion=criterion, refit=refit, progress=False)
            if len(row) == 1:
                row.append(f"{multiply_adds(pruned, data.test_x[:1]) / flops:.3f}")
            row.append(f"{accuracy(pruned, data.test_x, data.test_y):.2f}")
        rows.append(row)
    print(f"LeNet-5 on MNIST, uncompressed accuracy {dense:.2f}%, no fine-tuning after pruning\n")
    print_table(["share removed", "FLOPs kept", "L1 norm", "target energy", "target energy + LS re-fit"], rows)


if __name__ == "__main__":
    main()
