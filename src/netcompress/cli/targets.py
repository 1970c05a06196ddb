"""The command line's targets and checks: ``--target size=0.25``, ``--recover EPOCHS``, and the refusal to write
a model that has lost its fidelity (``--min-agreement``, ``--min-cosine``, ``--allow-degraded``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from netcompress.stats.fidelity import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE

__all__ = ["add_arguments", "check_target", "compress_to_target", "refuse_degraded", "write_plan"]


def add_arguments(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("targets and checks")
    group.add_argument("--target", metavar="KEY=VALUE[,...]",
                       help="what the model must reach instead of one --method: size=0.25 (share of the float32 "
                            "bytes), bytes=N, flops=0.5, latency=0.5 (with batch=64), max_error=0.1; the plan "
                            "is chosen per layer among uniform, GPTQ and DALR candidates")
    group.add_argument("--candidates", help="with --target: comma-separated families the plan may use "
                                            "(uniform, gptq, dalr, sparsegpt)")
    group.add_argument("--recover", type=int, metavar="EPOCHS",
                       help="with --target: distil from the original on the same data for EPOCHS epochs, "
                            "keeping the best epoch on the held-out samples")
    group.add_argument("--write-plan", metavar="FILE",
                       help="with --target: also write the chosen plan (layer → settings) as JSON that "
                            "`netcompress compress --replay FILE` runs again")
    group.add_argument("--replay", metavar="FILE",
                       help="run a plan written by --write-plan (or a report.json) instead of --method")
    group.add_argument("--eval-data", help="labelled held-out target inputs (.pt/.npy/.npz): the whole model is "
                                           "measured on them, with accuracy before and after")
    group.add_argument("--eval-labels", help="labels of --eval-data (.npy/.pt, or 'y' in an .npz --eval-data)")
    group.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT, metavar="SHARE",
                       help=f"refuse to write a classifier whose top-1 agreement with the original on held-out "
                            f"samples is below SHARE (default {DEFAULT_MIN_AGREEMENT})")
    group.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE, metavar="COS",
                       help=f"refuse to write a model of other outputs whose mean output cosine with the original "
                            f"is below COS (default {DEFAULT_MIN_COSINE})")
    group.add_argument("--allow-degraded", action="store_true",
                       help="write the model even below --min-agreement / --min-cosine (the Report still says so)")


def check_target(args: argparse.Namespace, flags_given: bool):
    """The ``Target`` and ``Recover`` of the arguments (``(None, None)`` without --target), checked before any work."""
    from netcompress.distill.recover import Recover
    from netcompress.planner.target import Target

    for name in ("min_agreement", "min_cosine"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.replay is not None and (args.recipe or flags_given or args.setting):
        raise ValueError("--replay runs the plan it is given; drop --recipe and the method's settings")
    if args.target is None:
        for flag in ("candidates", "recover", "write_plan"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} goes with --target; give a target or drop it")
        return None, None
    if args.recipe or args.replay or flags_given or args.setting:
        raise ValueError("--target chooses the methods and their settings; drop --recipe, --replay and the "
                         "method's settings (or drop --target)")
    target = Target.parse(args.target)
    recover = Recover(epochs=args.recover) if args.recover is not None else None
    if args.write_plan is not None:
        path = Path(args.write_plan)
        if path.exists() and not args.force:
            raise ValueError(f"{path} exists; choose another --write-plan file, or pass --force to replace it")
    return target, recover


def compress_to_target(model, calibration, target, recover, args: argparse.Namespace, eval_data, layers, exclude):
    """Run the planner as the arguments say; the Report."""
    from netcompress.compress import compress

    candidates = [c.strip() for c in args.candidates.split(",")] if args.candidates else None
    return compress(model, calibration, target=target, candidates=candidates, recover=recover, layers=layers,
                       exclude=exclude, positions=args.positions, progress=args.progress, eval_data=eval_data)


def read_eval_data(args: argparse.Namespace, prepare):
    """``(inputs, labels)`` of --eval-data, prepared as the calibration data is (``prepare``), or ``None``."""
    if args.eval_data is None:
        if args.eval_labels is not None:
            raise ValueError("--eval-labels labels --eval-data; pass --eval-data as well")
        return None
    from netcompress.cli.inputs import read_data, read_labels

    inputs = prepare(read_data(args.eval_data, tuple(args.image_size) if args.image_size else None))
    return inputs.float(), read_labels(args.eval_labels, args.eval_data, len(inputs))


def refuse_degraded(report, args: argparse.Namespace) -> None:
    """Raise (nothing written yet) if the whole model fell below the thresholds, unless --allow-degraded."""
    if report.fidelity is None:
        return
    why = report.fidelity.below(args.min_agreement, args.min_cosine)
    if why is not None and not args.allow_degraded:
        print(report)
        raise ValueError(f"{why}; nothing was written. Compress less (a larger --target, a smaller setting), or "
                         "pass --allow-degraded to write it anyway")


def write_plan(report, path: str | None, force: bool) -> None:
    """The chosen plan as JSON (layer → settings), written atomically: what --replay runs again."""
    if path is None:
        return
    import json

    from netcompress._core.atomic import atomic_write_bytes

    plan = {name: settings.to_json() for name, settings in report.recipe().items()}
    payload = json.dumps({"format": "netcompress.plan", "options": report.options, "plan": plan}, indent=2)
    if Path(path).exists() and not force:
        raise ValueError(f"{path} exists; choose another --write-plan file, or pass --force to replace it")
    atomic_write_bytes(path, payload.encode())


def read_plan(path: str) -> tuple[dict, dict]:
    """The plan and options of a --write-plan file or a report.json, every settings object rebuilt by the registry."""
    import json

    from netcompress._core.files import read_bytes
    from netcompress.registry import settings_from_json
    from netcompress.report import Report

    try:
        data = json.loads(read_bytes(path, "--replay file", 16 << 20))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"--replay {path} is not JSON ({error})") from None
    if isinstance(data, dict) and data.get("format") == "netcompress.plan":
        plan, options = data.get("plan"), data.get("options", {})
        if not isinstance(plan, dict) or not plan or not isinstance(options, dict):
            raise ValueError(f"--replay {path}: 'plan' must map layer names to settings; write it again with "
                             "--write-plan")
        return {n: settings_from_json(s, f"--replay {path}, layer {n!r}") for n, s in plan.items()}, options
    report = Report.from_dict(data)
    return report.recipe(), report.options
