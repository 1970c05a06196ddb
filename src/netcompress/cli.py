"""The ``netcompress`` command: parses arguments, calls the public API, prints.

    netcompress compress --model pkg.module:factory --weights W.safetensors --data D \\
        --method dalr --budget 0.1 -o OUT
    netcompress compress ... --method kmeans --setting bits=5 -o OUT --ncz OUT.ncz
    netcompress compress ... --recipe deep-compression.yaml --labels Y.npy -o OUT --ncz OUT.ncz
    netcompress report OUT
    netcompress demo [domain-transfer | deep-compression] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]")
    return value


def _rank(text: str) -> int | dict[str, int]:
    """``16`` or ``fc6=16,fc7=32``."""
    try:
        if "=" not in text:
            return int(text)
        pairs = (item.split("=", 1) for item in text.split(","))
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"rank {text!r} must be an integer or name=int,name=int") from None


def _parser() -> argparse.ArgumentParser:
    from .compress import METHODS

    parser = argparse.ArgumentParser(prog="netcompress", description="Compress a trained PyTorch network for its target domain.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("compress", help="compress a model with target-domain data")
    run.add_argument("--model", required=True, help="factory building the original architecture, package.module:function")
    run.add_argument("--weights", help="the trained weights, a .safetensors file")
    run.add_argument("--data", required=True, help="target inputs: .pt, .npy, .npz or a folder of images")
    run.add_argument("--method", default="dalr", choices=sorted(METHODS))
    size = run.add_mutually_exclusive_group()
    size.add_argument("--rank", type=_rank, help="a rank for every layer, or name=rank,name=rank")
    size.add_argument("--keep", type=_fraction, help="fraction of each layer's parameters to keep")
    size.add_argument("--energy", type=_fraction, help="fraction of each layer's target output energy to keep")
    size.add_argument("--budget", type=_fraction, help="fraction of the selected layers' parameters, spread across them")
    size.add_argument("--recipe", help="a YAML list of steps (methods and fine-tuning) instead of one --method")
    run.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                     help="a method setting, e.g. sparsity=0.9 or bits=5 (repeatable; values read as YAML)")
    run.add_argument("--labels", help="labels for fine-tuning steps: .npy/.pt (or 'y' in an .npz --data file)")
    run.add_argument("--ncz", help="also write the entropy-coded .ncz container to this file")
    run.add_argument("--layers", help="comma-separated layer names or re:patterns (default: all Linear/Conv2d)")
    run.add_argument("--lam", type=float, help="DALR's ridge λ relative to trace(XXᵀ)/in")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize images of a data folder")
    run.add_argument("--positions", type=int, help="spatial positions sampled per image for Conv2d statistics")
    run.add_argument("-o", "--output", required=True, help="output directory (weights, manifest, report)")

    report = commands.add_parser("report", help="print the report of a compressed model or an .ncz file's storage")
    report.add_argument("path", help="directory written by `netcompress compress`, or an .ncz file")
    report.add_argument("--json", action="store_true", help="print the JSON record instead of the table")

    demo = commands.add_parser("demo", help="reproduce the seeds' tables on real data shipped with Python packages")
    demo.add_argument("name", nargs="?", default="domain-transfer",
                      choices=["domain-transfer", "deep-compression", "students", "low-bit", "recovery"])
    demo.add_argument("--out", help="where results.json and the plots go (default netcompress-<name>)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-plots", action="store_true")
    return parser


def _settings(pairs: list[str]) -> dict:
    import yaml

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--setting {pair!r} must look like key=value, e.g. sparsity=0.9")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def _compress(args: argparse.Namespace) -> None:
    import netcompress as nc

    from .inputs import batches, build_model, read_data, read_labels

    model = build_model(args.model, args.weights)
    data = read_data(args.data, tuple(args.image_size) if args.image_size else None)
    layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
    if args.recipe:
        steps = nc.read_recipe(args.recipe)
        labels = read_labels(args.labels, args.data, len(data)) if any("finetune" in s for s in steps) else None
        reports = nc.run_pipeline(model, steps, data=list(batches(data, args.batch_size)),
                                  train=(data.float(), labels) if labels is not None else None)
        report = nc.Report([row for r in reports for row in r.rows])
    else:
        sizing = dict(rank=args.rank, keep=args.keep, energy=args.energy, budget=args.budget)
        report = nc.compress(model, batches(data, args.batch_size), method=args.method, layers=layers, lam=args.lam,
                             positions=args.positions, **{k: v for k, v in sizing.items() if v is not None},
                             **_settings(args.setting))
    nc.save(model, args.output, report)
    print(report)
    print(f"\nwrote {args.output}: {report.params_before:,} → {report.params_after:,} parameters in the compressed layers")
    if args.ncz:
        size = nc.save_compressed(model, args.ncz)
        print(f"wrote {args.ncz}: {size:,} bytes")


def _report(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    import netcompress as nc

    if Path(args.path).is_file():
        from .container import format_storage_table

        rows = nc.storage_table(args.path)
        print(json.dumps(rows, indent=1) if args.json else format_storage_table(rows, Path(args.path).stat().st_size))
        return
    report = nc.read_report(args.path)
    print(report.to_json() if args.json else report)


def _demo(args: argparse.Namespace) -> None:
    out = args.out or ("netcompress-demo" if args.name == "domain-transfer" else f"netcompress-{args.name}")
    if args.name in ("students", "low-bit", "recovery"):
        import json
        from pathlib import Path

        from .experiments import distillation
        from .io import atomic_write_bytes

        run = {"students": distillation.students, "low-bit": distillation.low_bit, "recovery": distillation.recovery}
        result = run[args.name](seed=args.seed)
        atomic_write_bytes(Path(out) / "results.json", json.dumps(result, indent=1).encode())
        print(f"wrote {Path(out) / 'results.json'}")
    elif args.name == "deep-compression":
        from .experiments.deep_compression import run

        run(out, seed=args.seed)
    else:
        from .experiments.domain_transfer import run

        run(out, seed=args.seed, plots=not args.no_plots)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"compress": _compress, "report": _report, "demo": _demo}[args.command](args)
    except (ValueError, TypeError, ImportError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"netcompress: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
