import os
import struct

import pytest
import torch

import netcompress as nc
from conftest import SmallNet
from netcompress.container import MAGIC, format_storage_table

PIPELINES = {
    "plain": [],
    "pruned": [dict(method="magnitude", sparsity=0.8)],
    "pruned+kmeans": [dict(method="magnitude", sparsity=0.8), dict(method="kmeans", bits=5)],
    "group-uniform": [dict(method="uniform", bits=3, granularity="group", group_size=4)],
    "binary": [dict(method="binary")],
    "ternary+pruned": [dict(method="magnitude", sparsity=0.5), dict(method="ternary")],
    "dalr+kmeans": [dict(method="dalr", rank=2, layers=["fc1", "conv2"]), dict(method="kmeans", bits=4)],
}


def _compressed(steps):
    torch.manual_seed(0)
    model = SmallNet()
    x = torch.randn(8, 3, 8, 8)
    for step in steps:
        nc.compress(model, x, progress=False, **step)
    return model, x


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_round_trip_is_bit_exact(name, tmp_path):
    model, x = _compressed(PIPELINES[name])
    path = tmp_path / "m.ncz"
    size = nc.save_compressed(model, path)
    assert size == os.path.getsize(path)
    fresh = nc.load_compressed(SmallNet(), path)
    original, loaded = model.state_dict(), fresh.state_dict()
    assert original.keys() == loaded.keys()
    for key in original:
        assert original[key].dtype == loaded[key].dtype and torch.equal(original[key], loaded[key]), key
    assert torch.equal(fresh(x), model(x))


def test_pruned_and_quantized_file_is_much_smaller_than_float32(tmp_path):
    model, _ = _compressed(PIPELINES["pruned+kmeans"])
    size = nc.save_compressed(model, tmp_path / "m.ncz")
    dense = 4 * sum(p.numel() for p in SmallNet().parameters())
    assert size < dense / 10
    rows = nc.storage_table(tmp_path / "m.ncz")
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc1", "fc2"]
    for r in rows:
        assert r["kept_percent"] == pytest.approx(20, abs=1)
        kept = r["weights"] * r["kept_percent"] / 100
        assert r["weight_bits_pq"] == 5 and r["weight_bits_pqh"] * kept <= 5 * kept + 8  # at most a byte of padding
    assert "compress rate (P+Q+H)" in format_storage_table(rows, size)


def test_damaged_or_foreign_files_are_refused(tmp_path):
    model, _ = _compressed(PIPELINES["pruned+kmeans"])
    path = tmp_path / "m.ncz"
    nc.save_compressed(model, path)
    data = path.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "checksum does not match"),
        "flipped": (data[:200] + bytes([data[200] ^ 1]) + data[201:], "checksum does not match"),
        "foreign": (b"PK\x03\x04" + data[4:], "not a netcompress container"),
        "empty": (b"", "not a netcompress container"),
        "future": (MAGIC + struct.pack("<HHI", 9, 0, 0) + data[len(MAGIC) + 8:], "container version 9"),
    }
    for label, (payload, message) in cases.items():
        (tmp_path / f"{label}.ncz").write_bytes(payload)
        with pytest.raises(ValueError, match=message):
            nc.load_compressed(SmallNet(), tmp_path / f"{label}.ncz")


def test_a_valid_checksum_over_a_lying_header_is_still_refused(tmp_path):
    import json
    import zlib

    model, _ = _compressed(PIPELINES["pruned+kmeans"])
    path = tmp_path / "m.ncz"
    nc.save_compressed(model, path)
    data = path.read_bytes()
    start = len(MAGIC) + 8
    (length,) = struct.unpack_from("<I", data, len(MAGIC) + 4)
    header = json.loads(zlib.decompress(data[start:start + length]))
    header["tensors"][0]["index"]["blob"][1] += 10 ** 9  # points past the end of the file
    forged = zlib.compress(json.dumps(header).encode())
    body = MAGIC + struct.pack("<HHI", 1, 0, len(forged)) + forged + data[start + length:-4]
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(ValueError, match="lies outside the file"):
        nc.load_compressed(SmallNet(), path)


def test_nothing_is_left_when_writing_fails(tmp_path):
    model = SmallNet().to(torch.float64)
    model.fc1.register_buffer("odd", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="does not store"):
        nc.save_compressed(model, tmp_path / "m.ncz")
    assert list(tmp_path.iterdir()) == []
