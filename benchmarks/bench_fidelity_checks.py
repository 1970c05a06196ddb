"""Does the whole-model check stop broken models, and does BatchNorm re-estimation help after channel removal?

On EfficientNet-Lite0 fine-tuned on MNIST digits at 64×64 (``_domain_models.efficientnet_mnist64``,
cached by ``bench_targets.py``), compressed with 512 training images and no labels, measured on the
1,500 test digits:

1. the settings a new user tried (``dalr`` budget 0.5, ``channel`` sparsity 0.3, default 4-bit
   ``uniform``), and 8-bit ``uniform``: the Report's fidelity on the held-out share of the
   calibration images, test accuracy, and whether the command line (default ``--min-agreement 0.9``)
   would write the model;
2. ``channel`` at 0.3 and 0.5 with ``batchnorm=False`` and the default (re-estimated): test accuracy.

Writes ``results/fidelity_checks.json``.

    python bench_fidelity_checks.py
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

import netcompress as nc
from netcompress.report import DEFAULT_MIN_AGREEMENT

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    from _domain_models import efficientnet_mnist64

    torch.set_num_threads(2)
    model, data = efficientnet_mnist64()
    calibration = list(data.prepare(data.train_x[:512]).split(64))
    test_x, test_y = data.prepare(data.test_x), data.test_y

    def accuracy(m) -> float:
        with torch.inference_mode():
            return float(torch.cat([m(b).argmax(1) for b in test_x.split(250)]).eq(test_y).float().mean())

    dense = accuracy(model)
    print(f"dense test accuracy {dense:.4f}", flush=True)
    rows = []
    cases = [("dalr budget 0.5", nc.DALR(budget=0.5), {}), ("channel 0.3", nc.Channel(sparsity=0.3), {}),
             ("uniform 4-bit (default per channel)", nc.Uniform(bits=4), {}), ("uniform 8-bit", nc.Uniform(bits=8), {}),
             ("channel 0.3, batchnorm=False", nc.Channel(sparsity=0.3), {"batchnorm": False}),
             ("channel 0.5", nc.Channel(sparsity=0.5), {}),
             ("channel 0.5, batchnorm=False", nc.Channel(sparsity=0.5), {"batchnorm": False})]
    for label, settings, options in cases:
        compressed = copy.deepcopy(model)
        start = time.perf_counter()
        report = nc.compress(compressed, calibration, settings, progress=False, **options)
        fidelity = report.fidelity
        row = {"case": label, "test_accuracy": accuracy(compressed), "agreement": fidelity.agreement,
               "cosine": fidelity.cosine, "relative_error": fidelity.relative_error, "samples": fidelity.samples,
               "batchnorm_reestimated": report.batchnorm,
               "cli_writes": fidelity.below(DEFAULT_MIN_AGREEMENT) is None, "seconds": time.perf_counter() - start}
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fidelity_checks.json").write_text(json.dumps({"dense_test_accuracy": dense, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
