"""Every registered method on real pretrained models: EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2.

Each method, with default layers, either compresses a layer or says in the Report why it left it;
the compressed model runs; save/load and save_compressed/load_compressed give back the same model.
Inputs are kept small (a few 96×96 crops, a few sentences) so the whole file takes well under a minute
or two; the held-out figures at full size are in ``benchmarks/bench_real_models.py``.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import netcompress as nc
from netcompress._core.layers import candidate_layers

rm = pytest.importorskip("experiments.real_models")

SETTINGS = {
    "svd": {"keep": 0.5}, "svd-bc": {"keep": 0.5}, "dalr": {"budget": 0.5}, "dalr-bc": {"keep": 0.5},
    "magnitude": {"sparsity": 0.5}, "uniform": {"bits": 4, "granularity": "group", "group_size": 16},
    "binary": {}, "ternary": {}, "kmeans": {"bits": 4}, "gptq": {"bits": 4, "group_size": 16},
    "sparsegpt": {"sparsity": 0.5},
    "activation": {"sparsity": 0.25}, "channel": {"sparsity": 0.25},
    "jaderberg": {"keep": 0.5}, "jaderberg-dalr": {"budget": 0.5}, "cp": {"keep": 0.5}, "cp-dalr": {"keep": 0.5},
}
CONV_ONLY = {name for name, m in nc.METHODS.items() if m.accepts == (torch.nn.Conv2d,)}


def test_the_settings_cover_every_registered_method():
    assert set(SETTINGS) == set(nc.METHODS)


def _compress(model, data, method, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples: the held-out column is what the test reads
        return nc.compress(model, data, method=method, positions=8, progress=False, **SETTINGS[method], **options)


def _check_report(report, layers):
    names = {r.name for r in report.rows}
    assert set(layers) <= names, "every weight layer has a row"
    assert all("bn" in n for n in names - set(layers)), "extra rows only for BatchNorms resized by pruning"
    for row in report.rows:
        assert row.status in ("compressed", "left dense", "not selected")
        if row.status == "left dense":
            assert row.note, f"{row.name} left dense without a reason"
    assert any(r.status == "compressed" for r in report.rows)


def _round_trips(model, fresh, run, tmp_path):
    expected = run(model)
    nc.save(model, tmp_path / "saved")
    torch.testing.assert_close(run(nc.load(fresh(), tmp_path / "saved")), expected, rtol=0, atol=0)
    nc.save_compressed(model, tmp_path / "model.ncz")
    torch.testing.assert_close(run(nc.load_compressed(fresh(), tmp_path / "model.ncz")), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small_photographs(photographs_calibration, photographs_heldout):
    def shrink(x):
        return F.interpolate(x, size=(96, 96), mode="bilinear", antialias=True, align_corners=False)

    return shrink(photographs_calibration), shrink(photographs_heldout[:4])


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_every_method_on_efficientnet_lite0(method, efficientnet_lite0, small_photographs, tmp_path):
    calibration, heldout = small_photographs
    model = efficientnet_lite0()
    layers = candidate_layers(model)
    try:
        report = _compress(model, calibration.split(6), method)
    except ValueError as error:  # only structured pruning may refuse, and then with the reason
        assert nc.METHODS[method].family == "structural", error
        assert "trace" in str(error) or "units" in str(error)
        return
    _check_report(report, layers)
    out = model(heldout)
    assert out.shape == (4, 1000) and torch.isfinite(out).all()
    if nc.METHODS[method].family != "structural":
        _round_trips(model, efficientnet_lite0, lambda m: m(heldout), tmp_path)


@pytest.fixture(scope="module")
def minilm_batches(minilm, sentences_calibration, sentences_heldout):
    _, tokenizer = minilm()
    return rm.tokenize(tokenizer, sentences_calibration[:16], batch_size=8), \
        rm.tokenize(tokenizer, sentences_heldout[:8], batch_size=8)[0]


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_every_method_on_minilm(method, minilm, minilm_batches, tmp_path):
    calibration, heldout = minilm_batches
    model, _ = minilm()
    layers = candidate_layers(model)

    def run(m):
        return m(**heldout).last_hidden_state

    try:
        # The 30,522-row word table alone is 11.7 M weights: quantizing it is tested in
        # test_quantize_minilm.py; here it is excluded to keep the suite fast.
        report = _compress(model, calibration, method, exclude=["embeddings.word_embeddings"])
    except ValueError as error:
        if method in CONV_ONLY:  # a transformer has no convolution to decompose: one sentence says so
            assert "no layer of the model can be compressed" in str(error), error
            return
        assert nc.METHODS[method].family == "structural", error
        assert "trace" in str(error)
        return
    _check_report(report, layers)
    out = run(model)
    assert out.shape[-1] == 384 and torch.isfinite(out).all()
    if nc.METHODS[method].family != "structural":
        _round_trips(model, lambda: minilm()[0], run, tmp_path)


def test_minilm_query_key_and_value_share_one_gram(minilm, minilm_batches):
    """Each of the 6 layers' q/k/v read one tensor: 37 observed Linear layers, 25 XXᵀ computed."""
    calibration, _ = minilm_batches
    model, _ = minilm()
    stats = nc.collect(model, calibration, progress=False)
    queries = [f"encoder.layer.{i}.attention.self.query" for i in range(6)]
    expected = {f"encoder.layer.{i}.attention.self.{p}": queries[i] for i in range(6) for p in ("key", "value")}
    assert stats.shared == expected
    assert (len(stats), stats.grams) == (37, 25)
