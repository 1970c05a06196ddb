"""Inputs a user hands in: only regular files are opened, and every data header is checked before allocation.

Issue 22: a named pipe where a file was expected (in an image folder, as a recipe, data or
container) blocked forever; a data file whose header declares 10¹⁰ floats was reported as
"ran out of memory" instead of a corrupt file.
"""

import os
import signal
import struct
import zipfile

import numpy as np
import pytest
import torch

import netcompress as nc
from conftest import SmallNet
from netcompress.cli import main
from netcompress.cli.inputs import read_data, read_labels, read_weights

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")


@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) when a call blocks for more than 10 s."""
    def expired(signum, frame):
        raise TimeoutError("blocked on a special file")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["x.pt", "x.npy", "x.npz"])
def test_a_named_pipe_as_data_is_refused_without_blocking(tmp_path, deadline, name):
    with pytest.raises(ValueError, match=rf"data file .*{name} is a named pipe, not a regular file"):
        read_data(_fifo(tmp_path / name))


def test_a_named_pipe_in_an_image_folder_is_refused_without_blocking(tmp_path, deadline):
    pytest.importorskip("PIL")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    _fifo(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"image .*b.png is a named pipe, not a regular file"):
        read_data(tmp_path)


def test_a_named_pipe_as_recipe_container_weights_or_manifest_is_refused_without_blocking(tmp_path, deadline):
    with pytest.raises(ValueError, match=r"recipe .*r.yaml is a named pipe"):
        nc.read_recipe(_fifo(tmp_path / "r.yaml"))
    with pytest.raises(ValueError, match=r"\.ncz file .*m.ncz is a named pipe"):
        nc.load_compressed(SmallNet(), _fifo(tmp_path / "m.ncz"))
    with pytest.raises(ValueError, match=r"weights .*w.safetensors is a named pipe"):
        read_weights(_fifo(tmp_path / "w.safetensors"))
    (tmp_path / "out").mkdir()
    _fifo(tmp_path / "out" / "manifest.json")
    with pytest.raises(ValueError, match="has no manifest.json"):
        nc.load(SmallNet(), tmp_path / "out")


def test_the_cli_answers_a_named_pipe_in_one_line(tmp_path, deadline, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fifo(tmp_path / "data.npy")
    code = main(["compress", "--allow-degraded", "--model", f"{__file__}:SmallNet", "--data", "data.npy", "--rank", "2", "-o", "out"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "data.npy is a named pipe" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _npy_declaring(path, shape, payload=b"\0" * 64):
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)
    return path


def test_a_data_file_declaring_ten_billion_floats_is_corrupt_not_out_of_memory(tmp_path):
    with pytest.raises(ValueError, match=r"declares 10,000,000,000 values .* the file is corrupt"):
        read_data(_npy_declaring(tmp_path / "x.npy", (10_000_000_000,)))
    with pytest.raises(ValueError, match=r"is corrupt: its header declares 4,000,000 bytes of data, but it holds 64"):
        read_data(_npy_declaring(tmp_path / "y.npy", (1000, 1000)))
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as archive:
        archive.writestr("x.npy", (_npy_declaring(tmp_path / "inner.npy", (5000, 5000))).read_bytes())
        archive.writestr("y.npy", (_npy_declaring(tmp_path / "inner.npy", (5000, 5000))).read_bytes())
    with pytest.raises(ValueError, match=r"array 'x' declares 100,000,000 bytes of data, but holds 64"):
        read_data(tmp_path / "z.npz")
    with pytest.raises(ValueError, match=r"array 'x' declares 100,000,000 bytes"):
        read_labels(None, tmp_path / "z.npz", 4)


def test_real_arrays_still_read_exactly(tmp_path):
    x = np.random.default_rng(0).standard_normal((7, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x, y=np.arange(7))
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    for name in ("x.npy", "x.npz", "x.pt"):
        assert torch.equal(read_data(tmp_path / name), torch.from_numpy(x)), name
    assert torch.equal(read_labels(None, tmp_path / "x.npz", 7), torch.arange(7))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused_not_read_without_end(deadline):
    with pytest.raises(ValueError, match="weights /dev/zero is a device, not a regular file"):
        read_weights("/dev/zero")


def test_a_forged_statistics_file_is_one_sentence(tmp_path, deadline):
    from safetensors.torch import load_file, save_file

    model = SmallNet().eval()
    stats = nc.collect(model, torch.randn(32, 3, 8, 8), progress=False)
    stats.save(tmp_path / "s.safetensors")
    again = nc.LayerStats.load(tmp_path / "s.safetensors")
    assert torch.equal(again["fc1"].gram, stats["fc1"].gram) and again["fc1"].count == stats["fc1"].count
    tensors, metadata = load_file(tmp_path / "s.safetensors"), {"format": "netcompress.stats.collect"}
    for change, message in [
        (lambda t: t.update({"fit/fc1/gram": torch.zeros(3, 3, dtype=torch.float64)}),
         r"layer 'fc1' \(fit\) is corrupt: 'gram' must be finite float64 of shape \(3, 3\)|'input_sum' must be"),
        (lambda t: t.update({"fit/fc1/counts": torch.tensor([-1, 0, 1])}), "'counts' must be 3 non-negative integers"),
        (lambda t: t.pop("fit/fc1/norm4"), "is corrupt: it must hold"),
        (lambda t: t.update({"elsewhere": torch.zeros(1)}), "tensor 'elsewhere' is not"),
    ]:
        forged = dict(tensors)
        change(forged)
        save_file(forged, tmp_path / "f.safetensors", metadata=metadata)
        with pytest.raises(ValueError, match=message):
            nc.LayerStats.load(tmp_path / "f.safetensors")
    with pytest.raises(ValueError, match="statistics file .* is a named pipe"):
        nc.LayerStats.load(_fifo(tmp_path / "p.safetensors"))


def test_a_file_or_pipe_where_an_output_directory_is_expected_is_named_as_such(tmp_path, deadline):
    model = SmallNet().eval()
    out = nc.save(model, tmp_path / "out", nc.compress(model, torch.randn(8, 3, 8, 8), rank=2, progress=False))
    with pytest.raises(ValueError, match=r"report.json is not a directory; pass the directory netcompress.save wrote"):
        nc.read_report(out / "report.json")  # before: "…/report.json holds no report.json"
    with pytest.raises(ValueError, match=r"p is not a directory"):
        nc.read_report(_fifo(tmp_path / "p"))
