"""Error feedback (GPTQ, SparseGPT) against plain rounding and magnitude pruning on a real pretrained transformer.

all-MiniLM-L6-v2 (sentence embeddings, loaded offline by
:mod:`experiments.real_models`), every Linear layer quantized to 3-bit
symmetric codes with one scale per group of inputs (the embedding tables stay dense). Calibration:
128 sentences from standard-library docstrings; fidelity: the mean cosine between compressed and
original sentence embeddings on 128 held-out sentences from *other* modules' docstrings.

* ``uniform``: round to nearest on each group's MSE-optimal clipped grid (weighted by the target
  inputs' energy), no error feedback;
* ``gptq``: the same grid rule, each column's error fed forward through the inverse ``XXᵀ``;
* ``gptq sequential``: the same, block by block on the inputs of the already quantized blocks;
* 50 % unstructured sparsity: ``magnitude`` (per layer) against ``sparsegpt``, independent and sequential;
* low rank: ``svd`` and ``dalr`` at two per-layer ``keep`` and two ``budget`` values, ``dalr``
  independent against sequential (where DALR regresses the original network's outputs on the
  inputs the already factored blocks give).

    python bench_error_feedback.py [--parts quantization pruning low-rank] [--sizings keep=0.5 budget=0.7]
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from experiments import real_models as rm

import netcompress as nc
from _common import print_table

CONFIGS = [("uniform", {}), ("gptq", {}), ("gptq", {"sequential": True})]


def _run(model, tokenizer, batches, heldout, reference, method: str, **settings) -> tuple[float, float, object]:
    """Compress a copy of MiniLM (embedding tables dense); held-out embedding cosine, seconds, report."""
    compressed = copy.deepcopy(model)
    start = time.perf_counter()
    report = nc.compress(compressed, batches, method=method, exclude=["re:.*embeddings.*"], progress=False, **settings)
    seconds = time.perf_counter() - start
    return rm.embedding_cosine(reference, rm.embed(compressed, tokenizer, heldout)), seconds, report


def _label(method: str, settings: dict) -> str:
    return method + (" sequential" if settings.get("sequential") else "")


def quantization(*context) -> None:
    rows = []
    for group in (128, 32):
        for method, extra in CONFIGS:
            settings = {"bits": 3, "group_size": group, **extra}
            if method == "uniform":
                settings["granularity"] = "group"
            cosine, seconds, report = _run(*context, method, **settings)
            rows.append([_label(method, extra), str(group), str(sum(r.replaced for r in report.rows)), f"{cosine:.4f}",
                         f"{seconds:.1f}"])
            print(rows[-1], flush=True)
    print("\nall-MiniLM-L6-v2, 3-bit symmetric, groups along the input; held-out sentence-embedding cosine")
    print_table(["method", "group", "layers", "cosine", "time s"], rows)


def pruning(*context) -> None:
    rows = []
    for method, extra in [("magnitude", {}), ("magnitude", {"sequential": True}), ("sparsegpt", {}),
                          ("sparsegpt", {"sequential": True})]:
        cosine, seconds, report = _run(*context, method, sparsity=0.5, **extra)
        rows.append([_label(method, extra), str(sum(r.replaced for r in report.rows)), f"{cosine:.4f}", f"{seconds:.1f}"])
        print(rows[-1], flush=True)
    print("\nall-MiniLM-L6-v2, 50 % of every Linear layer's weights removed; held-out sentence-embedding cosine")
    print_table(["method", "layers", "cosine", "time s"], rows)


SIZINGS = ["keep=0.5", "keep=0.7", "budget=0.5", "budget=0.7"]


def low_rank(*context, sizings: list[str] = SIZINGS) -> None:
    """DALR independent (original inputs) against sequential (original outputs regressed on the compressed prefix)."""
    rows = []
    for sizing in ({key: float(value)} for key, value in (text.split("=") for text in sizings)):
        # svd ignores the data: sequentially it factors the same weights (only its Report errors differ)
        for method, extra in (("svd", {}), ("dalr", {}), ("dalr", {"sequential": True})):
            cosine, seconds, report = _run(*context, method, **sizing, **extra)
            chosen = [r for r in report.rows if r.status != "not selected"]
            kept = sum(r.params_after for r in chosen) / sum(r.params_before for r in chosen)
            held = [r.heldout_error for r in report.rows if r.replaced and r.heldout_error is not None]
            (key, value), = sizing.items()
            rows.append([_label(method, extra), f"{key} {value}", f"{kept:.3f}", str(len(held)),
                         f"{sum(held) / max(len(held), 1):.3f}", f"{cosine:.4f}", f"{seconds:.1f}"])
            print(rows[-1], flush=True)
    print("\nall-MiniLM-L6-v2, low rank (Linear layers); mean held-out layer error against the original network; "
          "held-out sentence-embedding cosine")
    print_table(["method", "sizing", "params kept", "factored", "layer error", "cosine", "time s"], rows)


PARTS = {"quantization": quantization, "pruning": pruning, "low-rank": low_rank}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    parser.add_argument("--sizings", nargs="+", default=SIZINGS, help="low-rank sizings, e.g. keep=0.5 budget=0.7")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the per-layer sample-size notes are in the reports
    torch.manual_seed(0)
    model, tokenizer = rm.minilm()
    calibration, heldout = rm.sentences("calibration", 128, seed=0), rm.sentences("heldout", 128, seed=0)
    reference = rm.embed(model, tokenizer, heldout)
    batches = rm.tokenize(tokenizer, calibration, batch_size=16)
    for part in args.parts:
        options = {"sizings": args.sizings} if part == "low-rank" else {}
        PARTS[part](model, tokenizer, batches, heldout, reference, **options)


if __name__ == "__main__":
    main()
