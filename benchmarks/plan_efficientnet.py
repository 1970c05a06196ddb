"""EfficientNet-Lite0 fine-tuned on MNIST at 64x64 (cached by _domain_models), compressed by the planner to a
size target with 512 unlabelled training images; prints test accuracy, the Report headline and the choices.

    cd benchmarks && PYTHONPATH=.. python plan_efficientnet.py
"""
import copy
import time
from collections import Counter

import torch

import netcompress as nc
from _domain_models import efficientnet_mnist64
from netcompress._core.sizes import saved_bytes


def main() -> None:
    torch.set_num_threads(2)
    model, data = efficientnet_mnist64()
    cal = list(data.prepare(data.train_x[:512]).split(64))
    tx, ty = data.prepare(data.test_x), data.test_y
    def acc(m):
        with torch.inference_mode():
            return float(torch.cat([m(b).argmax(1) for b in tx.split(250)]).eq(ty).float().mean())
    print("dense", acc(model), saved_bytes(model), flush=True)
    for t in [nc.Target(size=1/8)]:
        m = copy.deepcopy(model)
        t0 = time.time()
        r = nc.compress(m, cal, target=t, progress=False)
        print(t, f"{time.time()-t0:.0f}s acc {acc(m):.4f}", flush=True)
        print("\n".join(r.headline()), flush=True)

        print(Counter(v["choice"].split("(")[0] + ("+8bit" if "factor_bits" in v["choice"] else "") for v in r.target["layers"].values()), flush=True)


if __name__ == "__main__":
    main()
