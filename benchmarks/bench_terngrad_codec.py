"""What TernGrad's encoding costs per step: ternarise + pack, and unpack + decode, of one DDP bucket.

DDP hands the hook buckets of about 25 MB (6.5 M float32 gradients); this times the work the hook
adds around the all-gather for such buckets, on the CPU (2 cores here) and on a GPU where present,
as the median of repeated runs after warm-up (CUDA synchronised).

    python benchmarks/bench_terngrad_codec.py [--values 6553600] [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import print_table
from netcompress.distributed import decode, pack, ternarize, unpack


def _median_seconds(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(device: torch.device, values: int, repeat: int) -> list[str]:
    grad = torch.randn(values, generator=torch.Generator().manual_seed(0)).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    codes, scale = ternarize(grad, generator)
    packed = pack(codes)
    encode = _median_seconds(lambda: pack(ternarize(grad, generator)[0]), device, repeat)
    decode_time = _median_seconds(lambda: decode(unpack(packed, values), scale), device, repeat)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return [name, f"{values:,}", f"{1e3 * encode:.2f}", f"{1e3 * decode_time:.2f}",
            f"{4 * values / packed.numel():.1f}×"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=25 * 2**20 // 4, help="gradients in the bucket (25 MiB)")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    rows = [measure(torch.device("cpu"), args.values, args.repeat)]
    if torch.cuda.is_available():
        rows.append(measure(torch.device("cuda"), args.values, args.repeat))
    print_table(["device", "gradients", "ternarise + pack ms", "unpack + decode ms", "smaller than float32"], rows)


if __name__ == "__main__":
    main()
