"""`netcompress rank train` and `rank score` on real photographs, and their one-sentence refusals."""

import json

import numpy as np
import pytest

from netcompress.cli.main import main


@pytest.fixture
def photos(tmp_path):
    from PIL import Image
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, image in (("astronaut", data.astronaut()[::4, ::4]), ("coffee", data.coffee()[::4, ::4]),
                        ("chelsea", data.chelsea()[::3, ::3])):
        Image.fromarray(image).save(folder / f"{name}.png")
    return folder


def test_train_then_score_as_a_table_and_as_json(photos, tmp_path, capsys):
    out = tmp_path / "ranker"
    assert main(["rank", "train", "--images", str(photos), "--out", str(out), "--steps", "3", "--crop", "48",
                 "--width", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ranker.json", "ranker.safetensors"]
    assert json.loads((out / "ranker.json").read_text())["images"] == 3
    capsys.readouterr()
    images = [str(photos / "astronaut.png"), str(photos / "coffee.png")]
    assert main(["rank", "score", "--model", str(out), *images, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert list(scores) == images and all(np.isfinite(v) for v in scores.values())
    assert main(["rank", "score", "--model", str(out), images[0]]) == 0
    table = capsys.readouterr().out
    assert "quality score" in table and f"{scores[images[0]]:.4f}" in table

    # The description vouches for its weights: a later training's weights beside it are refused, and weights a
    # rank train cut short after its switch left staged (.ranker.safetensors.next) are the ones read.
    weights = (out / "ranker.safetensors").read_bytes()
    other = tmp_path / "other"
    assert main(["rank", "train", "--images", str(photos), "--out", str(other), "--steps", "3", "--crop", "48",
                 "--width", "4", "--seed", "1"]) == 0
    (out / "ranker.safetensors").write_bytes((other / "ranker.safetensors").read_bytes())
    capsys.readouterr()
    assert main(["rank", "score", "--model", str(out), images[0]]) != 0
    assert "are not the ones ranker.json was written with" in capsys.readouterr().err
    (out / ".ranker.safetensors.next").write_bytes(weights)
    assert main(["rank", "score", "--model", str(out), images[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[images[0]] == scores[images[0]]


def test_refusals_are_one_sentence_and_write_nothing(photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tiny / "t.png")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    cases = [(["--images", str(empty), "--out", str(tmp_path / "a")], "holds no images"),
             (["--images", str(tmp_path / "broken"), "--out", str(tmp_path / "b")], "not an image Pillow can read"),
             (["--images", str(tiny), "--out", str(tmp_path / "c")], "smaller than the 64-pixel crop"),
             (["--images", str(photos), "--out", str(foreign)], "did not write"),
             (["--images", str(photos), "--out", str(tmp_path / "d"), "--crop", "30"], "use at least 48")]
    for arguments, message in cases:
        capsys.readouterr()
        assert main(["rank", "train", *arguments]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error and error.count("\n") == 1
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert not any((tmp_path / name).exists() for name in "abcd")
    assert main(["rank", "score", "--model", str(foreign), str(photos / "coffee.png")]) == 2
    assert "no ranker.json written by" in capsys.readouterr().err
