"""The .ncz container: exact round trips (every dtype, BatchNorm, fp16/bf16), honest sizes, hostile files refused."""

import json
import os
import struct
import zlib

import pytest
import torch
from torch import nn

import netcompress as nc
from conftest import SmallNet
from netcompress.quantize.uniform import uniform
from netcompress.storage.container import MAGIC, VERSION
from netcompress.storage.tables import format_storage_table

GROUPS = {"conv1": 9, "conv2": 8, "fc1": 32, "fc2": 8}  # a divisor of each layer's inputs per row
PIPELINES = {
    "plain": [],
    "pruned": [dict(method="magnitude", sparsity=0.8)],
    "pruned+kmeans": [dict(method="magnitude", sparsity=0.8), dict(method="kmeans", bits=5)],
    "group-uniform": [dict(method="uniform", bits=3, granularity="group", group_size=GROUPS)],
    "asymmetric-tensor": [dict(method="uniform", bits=4, granularity="tensor", symmetric=False)],
    "pruned+uniform": [dict(method="magnitude", sparsity=0.7), dict(method="uniform", bits=4, symmetric=False)],
    "binary": [dict(method="binary")],
    "ternary+pruned": [dict(method="magnitude", sparsity=0.5), dict(method="ternary")],
    "dalr+kmeans": [dict(method="dalr", rank=2, layers=["fc1", "conv2"]), dict(method="kmeans", bits=4)],
}


def _compressed(steps, model=None):
    torch.manual_seed(0)
    model = SmallNet() if model is None else model
    x = torch.randn(8, 3, 8, 8)
    for step in steps:
        nc.compress(model, x, progress=False, **step)
    return model, x


def _assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_round_trip_is_bit_exact(name, tmp_path):
    model, x = _compressed(PIPELINES[name])
    path = tmp_path / "m.ncz"
    size = nc.save_compressed(model, path)
    assert size == os.path.getsize(path)
    fresh = nc.load_compressed(SmallNet(), path)
    _assert_same_state(model, fresh)
    assert torch.equal(fresh(x), model(x))


class _Normed(nn.Module):
    """Conv → BatchNorm → linear, with extra buffers of every dtype the container stores."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.float64,
                      torch.complex64, torch.bfloat16):
            self.register_buffer(f"extra_{str(dtype)[6:]}", (torch.arange(6) % 3).to(dtype).reshape(2, 3))
        self.register_buffer("scalar", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("empty", torch.zeros(0, 3))

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


def test_batchnorm_and_every_buffer_dtype_round_trip(tmp_path):
    model = _Normed()
    model.train()
    model(torch.randn(16, 3, 8, 8))  # moves running statistics and num_batches_tracked (a 0-d int64)
    model.eval()
    nc.compress(model, method="uniform", bits=8, layers=["conv", "fc"], progress=False)
    nc.save_compressed(model, tmp_path / "m.ncz")
    fresh = nc.load_compressed(_Normed().eval(), tmp_path / "m.ncz")
    _assert_same_state(model, fresh)
    assert int(fresh.norm.num_batches_tracked) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_stay_half_precision(dtype, tmp_path):
    torch.manual_seed(0)
    model = SmallNet().to(dtype)
    nc.compress(model, method="magnitude", sparsity=0.5, layers=["fc1"], progress=False)
    nc.compress(model, method="uniform", bits=4, layers=["conv1", "conv2", "fc2"], progress=False)
    nc.save_compressed(model, tmp_path / "m.ncz")
    fresh = nc.load_compressed(SmallNet().to(dtype), tmp_path / "m.ncz")
    _assert_same_state(model, fresh)
    assert {p.dtype for p in fresh.parameters()} == {dtype}
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    assert torch.equal(fresh(x), model(x))
    # A float32 model given to load takes the file's dtypes too, so it runs in half precision.
    loaded = nc.load_compressed(SmallNet(), tmp_path / "m.ncz")
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert torch.equal(loaded(x), model(x))


def test_per_channel_8_bit_stores_codes_and_scales_not_codebooks(tmp_path):
    model, x = _compressed([dict(method="uniform", bits=8)])
    size = nc.save_compressed(model, tmp_path / "m.ncz")
    dense = 4 * sum(p.numel() for p in SmallNet().parameters())
    assert size < dense / 3.5
    rows = {r["layer"]: r for r in nc.storage_table(tmp_path / "m.ncz")}
    for name, layer in SmallNet().named_children():
        weights, per_row = layer.weight.numel(), layer.weight[0].numel()
        # codes (≤ 8 bits) + one float32 scale per row + float32 bias, no 256-entry codebooks
        assert rows[name]["bytes"] <= weights + 4 * layer.weight.shape[0] * 2 + 16, name
        assert rows[name]["weight_bits_pq"] == 8
        assert model.get_submodule(name).bits == pytest.approx(8 + 16 / per_row)  # save's float16 scales
    assert "bytes" in format_storage_table(list(rows.values()), size)


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


def test_quantized_embeddings_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16, padding_idx=0), nn.Linear(16, 4))
    model[0] = uniform(model[0], bits=4, granularity="group", group_size=8)
    nc.save_compressed(model, tmp_path / "m.ncz")
    fresh = nc.load_compressed(nn.Sequential(nn.Embedding(50, 16, padding_idx=0), nn.Linear(16, 4)), tmp_path / "m.ncz")
    _assert_same_state(model, fresh)
    tokens = torch.randint(0, 50, (3, 7))
    assert torch.equal(fresh(tokens), model(tokens))


def _forge(path, edit):
    """Rewrite the header of ``path`` with ``edit(header)`` and a correct checksum."""
    data = path.read_bytes()
    (length,) = struct.unpack_from("<I", data, len(MAGIC) + 4)
    start = len(MAGIC) + 8
    header = json.loads(zlib.decompress(data[start:start + length]))
    edit(header)
    forged = zlib.compress(json.dumps(header).encode())
    body = MAGIC + struct.pack("<HHI", VERSION, 0, len(forged)) + forged + data[start + length:-4]
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))


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
    with pytest.raises(ValueError, match="cannot be read"):
        nc.load_compressed(SmallNet(), tmp_path / "missing.ncz")


def test_a_valid_checksum_over_a_lying_header_is_still_refused(tmp_path):
    model, _ = _compressed(PIPELINES["pruned+kmeans"])
    path = tmp_path / "m.ncz"
    nc.save_compressed(model, path)

    def past_the_end(header):
        header["tensors"][0]["index"]["blob"][1] += 10 ** 9

    _forge(path, past_the_end)
    with pytest.raises(ValueError, match="lies outside the file"):
        nc.load_compressed(SmallNet(), path)


def test_a_failed_load_leaves_the_model_exactly_as_it_was(tmp_path):
    model, _ = _compressed(PIPELINES["pruned+kmeans"])
    path = tmp_path / "m.ncz"
    nc.save_compressed(model, path)

    def break_the_last_codes(header):  # passes every header check; fails only while decoding the last layer
        sparse = [r for r in header["tensors"] if r["encoding"] == "sparse-codes"]
        sparse[-1]["codes"] = sparse[0]["codes"]  # fewer codes than the last layer keeps

    _forge(path, break_the_last_codes)
    fresh = SmallNet()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    kinds = {n: type(m) for n, m in fresh.named_modules()}
    with pytest.raises(ValueError, match="corrupt: tensor 'fc2.codes'.* values for"):
        nc.load_compressed(fresh, path)
    assert {n: type(m) for n, m in fresh.named_modules()} == kinds
    after = fresh.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_nothing_is_left_when_writing_fails(tmp_path):
    model = SmallNet()
    model.fc1.register_buffer("odd", torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8))
    with pytest.raises(ValueError, match="does not store"):
        nc.save_compressed(model, tmp_path / "m.ncz")
    assert list(tmp_path.iterdir()) == []


def test_save_compressed_never_replaces_a_file_it_did_not_write(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="not a netcompress container"):
        nc.save_compressed(model, notes)
    assert notes.read_text() == "mine"
    first = nc.save_compressed(model, tmp_path / "m.ncz")
    assert nc.save_compressed(model, tmp_path / "m.ncz") == first  # its own file is replaced
    nc.save_compressed(model, notes, overwrite=True)
    assert notes.read_bytes().startswith(MAGIC)
