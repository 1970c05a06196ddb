"""Storage: the .ncz container against float32 safetensors, zipped and zstd-compressed, and the coder's speed.

Uses the two networks of ``python -m experiments deep-compression`` (LeNet-300-100 and
LeNet-5 trained on the real MNIST subset, pruned, k-means quantized, fine-tuned).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import zstandard
from experiments.deep_compression import NETWORKS, run
from safetensors.torch import save

from _common import print_table
from netcompress.storage.codec import code_lengths, huffman_decode, huffman_encode
from netcompress.storage.container import load_compressed


def dense_safetensors(model) -> bytes:
    """The dense float32 weights the compressed model stands for, as safetensors."""
    state = {}
    for name, module in model.named_modules():
        if hasattr(module, "weight") and module.weight is not None and not list(module.children()):
            state[f"{name}.weight"] = module.weight.detach().float().contiguous()
            if getattr(module, "bias", None) is not None:
                state[f"{name}.bias"] = module.bias.detach().float().contiguous()
    return save(state)


def zipped(payload: bytes) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("model.safetensors", payload)
    return len(buffer.getvalue())


def coder_speed(symbols: np.ndarray) -> tuple[float, float]:
    """Huffman encode and decode throughput in millions of symbols per second."""
    lengths = code_lengths(np.bincount(symbols))
    start = time.perf_counter()
    payload, bits = huffman_encode(symbols, lengths)
    encode = time.perf_counter() - start
    start = time.perf_counter()
    decoded = huffman_decode(payload, bits, len(symbols), lengths)
    decode = time.perf_counter() - start
    assert np.array_equal(decoded, symbols)
    return len(symbols) / encode / 1e6, len(symbols) / decode / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="reuse or keep the demo's output directory")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="netcompress-storage-"))
    if not (out / "results.json").exists():
        run(out, echo=lambda *_: None)
    rows = []
    for name, (cls, *_rest) in NETWORKS.items():
        model = load_compressed(cls(), out / f"{name}.ncz")
        dense = dense_safetensors(model)
        ncz = (out / f"{name}.ncz").stat().st_size
        rows.append([name, f"{len(dense):,}", f"{zipped(dense):,}",
                     f"{len(zstandard.ZstdCompressor(level=19).compress(dense)):,}", f"{ncz:,}",
                     f"{len(dense) / ncz:.1f}×"])
    print("Bytes on disk of the same pruned and quantized weights\n")
    print_table(["network", "fp32 safetensors", "zip (deflate 9)", "zstd -19", ".ncz", "safetensors / .ncz"], rows)

    rng = np.random.default_rng(0)
    symbols = rng.choice(32, size=1_000_000, p=np.exp(-np.arange(32) / 6) / np.exp(-np.arange(32) / 6).sum())
    encode, decode = coder_speed(symbols)
    print(f"\nHuffman coder on 1,000,000 symbols of a 32-letter alphabet: encode {encode:.1f} M symbols/s, "
          f"decode {decode:.1f} M symbols/s")


if __name__ == "__main__":
    main()
