"""Real CPU latency of compressed networks: which compressed forms actually run faster, and by how much.

Two real models, each dense and in every compressed form that netcompress (or torch) offers:

* the digits MLP (784-1024-1024-10, trained on MNIST and fine-tuned on UCI digits, as in
  ``_common.trained("widemlp-digits")``), compressed with its 1,000 training images as calibration
  data; quality is top-1 accuracy on the 797 held-out test digits;
* all-MiniLM-L6-v2 (sentence embeddings), calibrated on 128 English sentences from standard-library
  docstrings; quality is the mean cosine between the compressed and the dense model's sentence
  embeddings on 128 held-out sentences from other modules. Timing inputs are held-out sentences
  padded (or cut) to ``--seq-len`` tokens (default 32; the held-out sentences' median is 15 tokens).

Each row says how it runs. "real kernel": the compressed form is what the CPU executes (smaller
float32 GEMMs for low rank and structured pruning, int8 GEMMs for torch.ao dynamic quantization).
"simulated (dequantised weights)": netcompress's quantized layers rebuild a float32 weight from
their codes on every call (``uniform``, ``kmeans``), so those rows measure that overhead, not what
an integer kernel would gain.

"FLOPs" is the multiply-adds of the Linear layers (both factors of a low-rank layer) relative to
dense; attention's two batched matmuls and the embedding look-ups are not counted (about 1.4 % of
MiniLM's multiply-adds at 32 tokens). "speed-up" is dense latency / form latency; "÷ FLOPs gain" is
that speed-up divided by 1 / FLOPs ratio: 1.0 means latency fell exactly as much as the arithmetic.

Timing: ``torch.set_num_threads(--threads)`` (default 2), ``torch.inference_mode``, warm-up calls,
then rounds in which every form of a model runs in turn (the order rotating), so that load from
other processes falls on all forms alike; a latency is the median of all timed calls of that form
(``time.perf_counter``). Times depend on the machine and its load (the load average is printed
before and after); nothing is asserted. On a busy machine wall time also counts the time slices
other processes take, which hurts multi-threaded kernels and long calls most; ``--threads 1
--clock cpu`` times the CPU time the process itself spends instead (``time.process_time``: with
one thread that leaves out waiting for a core), a cross-check that load barely moves.
Writes ``results/latency.md`` (``--output``).

    python bench_latency.py [--quick] [--batch 64] [--seq-len 32] [--threads 2] [--clock wall|cpu] [--append]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import netcompress as nc
from _common import machine as _machine
from _common import print_table, trained
from netcompress.distill.finetune import accuracy
from netcompress.quantize.modules import QuantizedConv2d, QuantizedLinear

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latency.md"
THREADS = 2  # the default; --threads changes it
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
REAL, SIMULATED = "real kernel", "simulated (dequantised weights)"
WARMUP = 3  # calls per form before timing: the first calls allocate buffers and pick kernels
SLICE_S = 0.03  # seconds each form runs per round (at least one call)
ROUNDS, QUICK_ROUNDS = 15, 3
TARGET = 1.3  # the speed-up issue 10 asks at least one compressed form of each model to reach
SEED = 0
MARKDOWN_HEAD = """# CPU latency of compressed models

Written by `benchmarks/bench_latency.py`. The forms of a model are interleaved round by round and each
latency is the median of all timed calls. "FLOPs": Linear multiply-adds relative to dense; "÷ FLOPs gain":
speed-up × FLOPs ratio (1.0 = latency fell as much as the arithmetic). "real kernel": the compressed form
is what runs; "simulated (dequantised weights)": float32 weights are rebuilt from the codes on every call.
On a loaded machine, 2-thread wall-clock times also count other processes' time slices (worst for
multi-threaded kernels on short calls); a `--threads 1 --clock cpu` run counts only this process's own
CPU time.

"""

with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao, but ships with torch and runs
    warnings.simplefilter("ignore")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

LINEAR_KINDS = (nn.Linear, QuantizedLinear, DynamicInt8Linear)  # nn.Linear includes the low-rank factors
CONV_KINDS = (nn.Conv2d, QuantizedConv2d)


@dataclass
class Form:
    """One version of a model: how it was made, how it runs, the weights it stores and its quality."""

    name: str
    kernel: str
    model: nn.Module
    params: int
    quality: float
    macs: int = 0
    ms: dict[int, float] = field(default_factory=dict)  # batch → median latency
    runs: dict[int, int] = field(default_factory=dict)  # batch → timed calls


@dataclass
class Bench:
    """A model's forms, the inputs to time them on and what its quality column means."""

    title: str
    quality: str
    quality_format: str
    forms: list[Form]
    inputs: Callable[[int], Callable[[nn.Module], object]]  # batch size → a call of the model on that batch
    notes: list[str]


# --------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Say on stderr how long a step took, so that a slow run shows where its time went."""
    start = time.perf_counter()
    yield
    print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def multiply_adds(model: nn.Module, run: Callable[[nn.Module], object]) -> int:
    """Multiply-adds of the Linear/Conv2d layers (dense, factored, quantized or int8) in one ``run(model)``."""
    total = 0

    def count(module, args, output):
        nonlocal total
        if isinstance(module, LINEAR_KINDS):
            total += output.numel() * module.in_features
        else:
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kh * kw

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, LINEAR_KINDS + CONV_KINDS)]
    try:
        with torch.inference_mode():
            run(model)
    finally:
        for handle in handles:
            handle.remove()
    return total


def latencies(calls: dict[str, Callable[[], object]], rounds: int,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, tuple[float, int]]:
    """Median seconds per call and the number of timed calls, every form timed in turn in each round.

    Interleaving (rather than timing one form after the other) spreads the load of other processes
    over all forms, so the ratios between them stay meaningful on a shared machine.
    """
    names = list(calls)
    per_slice = {}
    with torch.inference_mode():
        for name in names:
            for _ in range(WARMUP):
                calls[name]()
            start = time.perf_counter()
            calls[name]()
            per_slice[name] = max(1, int(SLICE_S / max(time.perf_counter() - start, 1e-6)))
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:  # rotate which form runs first
                for _ in range(per_slice[name]):
                    start = clock()
                    calls[name]()
                    times[name].append(clock() - start)
    return {name: (statistics.median(t), len(t)) for name, t in times.items()}


def time_bench(bench: Bench, batches: tuple[int, ...], rounds: int, clock: Callable[[], float]) -> None:
    """Fill in each form's multiply-adds (per example) and median latency at each batch size."""
    for batch in batches:
        run = bench.inputs(batch)
        for form in bench.forms:
            if batch == batches[0]:
                form.macs = multiply_adds(form.model, run) // batch
        timed = latencies({form.name: (lambda m=form.model, run=run: run(m)) for form in bench.forms}, rounds,
                          clock)
        for form in bench.forms:
            form.ms[batch], form.runs[batch] = 1e3 * timed[form.name][0], timed[form.name][1]


# --------------------------------------------------------------------------- compressed forms


def int8_dynamic(model: nn.Module) -> nn.Module:
    """A copy whose nn.Linear layers run torch's int8 GEMM: int8 weights per output channel, activations per call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torch.ao deprecation notice
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def stored_params(model: nn.Module, report: nc.Report) -> int:
    """Weights a compressed model stores: the Report's count for its layers (quantized codes are buffers), the rest as is."""
    layers = tuple(row.name + "." for row in report.rows)
    rest = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(layers))
    return rest + report.params_after


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compressed(model: nn.Module, method: str, **settings) -> tuple[nn.Module, nc.Report]:
    """A compressed copy of ``model`` through the public API, with every random choice seeded."""
    torch.manual_seed(SEED)
    copied = copy.deepcopy(model)
    report = nc.compress(copied, method=method, progress=False, **settings)
    return copied.eval(), report


# --------------------------------------------------------------------------- the digits MLP


def digits_bench() -> Bench:
    """The trained digits MLP, dense and compressed, calibrated on its own training images."""
    with phase("digits MLP: training"):
        model, data = trained("widemlp-digits", seed=SEED)
    model.eval()
    calibration = data.train_x.split(250)

    def quality(m: nn.Module) -> float:
        with torch.inference_mode():
            return accuracy(m, data.test_x, data.test_y)

    with phase("digits MLP: compressing"):
        forms = [Form("dense float32", REAL, model, count_params(model), quality(model))]
        low, report = compressed(model, "dalr", data=calibration, budget=0.5)
        forms.append(Form("low rank (dalr, budget 0.5)", REAL, low, stored_params(low, report), quality(low)))
        # fc8's outputs are the model's outputs, so only fc6 and fc7 lose units (fc8 loses the matching inputs).
        pruned, report = compressed(model, "channel", data=calibration, sparsity=0.5, layers=["fc6", "fc7"])
        forms.append(Form("channel pruning (50 % of units)", REAL, pruned, stored_params(pruned, report),
                          quality(pruned)))
        forms += _int8_forms(model, low, quality)
        forms += _simulated_forms(model, quality, data=calibration)
    notes = [f"Calibration: the {len(data.train_x)} training images; quality: top-1 accuracy (%) on "
             f"the {len(data.test_x)} test images."]
    return Bench("digits MLP (784-1024-1024-10, UCI digits)", "test acc. %", ".2f", forms,
                 lambda batch: _call_on(data.test_x[:batch]), notes)


def _call_on(x: torch.Tensor) -> Callable[[nn.Module], object]:
    return lambda m: m(x)


def _int8_forms(model: nn.Module, low: nn.Module, quality: Callable[[nn.Module], float]) -> list[Form]:
    """torch.ao dynamic int8 of the dense model and of the low-rank one (its factors are plain nn.Linear)."""
    forms = []
    for name, source in (("int8 dynamic (torch.ao)", model), ("low rank + int8 dynamic", low)):
        quantized = int8_dynamic(source)
        forms.append(Form(name, REAL, quantized, count_params(source), quality(quantized)))
    return forms


def _simulated_forms(model: nn.Module, quality: Callable[[nn.Module], float], **settings) -> list[Form]:
    """netcompress's quantized layers: codes stored, float32 weights rebuilt on every call."""
    forms = []
    for name, method, extra in (("uniform 8-bit per channel", "uniform", {"bits": 8}),
                                ("k-means 4-bit", "kmeans", {"bits": 4, "seed": SEED})):
        quantized, report = compressed(model, method, **settings, **extra)
        forms.append(Form(name, SIMULATED, quantized, stored_params(quantized, report), quality(quantized)))
    return forms


# --------------------------------------------------------------------------- MiniLM


class FeedForward(nn.Module):
    """One BERT block's feed-forward half on token rows: intermediate → GELU → output → residual + LayerNorm.

    Shares its layers with the block, so pruning it prunes the model. Structured pruning gets this
    part on its own because torch.fx cannot trace the whole of MiniLM (see the notes of the table).
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.intermediate, self.output = block.intermediate, block.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(x), x)


class _Reached(Exception):
    """Stops a forward pass once the hidden states of interest have been recorded."""


def feed_forward_inputs(model: nn.Module, block: nn.Module, batches: list[dict]) -> torch.Tensor:
    """The hidden states entering ``block``'s feed-forward half, one row per real token (padding dropped)."""
    rows, mask = [], None

    def record(module, args):
        rows.append(args[0][mask].clone())
        raise _Reached  # the later blocks are not needed

    handle = block.intermediate.register_forward_pre_hook(record)
    try:
        with torch.inference_mode():
            for batch in batches:
                mask = batch["attention_mask"].bool()
                try:
                    model(**batch)
                except _Reached:
                    pass
    finally:
        handle.remove()
    return torch.cat(rows)


def prune_feed_forward(model: nn.Module, batches: list[dict], sparsity: float) -> tuple[nn.Module, int]:
    """Remove ``sparsity`` of the intermediate units of every block, one block after the other.

    Each block is calibrated on the hidden states the already-pruned blocks before it produce, so
    its least-squares re-fit corrects for their error too. Returns the model and its weight count.
    """
    pruned = copy.deepcopy(model)
    for block in pruned.encoder.layer:
        tokens = feed_forward_inputs(pruned, block, batches)
        torch.manual_seed(SEED)
        nc.compress(FeedForward(block), tokens.split(256), method="channel", sparsity=sparsity,
                    layers=["intermediate.dense"], progress=False)
    return pruned.eval(), count_params(pruned)


def _whole_model_refusal(model: nn.Module, batches: list[dict]) -> str | None:
    """Why ``channel`` pruning refuses the whole MiniLM (None if it accepts it: then prefer the whole model)."""
    try:
        compressed(model, "channel", data=batches[:1], sparsity=0.5, layers="re:.*intermediate\\.dense")
    except ValueError as error:
        return " ".join(str(error).split())
    return None


@dataclass
class MiniLM:
    """all-MiniLM-L6-v2 with its calibration batches, held-out quality and timing inputs."""

    model: nn.Module
    batches: list
    calibration: list[str]
    heldout: list[str]
    quality: Callable[[nn.Module], float]  # mean held-out sentence-embedding cosine to the dense model
    inputs: Callable[[int], Callable[[nn.Module], object]]  # batch → a call on that many padded sentences


def minilm_parts(quick: bool, seq_len: int) -> MiniLM:
    """The model, its calibration and held-out sentences (32 of each with ``quick``, else 128) and how to score it."""
    from experiments import real_models as rm

    model, tokenizer = rm.minilm()
    count = 32 if quick else 128
    calibration = rm.sentences("calibration", count, seed=SEED)
    heldout = rm.sentences("heldout", count, seed=SEED)
    reference = rm.embed(model, tokenizer, heldout)

    def quality(m: nn.Module) -> float:
        return rm.embedding_cosine(reference, rm.embed(m, tokenizer, heldout))

    def inputs(batch: int) -> Callable[[nn.Module], object]:
        texts = (heldout * (batch // len(heldout) + 1))[:batch]
        encoded = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len,
                                 return_tensors="pt"))
        return lambda m: m(**encoded)

    return MiniLM(model, rm.tokenize(tokenizer, calibration, batch_size=16), calibration, heldout, quality, inputs)


def minilm_bench(quick: bool, seq_len: int) -> Bench:
    """all-MiniLM-L6-v2, dense and compressed, calibrated on real English sentences."""
    parts = minilm_parts(quick, seq_len)
    model, batches, calibration, heldout = parts.model, parts.batches, parts.calibration, parts.heldout

    def quality(m: nn.Module) -> float:
        with torch.inference_mode():
            return parts.quality(m)

    # The 36 encoder Linear layers carry the arithmetic; the embedding look-ups and the pooler (one
    # 384×384 layer on the first token, not part of the sentence embedding) stay dense in every form.
    encoder = "re:^encoder\\..*"
    with phase("MiniLM: statistics and low rank"):
        stats = nc.collect(model, batches, layers=encoder, progress=False)  # one pass serves dalr, uniform, kmeans
        forms = [Form("dense float32", REAL, model, count_params(model), quality(model))]
        low, report = compressed(model, "dalr", stats=stats, budget=0.7, layers=encoder)
        forms.append(Form("low rank (dalr, budget 0.7 of encoder)", REAL, low, stored_params(low, report),
                          quality(low)))
    notes = []
    with phase("MiniLM: channel pruning"):
        refusal = _whole_model_refusal(model, batches)
        if refusal is None:
            pruned, report = compressed(model, "channel", data=batches, sparsity=0.5,
                                        layers="re:.*intermediate\\.dense")
            forms.append(Form("channel pruning (50 % of FFN units)", REAL, pruned, stored_params(pruned, report),
                              quality(pruned)))
        else:
            pruned, params = prune_feed_forward(model, batches, sparsity=0.5)
            forms.append(Form("channel pruning (50 % of FFN units, per block)", REAL, pruned, params,
                              quality(pruned)))
            notes.append(f"`channel` on the whole model is refused ({refusal}); each block's feed-forward half "
                         "(intermediate → GELU → output, residual, LayerNorm) is traced and pruned on its own, "
                         "block after block, calibrated on the real tokens reaching it.")
    with phase("MiniLM: quantizing"):
        forms += _int8_forms(model, low, quality)
        forms += _simulated_forms(model, quality, stats=stats, layers=encoder)
    notes.insert(0, f"Calibration: {len(calibration)} sentences; quality: mean cosine of sentence embeddings "
                    f"against the dense model on {len(heldout)} held-out sentences (1.0 = identical). "
                    "Embedding look-ups and the pooler stay dense in every form.")
    return Bench(f"all-MiniLM-L6-v2 ({seq_len} tokens per sentence)", "cosine vs dense", ".4f", forms, parts.inputs,
                 notes)


# --------------------------------------------------------------------------- tables


def rows_of(bench: Bench, batches: tuple[int, ...]) -> tuple[list[str], list[list[str]]]:
    """The table of one model: a row per form, latency and speed-up at each batch size."""
    dense = bench.forms[0]
    header = ["form", "kernel", "params", "FLOPs", bench.quality]
    for batch in batches:
        header += [f"ms b{batch}", f"speed-up b{batch}", f"÷ FLOPs gain b{batch}"]
    rows = []
    for form in bench.forms:
        ratio = form.macs / dense.macs
        row = [form.name, form.kernel, f"{form.params / 1e6:.2f} M", f"{ratio:.3f}",
               format(form.quality, bench.quality_format)]
        for batch in batches:
            speedup = dense.ms[batch] / form.ms[batch]
            row += [_ms(form.ms[batch]), f"{speedup:.2f}×", f"{speedup * ratio:.2f}"]
        rows.append(row)
    return header, rows


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def faster(bench: Bench, batches: tuple[int, ...]) -> list[str]:
    """The compressed forms at least TARGET× faster than dense, with the batch sizes where they are."""
    dense, found = bench.forms[0], []
    for form in bench.forms[1:]:
        hits = [f"{dense.ms[b] / form.ms[b]:.2f}× at batch {b}" for b in batches if dense.ms[b] / form.ms[b] >= TARGET]
        if hits:
            found.append(f"{form.name} ({', '.join(hits)})")
    return found


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def machine() -> str:
    """CPU, threads, torch and its quantized engine: what the timings belong to."""
    return f"{_machine()}, quantized engine {torch.backends.quantized.engine}"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sentences and rounds (a smoke run)")
    parser.add_argument("--batch", type=int, default=64, help="the typical batch size, next to batch 1")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per sentence for MiniLM")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (default %(default)s)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall: time.perf_counter (default); cpu: time.process_time, for a busy machine")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the Markdown file to write")
    parser.add_argument("--append", action="store_true", help="add this run to the Markdown file, not replace it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    batches, rounds = (1, args.batch), QUICK_ROUNDS if args.quick else ROUNDS
    started, load_before = time.perf_counter(), load()
    print(f"{machine()}; load average {load_before} (1/5/15 min) at the start", flush=True)

    sections = []
    for build in (digits_bench, lambda: minilm_bench(args.quick, args.seq_len)):
        bench = build()
        with phase(f"{bench.title}: timing"):
            time_bench(bench, batches, rounds, CLOCKS[args.clock])
        header, rows = rows_of(bench, batches)
        runs = ", ".join(f"batch {b}: {min(f.runs[b] for f in bench.forms)}–{max(f.runs[b] for f in bench.forms)}"
                         for b in batches)
        print(f"\n{bench.title}: median {args.clock} time per call in ms, {args.threads} thread(s) "
              f"(timed calls per form, {runs})")
        print_table(header, rows)
        hits = faster(bench, batches)
        print(f"≥ {TARGET}× faster than dense: {'; '.join(hits) or 'none'}", flush=True)
        sections.append(f"### {bench.title}\n\nTimed calls per form: {runs}.\n\n{markdown_table(header, rows)}\n\n"
                        f"At least {TARGET}× faster than dense: {'; '.join(hits) or 'none'}.\n\n"
                        + "\n".join(f"* {note}" for note in bench.notes))
    seconds = time.perf_counter() - started
    command = (f"python bench_latency.py{' --quick' if args.quick else ''} --batch {args.batch} "
               f"--seq-len {args.seq_len} --threads {args.threads} --clock {args.clock}")
    run = (f"## `{command}`\n\n{machine()}. Load average {load_before} at the start, {load()} at the end "
           f"(1/5/15 min); {seconds:.0f} s in all. Median {args.clock} time per call in ms.\n\n"
           + "\n\n".join(sections) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.output.exists():
        args.output.write_text(args.output.read_text() + "\n" + run)
    else:
        args.output.write_text(MARKDOWN_HEAD + run)
    print(f"\n{seconds:.0f} s in all; load average {load()} at the end; written to {args.output}")


if __name__ == "__main__":
    main()
