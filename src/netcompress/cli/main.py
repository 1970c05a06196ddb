"""The ``netcompress`` command (also ``python -m netcompress``): parses arguments, calls the public API, prints.

    netcompress compress --model pkg.module:factory --weights W.safetensors --data D \\
        --method dalr --budget 0.1 -o OUT
    netcompress compress --model torchvision:resnet18 --weights W.pth --data photos/ --preset imagenet \\
        --image-size 224 224 --method kmeans --bits 5 --exclude fc -o OUT --ncz OUT.ncz
    netcompress compress ... --recipe deep-compression.yaml --labels Y.npy -o OUT --ncz OUT.ncz
    netcompress compress --hf MODEL_DIR --text lines.txt --method uniform --bits 8 -o OUT --save-pretrained DIR
    netcompress methods
    netcompress report OUT
    netcompress export --model pkg.module:factory --load OUT --data D --onnx model.onnx

``compress`` checks all it can (outputs, method, settings) before it reads the data, writes
nothing until compression succeeded, then writes ``-o`` and ``--ncz`` together or neither.
``export`` writes the ONNX file only once onnxruntime reproduced PyTorch on every batch of
``--data``. Every failure is one sentence on stderr and exit status 2 (``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be numbers such as 0.485,0.456,0.406") from None


def _parser(method: str | None = None) -> argparse.ArgumentParser:
    from netcompress.cli import targets
    from netcompress.cli.methods import add_setting_flags
    from netcompress.registry import METHODS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    parser = argparse.ArgumentParser(prog="netcompress", parents=[common],
                                     description="Compress a trained PyTorch network for its target domain.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("compress", parents=[common], help="compress a model with target-domain data")
    _model_arguments(run, required=False)
    run.add_argument("--data", help="target inputs: .pt, .npy, .npz or a folder of images")
    _hf_arguments(run)
    run.add_argument("--method", default="dalr", choices=sorted(METHODS),
                     help="the method (default dalr); `netcompress methods` lists them with their settings")
    run.add_argument("--recipe", help="a YAML list of steps (methods and fine-tuning) instead of one --method")
    add_setting_flags(run, method)
    run.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                     help="a setting of a plug-in method without its own flag (repeatable; values read as YAML)")
    run.add_argument("--labels", help="labels for fine-tuning steps: .npy/.pt (or 'y' in an .npz --data file)")
    run.add_argument("--layers", help="comma-separated layer names or re:patterns (default: every layer the method takes)")
    run.add_argument("--exclude", help="comma-separated layer names or re:patterns to leave as they are")
    _data_arguments(run)
    run.add_argument("--positions", type=int, help="spatial positions sampled per image for Conv2d statistics")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars for the passes over data and the layers (default: on a terminal only)")
    run.add_argument("-o", "--output", required=True, help="output directory (weights, manifest, report)")
    run.add_argument("--ncz", help="also write the entropy-coded .ncz container to this file")
    run.add_argument("--force", action="store_true",
                     help="write into a directory (or onto a file) netcompress did not write; only netcompress's "
                          "own files there are replaced")
    targets.add_arguments(run)

    commands.add_parser("methods", parents=[common], help="list every method with its settings, types and defaults")

    report = commands.add_parser("report", parents=[common],
                                 help="print the report of a compressed model or an .ncz file's storage")
    report.add_argument("path", help="directory written by `netcompress compress`, or an .ncz file")
    report.add_argument("--json", action="store_true", help="print the JSON record instead of the table")

    export = commands.add_parser("export", parents=[common],
                                 help="write a (compressed) model as ONNX, checked with onnxruntime on the data")
    _model_arguments(export)
    export.add_argument("--load", metavar="OUT",
                        help="directory written by `netcompress compress -o OUT`: the compressed model to export")
    export.add_argument("--data", required=True,
                        help="inputs to trace and check with (the calibration data): .pt, .npy, .npz or a folder of "
                             "images")
    _data_arguments(export)
    export.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write, e.g. model.onnx")
    export.add_argument("--opset", type=int, help="ONNX opset version (default: torch's)")
    export.add_argument("--force", action="store_true", help="replace an existing file netcompress did not write")

    from netcompress.cli.rank import add_rank_commands

    add_rank_commands(commands, common)

    return parser


def _model_arguments(command: argparse.ArgumentParser, required: bool = True) -> None:
    """--model and --weights, as compress and export read them."""
    command.add_argument("--model", required=required,
                         help="the original architecture: package.module:function (importable from the current "
                              "directory), path/to/file.py:function, torchvision:NAME, timm:NAME or "
                              "transformers:CLASS (nothing is downloaded)")
    command.add_argument("--weights",
                         help="the trained weights: .safetensors, or a torch.save'd state dict (.pt/.pth); for "
                              "transformers:CLASS, a local model directory (config.json, model.safetensors)")


def _hf_arguments(command: argparse.ArgumentParser) -> None:
    """A Hugging Face model directory and calibration text instead of --model/--weights/--data."""
    group = command.add_argument_group("Hugging Face models (instead of --model, --weights and --data)")
    group.add_argument("--hf", metavar="DIR", help="a local transformers model directory (config.json, weights, "
                                                   "tokenizer), read without downloading or running its code")
    group.add_argument("--hf-class", metavar="NAME",
                       help="the transformers class that loads --hf (default AutoModel), e.g. AutoModelForCausalLM")
    group.add_argument("--text", metavar="FILE", help="calibration text for --hf: UTF-8, one sample per line")
    group.add_argument("--max-length", type=int, metavar="N", help="tokens kept of each line (default 128)")
    group.add_argument("--save-pretrained", metavar="DIR2",
                       help="also write a plain save_pretrained directory (masked pruning and quantization only; "
                            "a new or empty directory, neither -o nor inside it, nor holding -o or --ncz: "
                            "outputs never nest, so each is written and replaced whole)")


def _data_arguments(command: argparse.ArgumentParser) -> None:
    """How --data is batched, resized and normalised, as compress and export read it."""
    from netcompress.cli.inputs import PRESETS

    command.add_argument("--batch-size", type=int, default=64)
    command.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize images of a data folder")
    command.add_argument("--mean", type=_floats, help="per-channel mean subtracted from images, e.g. 0.485,0.456,0.406")
    command.add_argument("--std", type=_floats, help="per-channel standard deviation images are divided by")
    command.add_argument("--preset", choices=sorted(PRESETS), help="--mean/--std of a known training set")


def _settings(pairs: list[str]) -> dict:
    import yaml

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--setting {pair!r} must look like key=value, e.g. sparsity=0.9")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"--setting {pair!r} has a value that is not a number, word or list") from None
    return settings


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def _normalisation(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    from netcompress.cli.inputs import PRESETS

    if args.preset and (args.mean or args.std):
        raise ValueError("give either --preset or --mean/--std, not both")
    if args.preset:
        return PRESETS[args.preset]
    if bool(args.mean) != bool(args.std):
        raise ValueError("--mean and --std go together; give both (or --preset imagenet)")
    if args.mean and len(args.mean) != len(args.std):
        raise ValueError(f"--mean has {len(args.mean)} values and --std {len(args.std)}; give one per channel to each")
    if args.std and any(s <= 0 for s in args.std):
        raise ValueError(f"--std values must be positive, got {','.join(map(str, args.std))}")
    return (args.mean, args.std) if args.mean else None


def _steps(args: argparse.Namespace) -> list[dict]:
    """The compression as checked steps (a recipe, or one --method step): no data read yet."""
    from netcompress.cli.methods import flag_values
    from netcompress.pipeline import check_steps, read_recipe

    layers, exclude = _names(args.layers), _names(args.exclude)
    flags = flag_values(args)
    if args.recipe:
        if flags or args.setting:
            given = ", ".join([*(f"--{k.replace('_', '-')}" for k in flags), *(["--setting"] if args.setting else [])])
            raise ValueError(f"--recipe holds each step's settings; drop {given} (or put them in the recipe)")
        steps = read_recipe(args.recipe)
        for step in steps:
            if "method" in step:
                if layers is not None:
                    step.setdefault("layers", layers)
                if exclude is not None:
                    step.setdefault("exclude", exclude)
        return check_steps(steps)
    step = {"method": args.method, **_settings(args.setting)}
    for key, value in {**flags, "layers": layers, "exclude": exclude, "positions": args.positions}.items():
        if value is not None:
            if key in step:
                raise ValueError(f"--setting {key}=… repeats --{key.replace('_', '-')}; give it once")
            step[key] = value
    return check_steps([step])


def _compress(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    import netcompress as nc
    from netcompress._core.atomic import made_directories, staged_file
    from netcompress.cli import hf, targets
    from netcompress.cli.inputs import batches, normalize, read_data, read_labels
    from netcompress.cli.methods import flag_values
    from netcompress.cli.outputs import check_ncz_target, check_separate_outputs, summary
    from netcompress.cli.zoo import build
    from netcompress.pipeline import step_settings
    from netcompress.storage.io import check_save_target

    # Everything that can be checked without the model and the data, before they are read.
    output, ncz = Path(args.output), Path(args.ncz) if args.ncz else None
    check_separate_outputs(args)
    check_save_target(output, args.force)
    if ncz is not None:
        check_ncz_target(ncz, output, args.force)
    target, recover = targets.check_target(args, bool(flag_values(args)))
    steps = [] if target is not None or args.replay else _steps(args)
    lines = hf.check_arguments(args, steps)  # --text's samples with --hf, else None
    if lines is None and (args.model is None or args.data is None):
        raise ValueError(f"compress needs {'--model' if args.model is None else '--data'}, "
                         "or a Hugging Face model as --hf DIR --text FILE")
    normalisation = _normalisation(args)
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")

    source = labels = None
    if lines is not None:
        source = hf.HFSource(args.hf, args.hf_class)
        source.check_text(lines, args.max_length, args.text)  # the tokenizer, measured on the text before the model loads
        model = source.load_model()
        calibration = source.batches(lines, args.batch_size, args.max_length, model)
        original = hf.shapes(model)
    else:
        model = build(args.model, args.weights)
        prepare = (lambda d: normalize(d, *normalisation)) if normalisation is not None else (lambda d: d)
        data = prepare(read_data(args.data, tuple(args.image_size) if args.image_size else None))
        calibration = list(batches(data, args.batch_size))
        evaluation = targets.read_eval_data(args, prepare)
        if args.recipe and any("finetune" in s for s in steps):
            labels = read_labels(args.labels, args.data, len(data))
    evaluation = evaluation if lines is None else None
    if target is not None:
        report = targets.compress_to_target(model, calibration, target, recover, args, evaluation,
                                            _names(args.layers), _names(args.exclude))
    elif args.replay:
        plan, options = targets.read_plan(args.replay)
        report = nc.compress(model, calibration, plan, progress=args.progress, eval_data=evaluation, **options)
    elif args.recipe:
        reports = nc.run_pipeline(model, steps, data=calibration, progress=args.progress,
                                  train=(data.float(), labels) if labels is not None else None)
        report = nc.Report.of_steps(reports)  # each row labelled by its step; totals count each layer once
    else:
        settings, options = step_settings(steps[0])
        report = nc.compress(model, calibration, settings, progress=args.progress, eval_data=evaluation, **options)
    targets.refuse_degraded(report, args)  # a broken model never leaves silently: nothing written yet

    # All outputs together: --save-pretrained and the container go to temporary names first, renamed
    # into place only once -o is written.
    with ExitStack() as stack:
        if source is not None and args.save_pretrained is not None:
            stack.enter_context(hf.staged_pretrained(model, source, args.save_pretrained, original))
        if ncz is not None:
            stack.enter_context(made_directories(ncz.parent))
            staged = stack.enter_context(staged_file(ncz))
            size = nc.save_compressed(model, staged, overwrite=True)  # our own temporary file
        nc.save(model, output, report, overwrite=args.force)
    targets.write_plan(report, getattr(args, "write_plan", None), args.force)
    print(report)
    print(f"\nwrote {output}: {summary(report, output, args)}")
    if source is not None:
        print(source.load_hint(output))
    if ncz is not None:
        print(f"wrote {ncz}: {size:,} bytes")
    if source is not None and args.save_pretrained is not None:
        print(f"wrote {args.save_pretrained}: plain layers (masks and codes folded), "
              f"loadable with transformers.{source.class_name}.from_pretrained alone")


def _methods(args: argparse.Namespace) -> None:
    from netcompress.cli.methods import methods_table

    print(methods_table())


def _report(args: argparse.Namespace) -> None:
    import json

    import netcompress as nc

    if Path(args.path).is_file():
        from netcompress.storage.tables import format_storage_table

        rows = nc.storage_table(args.path)
        print(json.dumps(rows, indent=1) if args.json else format_storage_table(rows, Path(args.path).stat().st_size))
        return
    if not Path(args.path).exists():
        raise ValueError(f"{args.path} does not exist; give a directory written by `netcompress compress` or an .ncz file")
    report = nc.read_report(args.path)
    print(report.to_json() if args.json else report)


def _export(args: argparse.Namespace) -> None:
    import netcompress as nc
    from netcompress.cli.inputs import batches, normalize, read_data
    from netcompress.cli.outputs import check_onnx_target
    from netcompress.cli.zoo import build
    from netcompress.storage.onnx import check_opset, require_onnx

    # Everything that can be checked without the model and the data, before they are read.
    require_onnx()
    check_opset(args.opset)
    path = check_onnx_target(args)
    if args.load and not Path(args.load).is_dir():
        raise ValueError(f"--load {args.load} is not a directory; give the -o directory of `netcompress compress`")
    normalisation = _normalisation(args)
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")

    model = build(args.model, args.weights)
    if args.load:
        nc.load(model, args.load)
    data = read_data(args.data, tuple(args.image_size) if args.image_size else None)
    if normalisation is not None:
        data = normalize(data, *normalisation)
    first, *rest = batches(data, args.batch_size)
    # Traced on the first batch and checked on every batch: a last, smaller one exercises the dynamic batch axis.
    result = nc.export_onnx(model, first, path, check_data=rest, opset=args.opset, overwrite=args.force)
    print(result)


def _sentence(error: BaseException) -> str:
    """One line saying what failed: the message of a user error, else the kind of failure and a hint."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error).strip()
    first = text.splitlines()[0].strip() if text else ""
    if isinstance(error, (ValueError, TypeError, ImportError, KeyError)) and first:
        return first
    if isinstance(error, MemoryError):
        return "ran out of memory; use fewer or smaller inputs (--image-size, --batch-size) or a smaller model"
    if isinstance(error, RecursionError):
        return "an input is nested too deeply to be read"
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return f"{type(error).__name__}: {first or 'no message'} (run with --debug for the traceback)"


def _rank_command(args: argparse.Namespace) -> None:
    from netcompress.cli.rank import rank

    rank(args)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"netcompress: warning: {message}", file=sys.stderr)


def _help_for(argv: list[str]) -> str | None:
    """``compress --method NAME --help``: the method whose settings the help shows (others' are hidden)."""
    from netcompress.registry import METHODS

    if "compress" not in argv or not {"-h", "--help"} & set(argv):
        return None
    for i, word in enumerate(argv):
        name = argv[i + 1] if word == "--method" and i + 1 < len(argv) else word.partition("=")[2]
        if (word == "--method" or word.startswith("--method=")) and name in METHODS:
            return name
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status (0, or 2 on an error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    method = _help_for(argv)
    args = _parser(method).parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            {"compress": _compress, "methods": _methods, "report": _report, "export": _export,
             "rank": _rank_command}[args.command](args)
    except KeyboardInterrupt:
        print("netcompress: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as error:  # every failure ends in one sentence; --debug shows where
        if debug:
            traceback.print_exc()
        print(f"netcompress: error: {_sentence(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
