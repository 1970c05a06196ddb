"""``python -m experiments rankings``: RankIQA's experiment (Liu, van de Weijer and Bagdanov, ICCV 2017) on
photographs that ship with scikit-image and scikit-learn, its quality network then compressed with DALR.

No human-rated quality database ships inside a package, so the scores the regression learns and is
judged on are a stand-in, and say so: the SSIM of each distorted image against its reference.

1. The references are split by image (a reference and all its distortions on one side only).
2. (a) The Shallow network learns from the rankings of the training references' distortions
   (fast Siamese); SROCC of its score against the distortion level on the held-out references, per kind.
3. (b) Standard against fast Siamese on the same batches from the same weights: ms per step and the
   loss curves (a plot).
4. (c) The seed's "baseline vs ours": the same network regressed onto the scores from scratch, and
   from the ranking network; LCC and SROCC on the held-out references' distorted images, over
   ``splits`` random 80/20 splits by reference (the seed repeats 10).
5. (d) The ranking network compressed with ``compress(method="dalr", budget=...)`` on crops of the
   training images; held-out SROCC kept.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import netcompress as nc
from netcompress._core.atomic import atomic_write_bytes
from netcompress.rankings import (
    KINDS,
    RankedSet,
    Shallow,
    distortion_series,
    evaluate_scores,
    fit_scores,
    full_reference_scores,
    score_image,
    split_by_reference,
    srocc,
    train_ranker,
)
from netcompress.report import text_table

__all__ = ["photographs", "run"]

CROP = 64
PAPER_LCC = {"Shallow": (0.831, 0.930), "AlexNet": (0.801, 0.941), "VGG-16": (0.915, 0.970)}  # baseline → ours


def photographs() -> dict[str, np.ndarray]:
    """Colour photographs that need no download, downscaled so the shorter side is about 160 pixels."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    for file, image in zip(("china", "flower"), load_sample_images().images, strict=True):
        images[file] = image
    return {name: image[:: max(1, min(image.shape[:2]) // 160), :: max(1, min(image.shape[:2]) // 160)]
            for name, image in images.items()}


def _scored(references: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """Every distorted version of the references with its stand-in score (SSIM against its reference)."""
    images, scores = [], []
    for reference in references:
        for kind in KINDS:
            series = distortion_series(reference, kind)
            images += series
            scores += full_reference_scores(reference, series)
    return images, scores


def _level_srocc(model, references: list[np.ndarray]) -> dict[str, float]:
    """Per kind, the mean over references of the SROCC between score and (negated) distortion level."""
    result = {}
    for kind in KINDS:
        values = [srocc(-np.arange(5), [score_image(model, image, CROP, crops=8) for image in
                                        distortion_series(reference, kind)]) for reference in references]
        result[kind] = float(np.mean(values))
    return result


def _siamese_timing(ranked: RankedSet, steps: int, seed: int) -> dict:
    runs = {}
    for fast in (True, False):
        torch.manual_seed(seed)
        runs["fast" if fast else "standard"] = train_ranker(Shallow(CROP), ranked, steps=steps, groups=4, fast=fast,
                                                            seed=seed, progress=False)
    return {name: {"ms_per_step": 1e3 * statistics.median(h.seconds[1:]), "losses": h.losses}
            for name, h in runs.items()}


def _compressed(model, ranked: RankedSet, budget: float, seed: int):
    small = copy.deepcopy(model)
    crops = ranked.batch(32, torch.Generator().manual_seed(seed))  # target-domain crops: 160 images
    report = nc.compress(small, crops.split(40), method="dalr", budget=budget, progress=False)
    return small, report


def run(out: str | Path = "netcompress-rankings", *, seed: int = 0, splits: int = 3, steps: int = 300,
        fit_steps: int = 150, plots: bool = True, echo=print) -> dict:
    """Run the demo; write ``results.json`` (and ``siamese.png``) to ``out``; return the results."""
    start = time.perf_counter()
    out = Path(out)
    named = photographs()
    names = list(named)
    references = [named[n] for n in names]
    train, test = split_by_reference(len(references), 0.2, seed=seed)
    ranked = RankedSet([references[i] for i in train], crop=CROP, seed=seed)
    torch.manual_seed(seed)
    ranker = Shallow(CROP)
    history = train_ranker(ranker, ranked, steps=steps, groups=4, seed=seed, progress=False)
    held_out = [references[i] for i in test]
    level = _level_srocc(ranker, held_out)
    echo(f"(a) Trained on the rankings of {', '.join(names[i] for i in train)}; held out: "
         f"{', '.join(names[i] for i in test)}. SROCC of score against distortion level:")
    echo(text_table(["kind", "SROCC"], [[k, f"{v:.3f}"] for k, v in level.items()]))

    timing = _siamese_timing(ranked, 30, seed)
    echo(f"\n(b) {timing['standard']['ms_per_step']:.1f} ms per step standard, {timing['fast']['ms_per_step']:.1f} "
         f"fast ({timing['standard']['ms_per_step'] / timing['fast']['ms_per_step']:.2f}×), same losses")

    rows = []
    for split in range(splits):
        train_refs, test_refs = split_by_reference(len(references), 0.2, seed=seed + split)
        ranked_split = RankedSet([references[i] for i in train_refs], crop=CROP, seed=seed)
        torch.manual_seed(seed + split)
        ranking_net = Shallow(CROP)
        train_ranker(ranking_net, ranked_split, steps=steps, groups=4, seed=seed + split, progress=False)
        train_images, train_scores = _scored([references[i] for i in train_refs])
        test_images, test_scores = _scored([references[i] for i in test_refs])
        torch.manual_seed(seed + split)
        baseline = Shallow(CROP)
        fit_scores(baseline, train_images, train_scores, CROP, steps=fit_steps, seed=seed + split, progress=False)
        ours = copy.deepcopy(ranking_net)
        fit_scores(ours, train_images, train_scores, CROP, steps=fit_steps, seed=seed + split, progress=False)
        rows.append({"split": split, "baseline": evaluate_scores(baseline, test_images, test_scores, CROP),
                     "ours": evaluate_scores(ours, test_images, test_scores, CROP)})
    mean = {form: tuple(float(np.mean([r[form][i] for r in rows])) for i in (0, 1)) for form in ("baseline", "ours")}
    echo(f"\n(c) Regression onto the SSIM stand-in scores, {splits} random 80/20 splits by reference "
         "(held-out LCC / SROCC, means):")
    echo(text_table(["network", "baseline (scores only)", "ours (from rankings)"],
                    [["Shallow, here", f"{mean['baseline'][0]:.3f} / {mean['baseline'][1]:.3f}",
                      f"{mean['ours'][0]:.3f} / {mean['ours'][1]:.3f}"],
                     *[[f"{n}, seed's LIVE LCC", f"{b:.3f}", f"{o:.3f}"] for n, (b, o) in PAPER_LCC.items()]]))

    compressed = {}
    for budget in (0.5, 0.25):
        small, report = _compressed(ranker, ranked, budget, seed)
        compressed[str(budget)] = {"params_kept": report.params_after / report.params_before,
                                   "level_srocc": _level_srocc(small, held_out)}
    echo("\n(d) The ranking network compressed with DALR on 160 target-domain crops (held-out SROCC by kind):")
    echo(text_table(["budget", "params kept", *KINDS],
                    [["dense", "1.000", *(f"{v:.3f}" for v in level.values())],
                     *[[b, f"{c['params_kept']:.3f}", *(f"{v:.3f}" for v in c["level_srocc"].values())]
                       for b, c in compressed.items()]]))

    results = {"references": {"train": [names[i] for i in train], "test": [names[i] for i in test]},
               "ranking_losses": history.losses, "level_srocc": level, "siamese": timing,
               "regression": {"splits": rows, "mean": mean, "paper_lcc": PAPER_LCC,
                              "scores": "SSIM against the reference (a stand-in for human scores)"},
               "compressed": compressed, "seconds": round(time.perf_counter() - start, 1)}
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    if plots:
        from experiments.plots import plot_siamese

        plot_siamese(timing, out / "siamese.png")
    echo(f"\nwrote {out / 'results.json'}{' and ' + str(out / 'siamese.png') if plots else ''} "
         f"({results['seconds']:.0f} s)")
    return results
