"""Weight quantization granularity on target data: per tensor, per channel and group-wise.

Every Linear/Conv2d layer is quantized uniformly (symmetric, clipping chosen per group,
calibrated on target statistics) with no fine-tuning (group-wise as in Yuan et al., ICPR 2020,
and GPTQ/torchao: groups of consecutive inputs of one output row). Networks: the
domain-transfer demo's network fine-tuned on UCI digits (tested on held-out digits) and
LeNet-5 on MNIST. "bits/weight" is the Report's honest figure: the code plus each group's
share of its float32 scale, weighted by the layers' weights.
"""

from __future__ import annotations

import copy

import netcompress as nc
from _common import print_table, trained
from netcompress.distill.finetune import accuracy

GRANULARITIES = [("tensor", None), ("group", 64), ("group", 16), ("group", 4), ("channel", None)]


def _group(width: int, size: int) -> int:
    return max(d for d in range(1, min(width, size) + 1) if width % d == 0)


def main() -> None:
    for network in ("widemlp-digits", "lenet5"):
        model, data = trained(network)
        calibration = data.train_x[:500].split(250)
        stats = nc.collect(model, calibration, progress=False)
        rows = []
        for bits in (2, 3, 4):
            for granularity, size in GRANULARITIES:
                quantized = copy.deepcopy(model)
                # Groups along a row's inputs: the largest divisor of the row's width up to the size.
                group_size = None if size is None else {name: _group(m.weight[0].numel(), size) for name, m in
                                                        model.named_modules() if name in stats}
                report = nc.compress(quantized, stats=stats, method="uniform", bits=bits, granularity=granularity,
                                     group_size=group_size, progress=False)
                quantized_rows = [r for r in report.rows if r.replaced]
                stored = sum(r.bits * r.params_after for r in quantized_rows) / sum(r.params_after for r in quantized_rows)
                label = granularity if size is None else f"group of {size}"
                error = sum(r.relative_error for r in report.rows) / len(report.rows)
                rows.append([str(bits), label, f"{stored:.3f}", f"{error:.4f}",
                             f"{accuracy(quantized, data.test_x, data.test_y):.2f}"])
        print(f"\n{network}: uncompressed accuracy {accuracy(model, data.test_x, data.test_y):.2f}%")
        print_table(["bits", "granularity", "bits/weight", "mean layer output error", "accuracy %"], rows)


if __name__ == "__main__":
    main()
