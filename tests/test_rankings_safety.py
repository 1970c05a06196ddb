"""Hostile and faulty input to the rankings package (issue 22): score files, fit_scores, ranker descriptions."""

import json
import math
import os
import re

import numpy as np
import pytest
import torch

from netcompress.cli.main import main
from netcompress.rankings import Shallow, fit_scores, read_scores


def _write(tmp_path, data: bytes):
    path = tmp_path / "scores.csv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data", [
    "\ufeffimage,score\r\na.png,71.5\r\nb.png,12\r\n".encode(),  # Excel's "CSV UTF-8"
    b"image;score\r\na.png;71.5\r\nb.png;12\r\n",  # a European-locale spreadsheet's separator
    "image\tscore\r\na.png\t71.5\r\nb.png\t12\r\n".encode("utf-16"),  # Excel's "Unicode text": UTF-16 with a BOM
    b"id,image,score,notes\na.png,a.png,71.5,x\nb.png,b.png,12,\n\n,,,\n",  # other columns, blank rows at the end
    b'image,score\n"a.png",+71.5\n" b.png ",1.2e1\n',
], ids=["utf8-bom-crlf", "semicolon", "utf16-tab", "extra-columns", "quoted"])
def test_what_a_spreadsheet_writes_and_can_be_read_one_way_is_accepted(tmp_path, data):
    assert read_scores(_write(tmp_path, data)) == {"a.png": 71.5, "b.png": 12.0}


@pytest.mark.parametrize("data, message", [
    (b"image;score\na.png;71,5\n", r"line 2: score '71,5' has a decimal comma.*decimal point"),
    (b"image,score\na.png,\"1,5\"\n", r"line 2: score '1,5' has a decimal comma"),
    ("image,score\ncafé.png,1\n".encode("cp1252"), r"line 2: byte 0xe9 is not UTF-8.*save it as CSV UTF-8"),
    ("image,score\na.png,1\n".encode("utf-16-le"), r"line 1: holds a NUL byte.*without a byte-order mark"),
    (b"image,score,x;image;score\na,1,2\n", r"line 1: .*split at commas and at semicolons; use one separator"),
    (b"image,score,score\na.png,1,2\n", r"line 1: the header names the column 'score' twice"),
    (b"image,score\na.png,1e39\n", r"line 2: score '1e39' is beyond float32's range"),
    (b"image,score\na.png,1e999\n", r"line 2: score '1e999' is beyond float32's range"),
    (b"image,score\na.png,nan\n", r"line 2: score 'nan' is not a number"),
    (b"image,score\na.png,inf\n", r"line 2: score 'inf' is not a number"),
    (b"image,score\na.png,1_000\n", r"line 2: score '1_000' is not a number"),
    (b"image,score\na.png,\xd9\xa1\n", r"line 2: score '\u0661' is not a number"),  # an Arabic-Indic digit
    (b"image,score\na.png,1\na.png,2\n", r"line 3: image 'a.png' is scored twice"),
    (b"image,score\n,1\n", r"line 2: the image name '' is empty"),
    (b"image,score\na\x01.png,1\n", r"line 2: the image name .* holds control characters"),
    (b"image,score\na.png\n", r"line 2: has 1 cells, too few"),
    (b"image,score\n" + b"a" * 200_000 + b",1\n", r"line 2: cannot be read as CSV \(field larger"),
    (b'image,score\n"a.png"x,1\n', r"line 2: cannot be read as CSV"),
    (b"", r"is empty"),
    (b"image,score\r\n\r\n", r"holds no scores"),
], ids=lambda v: v[:24] if isinstance(v, str) else None)
def test_forged_and_ambiguous_score_files_are_refused_naming_the_file_and_the_line(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as error:
        read_scores(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_scores_fifo_or_folder_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "scores.csv"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"scores file .*scores.csv is a named pipe"):
        read_scores(fifo)
    with pytest.raises(ValueError, match=r"scores file .* is a directory"):
        read_scores(tmp_path)


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (52, 56, 3), dtype=np.uint8) for _ in range(3)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("scores, error, message", [
    ([1.0, 2.0, 1e39], ValueError, r"scores\[2\] = 1e\+39 is not finite in float32"),
    ([1.0, -3.5e38, 0.0], ValueError, r"scores\[1\] = -3.5e\+38 is not finite in float32"),
    ([1.0, float("nan"), 0.0], ValueError, r"scores\[1\] = nan"),
    (np.array([1.0, 2.0, np.inf]), ValueError, r"scores\[2\] = inf"),
    ([1.0, True, 0.0], TypeError, r"scores\[1\] must be a number, got bool"),
    ([1.0, "2", 0.0], TypeError, r"scores\[1\] must be a number, got str"),
    ("123", TypeError, r"scores must be a sequence of numbers"),
])
def test_fit_scores_refuses_scores_that_overflow_float32_before_training(scores, error, message):
    torch.manual_seed(0)
    model = Shallow(48, width=2)
    before = _state(model)
    with pytest.raises(error, match=message):
        fit_scores(model, _images(), scores, 48, steps=2, batch=2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scores_near_float32s_limit_are_standardised_without_overflow():
    torch.manual_seed(0)
    model = Shallow(48, width=2)
    losses = fit_scores(model, _images(), [3e38, -3e38, 1e38], 48, steps=2, batch=2, progress=False)
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("settings, message", [
    ({"lr": 1e30}, r"fit_scores diverged: after step \d+ the weights '.*' are not finite \(lr=1e\+30\).*put back"),
    ({"lr": 1e39}, r"lr must be a positive number within float32's range, got 1e\+39"),
    ({"lr": float("nan")}, r"lr must be a positive number"),
    ({"steps": 0}, r"steps must be a positive integer, got 0"),
    ({"batch": 2.0}, r"batch must be a positive integer, got 2.0"),
])
def test_fit_scores_refuses_settings_that_diverge_and_puts_the_weights_back(settings, message):
    torch.manual_seed(0)
    model = Shallow(48, width=2)
    before = _state(model)
    with pytest.raises(ValueError, match=message):
        fit_scores(model, _images(), [1.0, 2.0, 3.0], 48, **{"steps": 3, "batch": 2, **settings}, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


GOOD = {"format": "netcompress.ranker", "version": 1, "crop": 48, "width": 4, "steps": 3, "groups": 4, "seed": 0,
        "images": 3, "kinds": ["blur"], "first_loss": 0.9, "last_loss": 0.4}


@pytest.fixture
def ranker(tmp_path):
    from PIL import Image
    from safetensors.torch import save_file

    folder = tmp_path / "ranker"
    folder.mkdir()
    torch.manual_seed(0)
    save_file(Shallow(48, width=4).state_dict(), folder / "ranker.safetensors")
    (folder / "ranker.json").write_text(json.dumps(GOOD))
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    return folder, image


@pytest.mark.parametrize("fields, message", [
    ({"crop": True}, r"'crop' must be an integer from 48 to 1,024, got true"),
    ({"crop": 48.0}, r"'crop' must be an integer from 48 to 1,024, got 48.0"),
    ({"crop": 10 ** 30}, r"'crop' must be an integer from 48 to 1,024, got 1000000000000000000000000000000"),
    ({"crop": 40}, r"'crop' must be an integer from 48 to 1,024, got 40"),
    ({"width": -4}, r"'width' must be an integer from 1 to 1,024, got -4"),
    ({"width": "4"}, r"'width' must be an integer from 1 to 1,024, got \"4\""),
    ({"width": None}, r"'width' must be an integer from 1 to 1,024, got null"),
    ({"steps": [3]}, r"'steps' must be an integer"),
    ({"kinds": ["fog"]}, r"'kinds' must be a list of distinct distortions"),
    ({"last_loss": -1}, r"'last_loss' must be a finite loss >= 0"),
    ({"version": 2}, r"'version' must be an integer from 1 to 1, got 2"),
    ({"extra": 1}, r"field 'extra' is not one rank train writes"),
    ({"crop": 1024, "width": 1024}, r"4,049,633,281 parameters \(15.1 GiB\), more than the 1 GiB a ranker may take"),
    ({"width": 64}, r"ranker weights .* is 2,476 bytes, but the 79,873 float32 parameters .* the ranker is corrupt"),
])
def test_rank_score_refuses_a_forged_description_in_one_line_naming_the_file_and_the_field(ranker, capsys, fields,
                                                                                         message):
    folder, image = ranker
    description = {**GOOD, **fields}
    (folder / "ranker.json").write_text(json.dumps(description))
    assert main(["rank", "score", "--model", str(folder), str(image)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error and str(folder) in error, error
    assert re.search(message, error), error


def test_rank_score_refuses_a_missing_field_and_a_batch_too_large_before_building(ranker, capsys):
    folder, image = ranker
    (folder / "ranker.json").write_text(json.dumps({k: v for k, v in GOOD.items() if k != "width"}))
    assert main(["rank", "score", "--model", str(folder), str(image)]) == 2
    assert "'width' must be an integer from 1 to 1,024, got missing" in capsys.readouterr().err
    (folder / "ranker.json").write_text(json.dumps({**GOOD, "crop": 1024, "width": 32}))
    assert main(["rank", "score", "--model", str(folder), str(image), "--crops", "64"]) == 2
    error = capsys.readouterr().err
    assert "scoring --crops 64 crops" in error and "more than the 2 GiB cap; pass at most --crops" in error, error
    (folder / "ranker.json").write_text(json.dumps(GOOD))
    assert main(["rank", "score", "--model", str(folder), str(image), "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)[str(image)])
