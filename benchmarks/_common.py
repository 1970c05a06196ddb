"""Helpers shared by the benchmark scripts (timing, tables, one run per subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def best_time(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def trained(network: str, seed: int = 0):
    """A reference network trained on real data: ("lenet5", MNIST split) or ("widemlp-digits", UCI digits split).

    ``widemlp-digits`` follows the domain-transfer demo: trained on MNIST, fine-tuned on UCI digits.
    """
    import torch
    from experiments.data import mnist, uci_digits
    from experiments.models import LeNet5, WideMLP

    from netcompress.distill.finetune import finetune

    torch.manual_seed(seed)
    if network == "lenet5":
        data = mnist(seed=seed)
        model = finetune(LeNet5(), (data.train_x, data.train_y), epochs=30, lr=2e-3, schedule="cosine",
                         weight_decay=1e-4, seed=seed, progress=False)
        return model, data
    source, target = mnist(seed=seed), uci_digits(seed=seed)
    model = finetune(WideMLP(), (source.train_x, source.train_y), epochs=10, lr=1e-3, seed=seed, progress=False)
    finetune(model, (target.train_x, target.train_y), epochs=10, lr=3e-4, seed=seed + 1, progress=False)
    return model, target


def run_child(command: Sequence[str], timeout: float, cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``command`` (a script printing ``RESULT <json>``) offline and without progress bars; its result.

    A failure becomes ``{"error": …}``: the timeout, or the last line of the child's stderr (and the
    signal that killed it, if one did), so one bad configuration shows as a row rather than ending the run.
    """
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", **(env or {}))
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=environment)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit status {done.returncode}"
    return {"error": (f"killed by signal {-done.returncode}; " if done.returncode < 0 else "") + reason[:200]}


def machine() -> str:
    """The CPU, its logical CPUs, torch and its threads: what a benchmark's timings belong to."""
    import platform

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
