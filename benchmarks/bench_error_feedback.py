"""Error feedback (GPTQ, SparseGPT) against plain rounding and magnitude pruning on a real pretrained transformer.

all-MiniLM-L6-v2 (sentence embeddings, loaded offline by
:mod:`netcompress.prototype.experiments.real_models`), every Linear layer quantized to 3-bit
symmetric codes with one scale per group of inputs (the embedding tables stay dense). Calibration:
128 sentences from standard-library docstrings; fidelity: the mean cosine between compressed and
original sentence embeddings on 128 held-out sentences from *other* modules' docstrings.

* ``uniform``: round to nearest on each group's MSE-optimal clipped grid (weighted by the target
  inputs' energy), no error feedback;
* ``gptq``: the same grid rule, each column's error fed forward through the inverse ``XXᵀ``;
* ``gptq sequential``: the same, block by block on the inputs of the already quantized blocks;
* 50 % unstructured sparsity: ``magnitude`` (per layer) against ``sparsegpt``, independent and sequential.

    python bench_error_feedback.py
"""

from __future__ import annotations

import copy
import time
import warnings

import torch

import netcompress as nc
from _common import print_table
from netcompress.prototype.experiments import real_models as rm

CONFIGS = [("uniform", {}), ("gptq", {}), ("gptq", {"sequential": True})]


def main() -> None:
    warnings.simplefilter("ignore")  # the per-layer sample-size notes are in the reports
    torch.manual_seed(0)
    model, tokenizer = rm.minilm()
    calibration, heldout = rm.sentences("calibration", 128, seed=0), rm.sentences("heldout", 128, seed=0)
    reference = rm.embed(model, tokenizer, heldout)
    batches = rm.tokenize(tokenizer, calibration, batch_size=16)
    rows = []
    for group in (128, 32):
        for method, extra in CONFIGS:
            compressed = copy.deepcopy(model)
            settings = {"bits": 3, "group_size": group, **extra}
            if method == "uniform":
                settings["granularity"] = "group"
            start = time.perf_counter()
            report = nc.compress(compressed, batches, method=method, exclude=["re:.*embeddings.*"], progress=False,
                                 **settings)
            seconds = time.perf_counter() - start
            cosine = rm.embedding_cosine(reference, rm.embed(compressed, tokenizer, heldout))
            label = method + (" sequential" if extra.get("sequential") else "")
            rows.append([label, str(group), str(sum(r.replaced for r in report.rows)), f"{cosine:.4f}",
                         f"{seconds:.1f}"])
            print(rows[-1], flush=True)
    print("\nall-MiniLM-L6-v2, 3-bit symmetric, groups along the input; held-out sentence-embedding cosine")
    print_table(["method", "group", "layers", "cosine", "time s"], rows)
    rows = []
    for method, extra in [("magnitude", {}), ("sparsegpt", {}), ("sparsegpt", {"sequential": True})]:
        compressed = copy.deepcopy(model)
        start = time.perf_counter()
        report = nc.compress(compressed, batches, method=method, sparsity=0.5, exclude=["re:.*embeddings.*"],
                             progress=False, **extra)
        seconds = time.perf_counter() - start
        cosine = rm.embedding_cosine(reference, rm.embed(compressed, tokenizer, heldout))
        label = method + (" sequential" if extra.get("sequential") else "")
        rows.append([label, str(sum(r.replaced for r in report.rows)), f"{cosine:.4f}", f"{seconds:.1f}"])
        print(rows[-1], flush=True)
    print("\nall-MiniLM-L6-v2, 50 % of every Linear layer's weights removed; held-out sentence-embedding cosine")
    print_table(["method", "layers", "cosine", "time s"], rows)


if __name__ == "__main__":
    main()
