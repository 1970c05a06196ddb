"""Smoke tests of two demo parts at reduced sizes: nuclear-norm fine-tuning then DALR, and ensemble distillation."""

import json

import numpy as np
import pytest
import torch
from experiments import ensembles
from experiments.data import mnist
from experiments.ensembles import (
    ensemble_accuracy,
    ensemble_teachers,
    plot_ensemble,
    teacher_probabilities,
    train_teachers,
)
from experiments.low_rank_training import nuclear_then_dalr, plot_nuclear, torch_threads

PNG = b"\x89PNG\r\n\x1a\n"


def test_nuclear_then_dalr_lowers_effective_ranks_and_full_rank_svd_is_exact(tmp_path):
    lines = []
    width, ranks = 32, (2, 32)
    result = nuclear_then_dalr(seed=0, echo=lines.append, ranks=ranks, weight=50.0, width=width, source_epochs=1,
                               target_epochs=2)
    assert json.loads(json.dumps(result)) == result
    assert [row["rank"] for row in result["rows"]] == list(ranks)
    # r·(in + out) over in·out, summed over fc6 (width × 784) and fc7 (width × width).
    for row in result["rows"]:
        expected = 100 * row["rank"] * ((784 + width) + 2 * width) / (784 * width + width * width)
        assert row["params_percent"] == pytest.approx(expected, rel=1e-12)
        for name in ("plain", "nuclear"):
            for method in ("dalr", "svd"):
                assert 0 <= row[f"{name}_{method}"] <= 100
    # At rank = width both factorizations keep all of fc6 and fc7: the truncated SVD is the layer itself.
    for name in ("plain", "nuclear"):
        assert result["rows"][-1][f"{name}_svd"] == pytest.approx(result["uncompressed"][name], abs=0.2)
    # The proximal step only shrinks singular values: the regularized layers end with lower effective rank.
    ranks_of = result["effective_ranks"]
    for layer in ("fc6", "fc7"):
        assert ranks_of["nuclear"][layer] < ranks_of["source"][layer]
        assert ranks_of["nuclear"][layer] < ranks_of["plain"][layer]
        assert 1 <= ranks_of["nuclear"][layer] <= width
    for choice in result["energy_ranks"].values():
        assert set(choice["ranks"]) == {"fc6", "fc7"} and all(1 <= r <= width for r in choice["ranks"].values())
    text = "\n".join(lines)
    assert "effective rank" in text and "DALR nuclear" in text
    plot_nuclear(result, tmp_path / "nuclear.png")
    assert (tmp_path / "nuclear.png").read_bytes()[:8] == PNG


def test_ensemble_teachers_structure_and_the_ensemble_is_the_mean_of_probabilities(tmp_path, monkeypatch):
    data = mnist(seed=0)
    monkeypatch.setattr(ensembles, "mnist", lambda seed: data)  # decompressing the subset twice costs 4 s
    lines = []
    result = ensemble_teachers(seed=0, echo=lines.append, labelled=200, teacher_epochs=1, student_epochs=1, width=4)
    assert json.loads(json.dumps(result)) == result
    scores = {t["model"]: t["accuracy"] for t in result["teachers"]}
    assert len(scores) == 3 and result["best_teacher"] == max(scores, key=scores.get)
    assert [s["student"] for s in result["students"]] == [
        "no teacher (labels only)", f"best single teacher ({result['best_teacher']})", "3-teacher ensemble"]
    assert len({s["parameters"] for s in result["students"]}) == 1  # the same student every time
    assert result["ensemble"]["parameters"] == sum(t["parameters"] for t in result["teachers"])

    # Seeded: the same teachers again, and the reported ensemble accuracy is that of their mean probabilities.
    with torch_threads(1):
        teachers = list(train_teachers(data, seed=0, epochs=1).values())
    assert ensemble_accuracy(teachers, data.test_x, data.test_y) == result["ensemble"]["accuracy"]
    x = data.test_x[:64]
    with torch.no_grad():
        logits = [t(x).double().numpy() for t in teachers]
    for temperature in (1.0, 4.0):
        softened = [np.exp(z / temperature - (z / temperature).max(1, keepdims=True)) for z in logits]
        direct = sum(s / s.sum(1, keepdims=True) for s in softened) / len(softened)
        got = teacher_probabilities(teachers, x, temperature).double().numpy()
        np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-7)
    assert "ensemble of the 3 teachers" in "\n".join(lines)
    plot_ensemble(result, tmp_path / "ensemble.png")
    assert (tmp_path / "ensemble.png").read_bytes()[:8] == PNG
