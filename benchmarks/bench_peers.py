"""netcompress side by side with torchao, optimum-quanto and Torch-Pruning on the same trained models.

Three real models, all offline:

* the digits MLP (784-1024-1024-10, MNIST-trained then fine-tuned on UCI digits, ``_common.trained``):
  quantization and pruning; calibration on its 1,000 training images, top-1 accuracy (%) on the 797
  held-out test digits;
* LeNet-5 on the MNIST subset: pruning only; calibration on 1,000 training images, accuracy on the
  1,000 held-out images;
* all-MiniLM-L6-v2: quantization of the 36 encoder Linear layers only (embeddings and pooler stay
  dense in every form); calibration and held-out sentences as in ``bench_latency.py``; quality is the
  mean cosine of sentence embeddings against the dense model (1.0 = identical).

Forms. Quantization (weights only): torchao ``quantize_(m, Int8WeightOnlyConfig())`` (per row; with
``set_inductor_config=False``, since nothing is compiled here); optimum-quanto ``quantize(m, weights=qint8
| qint4)`` then ``freeze(m)`` (its qint4 is group-wise, 128 inputs per group where the width divides, else
per row); netcompress ``uniform`` 8-bit and 4-bit per output channel, data-free (``data=None``), and
4-bit with calibration data (clipping chosen to minimise the data-weighted error). In eager mode on a
CPU the peers rebuild float weights from their int8/int4 codes inside each call (torchao casts its int8
weight to float before the GEMM); netcompress's per-channel float32 layers multiply by the codes
converted to float and scale the outputs (``netcompress.quantize.kernels``).
Pruning (no fine-tuning afterwards): Torch-Pruning's ``BasePruner`` (``MagnitudePruner`` is its
deprecated alias) with ``MagnitudeImportance(p=2)``, data-free, the output layer ignored; netcompress
``channel`` (ranked by output energy on the calibration data, readers re-fitted by least squares) and
``activation`` (units or filters ranked by their rectified response on the calibration data, its default
criterion). All remove 50 % and 75 % of the hidden units (MLP: fc6, fc7) or of the filters and units
(LeNet-5: conv1, conv2, fc1); they keep the same counts, so the FLOPs are equal.

Columns. "bytes": dense and peer forms are ``torch.save(state_dict)`` into memory; netcompress forms are
what ``nc.save(model, folder)`` writes: ``model.safetensors`` plus ``manifest.json`` (the sum; both are
listed under "stored as"). "compress s": wall time of the compressing call alone (after a warm-up of
every quantizer on a tiny layer, so one-time imports are not counted; Torch-Pruning's time includes
building its dependency graph, netcompress's its pass over the data). Latency: the median ms per call
at batch 1 and 256 (MiniLM: 1 and 32 sentences of ``--seq-len`` tokens), ``torch.set_num_threads(2)``,
warm-up, then rounds in which every form runs in turn (``bench_latency.latencies``). Forms that fail
under ``torch.inference_mode`` (quanto's packed qint4 raises "Cannot set version_counter for inference
tensor") are run under ``torch.no_grad`` instead and marked so. Random choices are seeded.
Writes ``results/peers.md`` (``--output``).

    python bench_peers.py [--quick] [--models mlp,lenet,minilm] [--threads 2] [--seq-len 32]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

import netcompress as nc
from _common import print_table, trained
from bench_latency import latencies, load, machine, markdown_table, minilm_parts, phase
from netcompress.distill.finetune import accuracy

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "peers.md"
SEED = 0
ROUNDS, QUICK_ROUNDS = 15, 3
RATIOS = (0.5, 0.75)
PEERS = {"torchao": "torchao.quantization", "optimum-quanto": "optimum.quanto", "torch-pruning": "torch_pruning"}
INSTALL = "install the peers extra: pip install 'netcompress[peers]'"
ENCODER = "re:^encoder\\..*"
MARKDOWN_HEAD = """# netcompress next to torchao, optimum-quanto and Torch-Pruning

Written by `benchmarks/bench_peers.py` (its docstring gives the method). Quality is top-1 accuracy (%) or the
mean cosine to the dense model's embeddings; no form is fine-tuned. "bytes": `torch.save(state_dict)` for
dense and peer forms, `model.safetensors` + `manifest.json` from `nc.save` for netcompress forms. On this CPU
weight-only quantized float32 forms decode or convert their codes inside every call (PyTorch's int8/int4
kernels are fast only for bfloat16 activations), so they are not expected to be faster than dense; pruned
forms are smaller float32 networks. Latency: median ms per call, forms interleaved.

"""

Make = Callable[[nn.Module], object]  # compresses its argument in place


@dataclass
class Row:
    """One form of a model: who made it, its quality, its stored size, how long compressing took, its latency."""

    name: str
    library: str
    model: nn.Module
    quality: float
    size: int
    stored: str
    seconds: float | None
    no_grad: bool = False  # run under torch.no_grad because torch.inference_mode fails for it
    ms: dict[int, float] = field(default_factory=dict)


@dataclass
class Bench:
    """A model's forms, the call that times them at a batch size, and what the quality column means."""

    title: str
    quality: str
    fmt: str
    rows: list[Row]
    inputs: Callable[[int], Callable[[nn.Module], object]]
    batches: tuple[int, int]
    notes: list[str]


# --------------------------------------------------------------------------- peers and sizes


def load_peers() -> dict[str, Any]:
    """Import each peer that is installed (printing its version); say how to install the missing ones."""
    found = {}
    for dist, module in PEERS.items():
        try:
            found[dist] = importlib.import_module(module)
        except ImportError as error:
            print(f"{dist} is not installed ({error}); its rows are skipped: {INSTALL}", flush=True)
    return found


def versions(peers: dict[str, Any]) -> str:
    """The versions that produced the numbers: torch, netcompress and every peer found."""
    parts = []
    for dist in ("torch", "netcompress", *peers):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (version unknown)")
    return ", ".join(parts)


def torch_bytes(model: nn.Module) -> tuple[int, str]:
    """Size of ``torch.save(model.state_dict())`` written into memory."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell(), "torch.save"


def nc_bytes(model: nn.Module) -> tuple[int, str]:
    """Size of what ``nc.save`` writes: model.safetensors plus manifest.json."""
    with tempfile.TemporaryDirectory() as folder:
        nc.save(model, Path(folder) / "out")
        weights = (Path(folder) / "out" / "model.safetensors").stat().st_size
        manifest = (Path(folder) / "out" / "manifest.json").stat().st_size
    return weights + manifest, f"nc.save: {weights:,} safetensors + {manifest:,} manifest"


def runs_in_inference_mode(model: nn.Module, probe: Callable[[nn.Module], object]) -> bool:
    """Whether one call of ``model`` works under ``torch.inference_mode`` (quanto's qint4 does not)."""
    try:
        with torch.inference_mode():
            probe(model)
    except RuntimeError:
        return False
    return True


def build(name: str, library: str, model: nn.Module, make: Make, quality: Callable[[nn.Module], float],
          probe: Callable[[nn.Module], object], notes: list[str]) -> Row | None:
    """Compress a copy of ``model`` with ``make`` (timed, seeded), then measure it; None (and a note) if it fails."""
    candidate = copy.deepcopy(model)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    try:
        make(candidate)
    except Exception as error:  # a peer's API change or a refusal: say so and go on without the row
        message = f"{name} ({library}) failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        print(f"  {message}", flush=True)
        notes.append(message)
        return None
    seconds = time.perf_counter() - start
    candidate.eval()
    size, stored = nc_bytes(candidate) if library == "netcompress" else torch_bytes(candidate)
    no_grad = not runs_in_inference_mode(candidate, probe)
    with torch.no_grad():
        score = quality(candidate)
    return Row(name, library, candidate, score, size, stored, seconds, no_grad)


def dense_row(model: nn.Module, quality: Callable[[nn.Module], float]) -> Row:
    with torch.no_grad():
        score = quality(model)
    return Row("dense float32", "torch", model, score, *torch_bytes(model), None)


# --------------------------------------------------------------------------- the forms


def quantizers(peers: dict[str, Any], calibration: list, encoder_only: bool) -> list[tuple[str, str, Make]]:
    """(name, library, make) of every weight quantization: the peers found, then netcompress."""
    layers = ENCODER if encoder_only else None
    forms: list[tuple[str, str, Make]] = []
    if "torchao" in peers:
        ao = peers["torchao"]

        def selected(module: nn.Module, fqn: str) -> bool:
            return isinstance(module, nn.Linear) and (not encoder_only or fqn.startswith("encoder."))

        forms.append(("torchao int8 weight-only", "torchao",
                      lambda m: ao.quantize_(m, ao.Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=selected)))
    if "optimum-quanto" in peers:
        oq = peers["optimum-quanto"]

        def quanto(m: nn.Module, qtype: Any) -> None:
            oq.quantize(m, weights=qtype, include="encoder.*" if encoder_only else None)
            oq.freeze(m)

        forms.append(("quanto qint8 weights", "optimum-quanto", lambda m: quanto(m, oq.qint8)))
        forms.append(("quanto qint4 weights", "optimum-quanto", lambda m: quanto(m, oq.qint4)))
    for bits in (8, 4):
        forms.append((f"uniform {bits}-bit per channel, data-free", "netcompress",
                      lambda m, bits=bits: nc.compress(m, None, method="uniform", bits=bits, layers=layers,
                                                       progress=False)))
    forms.append(("uniform 4-bit per channel, calibrated", "netcompress",
                  lambda m: nc.compress(m, calibration, method="uniform", bits=4, layers=layers, progress=False)))
    return forms


def pruners(peers: dict[str, Any], calibration: list, example: torch.Tensor, layers: list[str], output: str,
            unit: str) -> list[tuple[str, str, Make]]:
    """(name, library, make) of structured pruning at each ratio: Torch-Pruning, netcompress channel/activation."""
    forms: list[tuple[str, str, Make]] = []
    tp = peers.get("torch-pruning")
    for ratio in RATIOS:
        share = f"{ratio:.0%} of {unit}"
        if tp is not None:

            def magnitude(m: nn.Module, ratio: float = ratio) -> None:
                pruner = tp.pruner.BasePruner(m, example_inputs=example, importance=tp.importance.MagnitudeImportance(p=2),
                                              pruning_ratio=ratio, ignored_layers=[getattr(m, output)])
                pruner.step()

            forms.append((f"magnitude pruning, {share}", "torch-pruning", magnitude))
        forms.append((f"channel pruning, {share}", "netcompress",
                      lambda m, ratio=ratio: nc.compress(m, calibration, method="channel", sparsity=ratio,
                                                         layers=layers, progress=False)))
        forms.append((f"activation pruning, {share}", "netcompress",
                      lambda m, ratio=ratio: nc.compress(m, calibration, method="activation", sparsity=ratio,
                                                         layers=layers, progress=False)))
    return forms


def warm_up(peers: dict[str, Any]) -> None:
    """Run every quantizer once on a tiny layer, so that one-time imports do not count as compress time."""
    tiny = nn.Sequential(nn.Linear(32, 32))
    for name, library, make in quantizers(peers, [torch.randn(64, 32)], encoder_only=False):
        build(name, library, tiny, make, lambda m: 0.0, lambda m: m(torch.randn(1, 32)), [])


def make_rows(model: nn.Module, forms: list[tuple[str, str, Make]], quality: Callable[[nn.Module], float],
              probe: Callable[[nn.Module], object], notes: list[str]) -> list[Row]:
    rows = [dense_row(model, quality)]
    for name, library, make in forms:
        row = build(name, library, model, make, quality, probe, notes)
        if row is not None:
            rows.append(row)
    return rows


def _classifier(data: Any) -> tuple[Callable[[nn.Module], float], Callable[[int], Callable[[nn.Module], object]]]:
    """Test accuracy and the timing call (the first ``batch`` test images) of an image classifier."""
    def inputs(batch: int) -> Callable[[nn.Module], object]:
        x = data.test_x[:batch]
        return lambda m: m(x)

    return (lambda m: accuracy(m, data.test_x, data.test_y)), inputs


def mlp_bench(peers: dict[str, Any]) -> Bench:
    with phase("digits MLP: training"):
        model, data = trained("widemlp-digits", seed=SEED)
    model.eval()
    calibration = list(data.train_x.split(250))
    quality, inputs = _classifier(data)
    notes = [f"Calibration: the {len(data.train_x)} training images; quality: top-1 accuracy (%) on "
             f"the {len(data.test_x)} test images. Pruning removes units of fc6 and fc7 (fc8 loses the matching "
             "inputs)."]
    forms = quantizers(peers, calibration, encoder_only=False)
    forms += pruners(peers, calibration, data.test_x[:1], ["fc6", "fc7"], "fc8", "hidden units")
    with phase("digits MLP: compressing"):
        rows = make_rows(model, forms, quality, inputs(1), notes)
    return Bench("digits MLP (784-1024-1024-10, UCI digits)", "test acc. %", ".2f", rows, inputs, (1, 256), notes)


def lenet_bench(peers: dict[str, Any]) -> Bench:
    with phase("LeNet-5: training"):
        model, data = trained("lenet5", seed=SEED)
    model.eval()
    calibration = list(data.train_x[:1000].split(250))
    quality, inputs = _classifier(data)
    notes = [f"Calibration: 1,000 training images; quality: top-1 accuracy (%) on the {len(data.test_x)} test "
             "images. Pruning removes filters of conv1, conv2 and units of fc1 (fc2 is the output)."]
    forms = pruners(peers, calibration, data.test_x[:1], ["conv1", "conv2", "fc1"], "fc2", "filters/units")
    with phase("LeNet-5: compressing"):
        rows = make_rows(model, forms, quality, inputs(1), notes)
    return Bench("LeNet-5 (MNIST)", "test acc. %", ".2f", rows, inputs, (1, 256), notes)


def minilm_bench(peers: dict[str, Any], quick: bool, seq_len: int) -> Bench:
    parts = minilm_parts(quick, seq_len)
    notes = [f"Calibration: {len(parts.calibration)} sentences; quality: mean cosine of sentence embeddings against "
             f"the dense model on {len(parts.heldout)} held-out sentences. Only the encoder's Linear layers are "
             "quantized, by every library; embeddings and the pooler stay float32."]
    with phase("MiniLM: compressing"):
        rows = make_rows(parts.model, quantizers(peers, parts.batches, encoder_only=True), parts.quality,
                         parts.inputs(1), notes)
    return Bench(f"all-MiniLM-L6-v2 ({seq_len} tokens per sentence)", "cosine vs dense", ".4f", rows, parts.inputs,
                 (1, 32), notes)


# --------------------------------------------------------------------------- timing and tables


def _call(row: Row, run: Callable[[nn.Module], object]) -> Callable[[], object]:
    """One timed call of ``row``'s model; under torch.no_grad (inside latencies' inference mode) where needed."""
    if not row.no_grad:
        return lambda: run(row.model)

    def call() -> object:
        with torch.inference_mode(False), torch.no_grad():
            return run(row.model)

    return call


def time_bench(bench: Bench, rounds: int) -> None:
    """Median ms per call of every form at each batch size, forms interleaved round by round."""
    for batch in bench.batches:
        run = bench.inputs(batch)
        timed = latencies({row.name: _call(row, run) for row in bench.rows}, rounds)
        for row in bench.rows:
            row.ms[batch] = 1e3 * timed[row.name][0]


def table(bench: Bench) -> tuple[list[str], list[list[str]]]:
    header = ["form", "library", bench.quality, "bytes", "× smaller", "compress s",
              *(f"ms b{b}" for b in bench.batches), "stored as"]
    dense = bench.rows[0].size
    rows = []
    for row in bench.rows:
        seconds = "—" if row.seconds is None else f"{row.seconds:.2f}"
        name = row.name + (" [no_grad]" if row.no_grad else "")
        rows.append([name, row.library, format(row.quality, bench.fmt), f"{row.size:,}", f"{dense / row.size:.2f}",
                     seconds, *(f"{row.ms[b]:.3f}" if row.ms[b] < 10 else f"{row.ms[b]:.1f}" for b in bench.batches),
                     row.stored])
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds; MiniLM skipped unless --models names it")
    parser.add_argument("--models", default=None, help="comma-separated: mlp,lenet,minilm (default all; "
                                                       "with --quick mlp,lenet)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per sentence for MiniLM timing")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the Markdown file to write")
    args = parser.parse_args()
    models = (args.models or ("mlp,lenet" if args.quick else "mlp,lenet,minilm")).split(",")
    unknown = set(models) - {"mlp", "lenet", "minilm"}
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from mlp, lenet, minilm")
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    started, load_before = time.perf_counter(), load()
    peers = load_peers()
    print(f"{machine()}; load average {load_before} at the start\n{versions(peers)}", flush=True)
    warm_up(peers)

    builders = {"mlp": lambda: mlp_bench(peers), "lenet": lambda: lenet_bench(peers),
                "minilm": lambda: minilm_bench(peers, args.quick, args.seq_len)}
    sections = []
    for key in models:
        bench = builders[key]()
        with phase(f"{bench.title}: timing"):
            time_bench(bench, rounds)
        header, rows = table(bench)
        print(f"\n{bench.title}: median wall ms per call, {args.threads} thread(s), {rounds} rounds")
        print_table(header, rows)
        for note in bench.notes:
            print(f"* {note}")
        sections.append(f"### {bench.title}\n\n{markdown_table(header, rows)}\n\n"
                        + "\n".join(f"* {note}" for note in bench.notes))
    seconds = time.perf_counter() - started
    command = f"python bench_peers.py{' --quick' if args.quick else ''} --models {','.join(models)} " \
              f"--threads {args.threads} --seq-len {args.seq_len}"
    text = (f"{MARKDOWN_HEAD}## `{command}`\n\n{machine()}. {versions(peers)}. Load average {load_before} at the "
            f"start, {load()} at the end; {rounds} timing rounds; {seconds:.0f} s in all. Forms marked [no_grad] "
            "fail under torch.inference_mode and were run under torch.no_grad.\n\n" + "\n\n".join(sections) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"\n{seconds:.0f} s in all; load average {load()} at the end; written to {args.output}")


if __name__ == "__main__":
    main()
