"""Learning from rankings: the fast Siamese loss against the standard one, distortions, LCC and SROCC."""

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn

from netcompress.rankings import (
    KINDS,
    RankedSet,
    Shallow,
    contrastive_loss,
    distort,
    distortion_series,
    evaluate_scores,
    fast_ranking_loss,
    fit_scores,
    full_reference_scores,
    lcc,
    ranked_pairs,
    read_scores,
    score_image,
    siamese_ranking_loss,
    split_by_reference,
    srocc,
    train_ranker,
)


def _scorer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 1))


def test_the_fast_loss_and_its_gradients_equal_the_standard_siamese_pairs():
    model = _scorer()
    groups, size = 3, 5
    x = torch.randn(groups * size, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    better, worse = ranked_pairs(groups, size)
    assert len(better) == groups * 10  # every pair inside each group of 5, none across groups
    assert all(b // size == w // size and b < w for b, w in zip(better.tolist(), worse.tolist(), strict=True))

    standard = siamese_ranking_loss(model, x[better], x[worse], margin=0.5)  # two passes per pair
    expected = torch.autograd.grad(standard, list(model.parameters()))
    fast = fast_ranking_loss(model(x), size, margin=0.5)  # one pass per image
    got = torch.autograd.grad(fast, list(model.parameters()))
    torch.testing.assert_close(fast, standard)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert standard.item() > 0  # the margin is active on some pairs: the gradients are not trivially zero


def test_the_ranking_loss_is_the_hinge_on_the_score_difference():
    scores = torch.tensor([3.0, 2.5, 0.0, 1.0])  # one group of 4, best first
    pairs = [(3.0, 2.5), (3.0, 0.0), (3.0, 1.0), (2.5, 0.0), (2.5, 1.0), (0.0, 1.0)]
    expected = np.mean([max(0.0, -(a - b) + 1.0) for a, b in pairs])
    assert fast_ranking_loss(scores, 4, margin=1.0).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="not whole groups of 4"):
        fast_ranking_loss(torch.randn(6), 4)


def test_contrastive_loss_follows_the_seed():
    d, similar = torch.tensor([0.5, 2.0, 0.3]), torch.tensor([1, 0, 0])
    expected = np.mean([0.5 * 0.25, 0.0, 0.5 * (1.0 - 0.3) ** 2])
    assert contrastive_loss(d, similar, margin=1.0).item() == pytest.approx(expected)


@pytest.mark.parametrize("kind", KINDS)
def test_each_level_is_worse_than_the_last_by_a_full_reference_measure(kind):
    from skimage import data
    from skimage.metrics import peak_signal_noise_ratio

    reference = data.astronaut()[100:228, 150:278]  # a real photograph, 128×128
    series = distortion_series(reference, kind)
    psnr = [peak_signal_noise_ratio(reference, image) for image in series]
    assert all(image.shape == reference.shape and image.dtype == np.uint8 for image in series)
    assert all(a > b for a, b in zip(psnr, psnr[1:], strict=False)), psnr
    assert np.array_equal(distort(reference, kind, 3), distort(reference, kind, 3))  # seeded


def test_bad_distortion_requests_are_refused_in_one_sentence():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="kind must be one of"):
        distort(image, "gif", 1)
    with pytest.raises(ValueError, match="level must be an integer from 1 to 5"):
        distort(image, "blur", 6)
    with pytest.raises(ValueError, match="uint8 array"):
        distort(image.astype(np.float32), "jpeg", 1)


@pytest.mark.parametrize("ties", [False, True])
def test_lcc_and_srocc_equal_scipy(ties):
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(scale=0.8, size=40)
    if ties:
        x, y = np.round(x), np.round(y, 1)
    assert lcc(x, y) == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
    assert srocc(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)


def _photographs():
    from skimage import data

    return [data.astronaut()[::4, ::4], data.coffee()[::4, ::4], data.chelsea()[::3, ::3], data.rocket()[::4, ::4]]


def test_fast_and_standard_training_follow_the_same_path():
    """Same batches, same loss and gradient: Adam takes the same steps (up to rounding, which its
    normalisation amplifies where a gradient is nearly zero: the losses are compared, loosely after step 1)."""
    ranked = RankedSet(_photographs()[:2], crop=48)
    histories = []
    for fast in (True, False):
        torch.manual_seed(0)
        histories.append(train_ranker(Shallow(48, width=4), ranked, steps=3, groups=2, fast=fast, seed=1,
                                      progress=False))
    fast, standard = histories
    assert fast.losses[0] == pytest.approx(standard.losses[0], rel=1e-5)
    assert fast.losses == pytest.approx(standard.losses, rel=1e-2)


def test_a_network_trained_on_rankings_orders_a_held_out_photograph_by_distortion_level():
    *train, held_out = _photographs()  # three references to learn from, the rocket never seen
    ranked = RankedSet(train, crop=48, kinds=("blur", "noise"))
    torch.manual_seed(0)
    model = Shallow(48, width=16)
    history = train_ranker(model, ranked, steps=100, groups=4, lr=1e-3, progress=False)
    assert np.mean(history.losses[-10:]) < 0.5 * np.mean(history.losses[:10])
    for kind in ("blur", "noise"):
        scores = [score_image(model, image, 48, crops=8) for image in distortion_series(held_out, kind)]
        assert srocc(-np.arange(5), scores) >= 0.8, (kind, scores)


def test_ranked_sets_splits_and_networks_refuse_what_they_cannot_use():
    train, test = split_by_reference(10, 0.2, seed=3)
    assert sorted(train + test) == list(range(10)) and len(test) == 2 and not set(train) & set(test)
    assert split_by_reference(10, 0.2, seed=3) == (train, test)
    ranked = RankedSet(_photographs()[:1], crop=48, kinds=("jpeg",))
    batch = ranked.batch(3, torch.Generator().manual_seed(0))
    assert batch.shape == (15, 3, 48, 48) and 0 <= batch.min() and batch.max() <= 1
    assert torch.equal(batch, ranked.batch(3, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="smaller than the 64-pixel crop"):
        RankedSet([np.zeros((40, 80, 3), dtype=np.uint8)], crop=64)
    with pytest.raises(ValueError, match="use at least 48"):
        Shallow(40)
    with pytest.raises(ValueError, match="smaller than the 48-pixel crop"):
        score_image(Shallow(48), np.zeros((30, 30, 3), dtype=np.uint8), 48)


def test_scores_are_read_from_a_csv_and_bad_files_are_refused(tmp_path):
    good = tmp_path / "scores.csv"
    good.write_text("image,score\na.png,71.5\nb.png,12\n")
    assert read_scores(good) == {"a.png": 71.5, "b.png": 12.0}
    for text, message in [("name,value\na.png,1\n", "columns 'image' and 'score'"),
                          ("image,score\na.png,high\n", "line 2: score 'high' is not a number"),
                          ("image,score\na.png,1\na.png,2\n", "line 3: image 'a.png' is scored twice"),
                          ("image,score\n", "holds no scores")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_scores(bad)


def test_the_full_reference_stand_in_falls_with_every_level():
    reference = _photographs()[0]
    for kind in KINDS:
        scores = full_reference_scores(reference, distortion_series(reference, kind))
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), (kind, scores)


def test_fitting_scores_lowers_the_error_and_correlates_on_the_fitted_images():
    reference = _photographs()[0]
    images = [image for kind in ("blur", "noise") for image in distortion_series(reference, kind)]
    scores = full_reference_scores(reference, images)
    torch.manual_seed(0)
    model = Shallow(48, width=16)
    losses = fit_scores(model, images, scores, 48, steps=200, batch=16, lr=1e-3, progress=False)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    fitted_lcc, fitted_srocc = evaluate_scores(model, images, scores, 48, crops=4)
    assert fitted_lcc > 0.8 and fitted_srocc > 0.8


def test_the_rankings_demo_runs_end_to_end_on_real_photographs(tmp_path, monkeypatch):
    import json

    from experiments import rankings as demo

    small = {name: image[::2, ::2] for name, image in list(demo.photographs().items())[:5]}
    monkeypatch.setattr(demo, "photographs", lambda: small)
    result = demo.run(tmp_path, splits=1, steps=4, fit_steps=4, plots=False, echo=lambda *a: None)
    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written["level_srocc"]) == set(KINDS) and written["siamese"]["fast"]["ms_per_step"] > 0
    fast, standard = (np.array(written["siamese"][form]["losses"]) for form in ("fast", "standard"))
    assert fast[0] == pytest.approx(standard[0], rel=1e-5) and np.abs(fast - standard).mean() < 0.02
    assert set(written["compressed"]) == {"0.5", "0.25"} and result["regression"]["mean"]["ours"]
    assert not set(written["references"]["train"]) & set(written["references"]["test"])


def test_an_interrupted_ranking_run_resumes_to_where_an_uninterrupted_one_ends(tmp_path):
    ranked = RankedSet(_photographs()[:2], crop=48, kinds=("noise",))
    torch.manual_seed(0)
    whole = Shallow(48, width=4)
    train_ranker(whole, ranked, steps=4, groups=2, progress=False)
    torch.manual_seed(0)
    resumed = Shallow(48, width=4)
    file = tmp_path / "ranker.ckpt"
    train_ranker(resumed, ranked, steps=2, groups=2, checkpoint=file, checkpoint_every=1, progress=False)  # "stopped"
    history = train_ranker(resumed, ranked, steps=4, groups=2, checkpoint=file, progress=False)
    assert len(history.losses) == 4
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
