"""Hostile .ncz files: forged and mutated headers (checksum recomputed) are refused with ValueError under a memory cap.

Everything runs in one subprocess whose address space is capped with ``resource.setrlimit``
(``RLIMIT_AS``), so an allocation driven by a forged count, shape or stream ends the run with
``MemoryError`` instead of exhausting the machine; the test fails on anything but ``ValueError``.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_capped

resource = pytest.importorskip("resource")


SCRIPT = textwrap.dedent(r"""
    import copy, json, random, resource, struct, sys, zlib
    import torch
    from torch import nn
    import netcompress as nc
    from netcompress.storage._header import MAGIC, VERSION

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.BatchNorm2d(8)
            self.fc1 = nn.Linear(8 * 4 * 4, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.norm(self.conv(x)))
            return self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))))

    model = Net().eval()
    nc.compress(model, method="magnitude", sparsity=0.7, layers=["fc1", "conv"], progress=False)
    nc.compress(model, method="kmeans", bits=4, layers=["fc1"], progress=False)
    nc.compress(model, method="uniform", bits=4, granularity="group", group_size=8, layers=["fc2"], progress=False)
    path = __PATH__
    nc.save_compressed(model, path)
    data = open(path, "rb").read()
    (length,) = struct.unpack_from("<I", data, len(MAGIC) + 4)
    start = len(MAGIC) + 8
    HEADER = json.loads(zlib.decompress(data[start:start + length]))
    PAYLOAD = data[start + length:-4]

    def write(header_bytes, payload=PAYLOAD, compressed=False):
        blob = header_bytes if compressed else zlib.compress(header_bytes, 1)
        body = MAGIC + struct.pack("<HHI", VERSION, 0, len(blob)) + blob + payload
        with open(path, "wb") as f:
            f.write(body + struct.pack("<I", zlib.crc32(body)))

    def refused(label):
        fresh = Net().eval()
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        try:
            nc.load_compressed(fresh, path)
        except ValueError:
            after = fresh.state_dict()
            if before.keys() != after.keys() or any(not torch.equal(before[k], after[k]) for k in before):
                print(f"{label}: the model changed although loading failed"); sys.exit(1)
            return
        except BaseException as error:
            print(f"{label}: {type(error).__name__}: {str(error)[:300]}"); sys.exit(1)
        print(f"{label}: was accepted"); sys.exit(1)

    def forged(label, edit, payload=PAYLOAD):
        header = copy.deepcopy(HEADER)
        edit(header)
        write(json.dumps(header).encode(), payload)
        refused(label)

    def record(header, name):
        return next(r for r in header["tensors"] if r["name"] == name)

    def setter(name, *path_and_value):
        *keys, value = path_and_value
        def edit(header):
            target = record(header, name)
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value
        return edit

    sparse = "fc1.codes"      # sparse-codes (pruned + k-means)
    dense = "fc2.codes"       # codes (uniform)
    floats = "conv.weight"    # sparse-float (pruned)
    raw = "fc2.bias"
    end = len(PAYLOAD)
    # Targeted forgeries: every count, shape, rank, span and length.
    forged("count 2^28", setter(dense, "codes", "count", 1 << 28))
    forged("shape 1e10 raw", setter(raw, "shape", [10 ** 10]))
    forged("shape 1e10 codes", setter(dense, "shape", [10 ** 5, 10 ** 5]))
    forged("shape 1e10 sparse", setter(sparse, "shape", [10 ** 5, 10 ** 5]))
    forged("shape 1e10 sparse float", setter(floats, "shape", [10 ** 5, 10 ** 5]))
    forged("rank 9", setter(raw, "shape", [1] * 9))
    forged("negative dimension", setter(raw, "shape", [-10]))
    forged("float dimension", setter(raw, "shape", [10.5]))
    forged("huge index count", setter(sparse, "index", "count", 1 << 40))
    forged("huffman bits past blob", setter(sparse, "codes", "bits", 1 << 30))
    forged("span past end", setter(raw, "blob", [0, end + 1]))
    forged("negative span", setter(raw, "blob", [-4, 40]))
    forged("boolean span", setter(raw, "blob", [True, 40]))
    forged("unknown dtype", setter(raw, "dtype", "float128"))
    forged("unknown encoding", setter(raw, "encoding", "lzma"))
    forged("levels 1000", setter(dense, "levels", 1000))
    forged("index bits 40", setter(sparse, "index_bits", 40))
    forged("width 0", setter(dense, "codes", "width", 0))
    forged("mask before its tensor", lambda h: h["tensors"].insert(0, copy.deepcopy(record(h, "fc1.mask"))))
    forged("duplicate record", lambda h: h["tensors"].append(copy.deepcopy(h["tensors"][0])))
    forged("missing record", lambda h: h["tensors"].pop())
    forged("2^21 records", lambda h: h.update(tensors=[{}] * (1 << 21)))
    forged("no tensors", lambda h: h.pop("tensors"))
    forged("manifest rank 2^24", lambda h: h["manifest"]["layers"].update(
        fc2={"type": "LowRankLinear", "in_features": 1 << 24, "out_features": 1 << 24, "rank": 1 << 24, "bias": True}))
    forged("manifest 2^31-element layer", lambda h: h["manifest"]["layers"].update(
        fc2={"type": "Linear", "in_features": 1 << 16, "out_features": 1 << 15, "bias": True}))
    forged("manifest embedding 1e10", lambda h: h["manifest"]["layers"].update(
        fc2={"type": "QuantizedEmbedding", "num_embeddings": 1 << 24, "embedding_dim": 1 << 10, "padding_idx": None,
             "scheme": "symmetric", "bits": 4, "levels": 16, "group_size": 8, "codebook_rows": 1, "per_tensor": False}))
    forged("manifest group size", lambda h: h["manifest"]["layers"]["fc2"].update(group_size=7))
    forged("manifest bits 9", lambda h: h["manifest"]["layers"]["fc2"].update(bits=9, levels=512))
    # Streams that lie about their own bytes (payload appended, spans pointed at it).
    kraft = bytes([1] * 16)  # sixteen 1-bit codes: not a prefix code
    def bad_lengths(h):
        r = record(h, sparse)
        r["codes"]["lengths"] = [end, 16]
        r["codes"]["alphabet"] = 16
    forged("lengths break Kraft", bad_lengths, PAYLOAD + kraft)
    def truncated_huffman(h):
        r = record(h, sparse)
        if r["codes"]["coder"] == "huffman":
            r["codes"]["bits"] -= 8
            r["codes"]["blob"][1] -= 1
        else:
            r["codes"]["count"] += 9
    forged("truncated stream", truncated_huffman)
    def short_packed(h):
        r = record(h, dense)
        r["codes"].update(coder="packed", width=4, count=r["codes"]["count"])
        r["codes"]["blob"] = [0, r["codes"]["count"] // 2 - 1]
    forged("short packed stream", short_packed)
    def index_past_end(h):  # a stream of skips that runs past the tensor
        r = record(h, sparse)
        r["index"] = {"coder": "packed", "count": 64, "width": r["index_bits"] + 1,
                      "alphabet": (1 << r["index_bits"]) + 1, "blob": [end, 64 * (r["index_bits"] + 1) // 8]}
    forged("index stream past the tensor", index_past_end, PAYLOAD + b"\xff" * 64)
    # Decompression bomb and malformed JSON.
    write(zlib.compress(json.dumps(HEADER).encode() + b" " * (80 << 20), 1), compressed=True)
    refused("zlib bomb")
    write(b"[" * 200000 + b"]" * 200000)
    refused("deep nesting")
    write(b"\xff\xfe not json")
    refused("not json")
    write(b"not zlib at all", compressed=True)
    refused("not zlib")
    # Seeded random mutations of every field of every record.
    rng = random.Random(__SEED__)
    values = [-1, 0, 1, 2 ** 28, 2 ** 62, 10 ** 10, 1.5, "x", None, [], {}, True, [0, 2 ** 40], [1] * 9]
    def paths(obj, prefix=()):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(obj, list) and obj and len(obj) <= 8:
            for i, v in enumerate(obj):
                yield from paths(v, prefix + (i,))
        yield prefix
    fields = [(i, *p) for i, r in enumerate(HEADER["tensors"]) for p in paths(r) if p]
    for trial in range(__TRIALS__):
        header = copy.deepcopy(HEADER)
        for _ in range(rng.randint(1, 3)):
            where = rng.choice(fields)
            target = header["tensors"]
            try:
                for key in where[:-1]:
                    target = target[key]
                target[where[-1]] = rng.choice(values)
            except (KeyError, IndexError, TypeError):
                pass
        if header == HEADER:
            continue
        write(json.dumps(header).encode())
        fresh = Net().eval()
        try:
            nc.load_compressed(fresh, path)
        except ValueError:
            pass
        except BaseException as error:
            import traceback; traceback.print_exc()
            print(f"mutation {trial}: {type(error).__name__}: {str(error)[:300]}"); sys.exit(1)
    # Random byte flips without a new checksum: always the checksum.
    for trial in range(50):
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        open(path, "wb").write(bytes(flipped))
        refused(f"flip {trial}")
    print("ok", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _run(tmp_path: Path, seed: int, trials: int) -> subprocess.CompletedProcess:
    return run_capped(SCRIPT, path=str(tmp_path / "f.ncz"), seed=seed, trials=trials)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS caps memory reliably only on Linux")
def test_forged_and_mutated_files_are_refused_under_a_memory_cap(tmp_path):
    result = _run(tmp_path, seed=20240601, trials=300)
    assert result.returncode == 0 and result.stdout.startswith("ok"), (result.stdout + result.stderr)[-3000:]


MEMORY_SCRIPT = textwrap.dedent(r"""
    import gc, resource, sys
    import torch
    from torch import nn
    import netcompress as nc
    from netcompress.quantize import QuantizedLinear

    def build():
        return nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 1024))

    if sys.argv[1] == "save":
        torch.manual_seed(0)
        model = build()
        for i in (0, 1):  # quantized layers with random 8-bit codes (no search needed to test the container)
            q = QuantizedLinear(1024, 1024, bits=8)
            q.codes.random_(0, 256)
            model[i] = q
        nc.save_compressed(model, sys.argv[2])
    else:
        import threading
        # Warm up on a tiny file, so that lazily imported code does not count as memory for loading.
        tiny = nn.Sequential(QuantizedLinear(4, 4, bits=8))
        nc.save_compressed(tiny, sys.argv[2] + ".tiny")
        nc.load_compressed(nn.Sequential(nn.Linear(4, 4)), sys.argv[2] + ".tiny")
        model = build()
        dense = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        gc.collect()

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

        baseline, peak, done = rss(), [0], threading.Event()

        def watch():  # the resident set sampled while loading (ru_maxrss would count earlier peaks)
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                done.wait(0.0005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        nc.load_compressed(model, sys.argv[2])
        done.set()
        watcher.join()
        print((max(peak[0], rss()) - baseline) / dense)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the resident set size")
def test_loading_needs_at_most_about_twice_the_model(tmp_path):
    path = str(tmp_path / "m.ncz")
    subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "save", path], check=True, timeout=120)
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "load", path], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # The undo snapshot is one copy of the fresh model; the decoded tensors replace, not add to, the model.
    assert float(result.stdout.split()[-1]) <= 2.0, result.stdout
