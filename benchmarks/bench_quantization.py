"""Weight quantization granularity on target data: per tensor, per channel and group-wise (seed 004).

Every Linear/Conv2d layer is quantized uniformly (clipping chosen per group, calibrated on
target statistics) with no fine-tuning. Networks: the domain-transfer demo's network
fine-tuned on UCI digits (tested on held-out digits) and LeNet-5 on MNIST. "bits/weight"
includes each group's codebook (its grid's two float32 ends).
"""

from __future__ import annotations

import copy

import netcompress as nc
from _common import print_table, trained
from netcompress.distill.finetune import accuracy

GRANULARITIES = [("tensor", None), ("group", 64), ("group", 16), ("group", 4), ("channel", None)]


def main() -> None:
    for network in ("widemlp-digits", "lenet5"):
        model, data = trained(network)
        calibration = data.train_x[:500].split(250)
        stats = nc.collect(model, calibration, progress=False)
        weights = sum(m.weight.numel() for m in model.modules() if hasattr(m, "weight") and m.weight is not None)
        rows = []
        for bits in (2, 3, 4):
            for granularity, size in GRANULARITIES:
                quantized = copy.deepcopy(model)
                # A layer with fewer output channels than the group takes one group of all of them.
                group_size = None if size is None else {name: min(size, m.weight.shape[0]) for name, m in
                                                        model.named_modules() if name in stats}
                report = nc.compress(quantized, stats=stats, method="uniform", bits=bits, granularity=granularity,
                                     group_size=group_size, progress=False)
                groups = sum(m.codebook.shape[0] for m in quantized.modules() if hasattr(m, "codebook"))
                label = granularity if size is None else f"group of {size}"
                error = sum(r.relative_error for r in report.rows) / len(report.rows)
                rows.append([str(bits), label, f"{bits + 64 * groups / weights:.3f}", f"{error:.4f}",
                             f"{accuracy(quantized, data.test_x, data.test_y):.2f}"])
        print(f"\n{network}: uncompressed accuracy {accuracy(model, data.test_x, data.test_y):.2f}%")
        print_table(["bits", "granularity", "bits/weight", "mean layer output error", "accuracy %"], rows)


if __name__ == "__main__":
    main()
