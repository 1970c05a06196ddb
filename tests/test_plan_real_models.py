"""A plan of several methods on real pretrained models, in one call: one statistics pass, one apply.

MiniLM: GPTQ on the attention, DALR on the MLP, 8-bit elsewhere. EfficientNet-Lite0: channel pruning
on the first blocks, 8-bit uniform on the rest. Each compresses, runs, round-trips through save/load
and .ncz, and its rows equal those of the same methods applied one call at a time to the original.
"""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import netcompress as nc
from test_real_models import _round_trips

rm = pytest.importorskip("experiments.real_models")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # few samples: in-sample errors are optimistic


def _compressed_rows(report):
    return {row.name: row for row in report.rows if row.replaced}


def _alone(model_factory, data, plan, **options):
    """The rows of each claim of ``plan`` run by itself on a fresh copy of the original."""
    rows = {}
    claimed = [key for key, value in plan.items() if key != "_default"]
    for key, settings in plan.items():
        if settings is None:
            continue
        selection = dict(layers=[key]) if key != "_default" else dict(exclude=claimed)
        report = nc.compress(model_factory(), data, settings, progress=False, **selection, **options)
        rows.update(_compressed_rows(report))
    return rows


def test_minilm_gptq_attention_dalr_mlp_uniform_elsewhere(minilm, sentences_calibration, sentences_heldout,
                                                          tmp_path):
    model, tokenizer = minilm()
    calibration = rm.tokenize(tokenizer, sentences_calibration[:12], batch_size=6)
    heldout = rm.tokenize(tokenizer, sentences_heldout[:8], batch_size=8)[0]
    plan = {"re:.*attention\\.self\\.(query|key|value)": nc.GPTQ(bits=4, group_size=32),
            "re:.*intermediate\\.dense": nc.DALR(keep=0.5),
            "re:embeddings\\..*": None,  # the 30,522-row word table is quantized in test_quantize_minilm.py
            "_default": nc.Uniform(bits=8)}
    report = nc.compress(model, calibration, plan, progress=False)
    methods = {row.name: row.method for row in report.rows if row.replaced}
    assert methods["encoder.layer.0.attention.self.query"] == "gptq"
    assert methods["encoder.layer.5.intermediate.dense"] == "dalr"
    assert methods["encoder.layer.3.output.dense"] == "uniform"
    assert report["embeddings.word_embeddings"].status == "not selected"

    def run(m):
        return m(**heldout).last_hidden_state

    assert torch.isfinite(run(model)).all()
    assert _compressed_rows(report) == _alone(lambda: minilm()[0], calibration, plan)
    _round_trips(model, lambda: minilm()[0], run, tmp_path)


def test_efficientnet_lite0_channel_on_the_first_blocks_uniform_on_the_rest(efficientnet_lite0,
                                                                           photographs_calibration, tmp_path):
    calibration = F.interpolate(photographs_calibration[:6], size=(64, 64), mode="bilinear", antialias=True,
                                align_corners=False).split(3)
    plan = {"re:_blocks\\.[0-2]\\._project_conv": nc.Channel(sparsity=0.25),
            "re:_blocks\\.[1-3]\\._expand_conv": None,  # they read the removed channels: channel resizes them
            "_default": nc.Uniform(bits=8)}
    model = efficientnet_lite0()
    # holdout=0: a structural method fits its units on every sample, so its rows equal those of a call alone
    report = nc.compress(model, calibration, plan, progress=False, holdout=0)
    rows = _compressed_rows(report)
    assert rows["_blocks.1._project_conv"].method == "channel" and rows["_blocks.10._project_conv"].method == "uniform"
    assert rows["_blocks.2._expand_conv"].note.startswith("resized")
    assert rows["_blocks.1._project_conv"].note == "kept 18 of 24 units"
    assert _compressed_rows(report) == _alone(efficientnet_lite0, calibration, plan, holdout=0)
    example = calibration[0]
    assert torch.isfinite(model(example)).all()
    _round_trips(model, efficientnet_lite0, lambda m: m(example), tmp_path)


def test_a_plan_whose_claims_would_both_replace_a_layer_is_refused(efficientnet_lite0, photographs_calibration):
    calibration = F.interpolate(photographs_calibration[:3], size=(64, 64), mode="bilinear", antialias=True,
                                align_corners=False)
    model = efficientnet_lite0()
    state = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="'_blocks.1._expand_conv' would be replaced by two claims"):
            nc.compress(model, calibration, {"_blocks.0._project_conv": nc.Channel(sparsity=0.25),
                                             "_default": nc.Uniform(bits=8)}, progress=False)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
