"""``python -m experiments [NAME]`` (what ``make demo`` runs): the seeds' tables reproduced on real data.

The experiments live at the repository root, outside the installed library: they use its
public API and a few of its internals, and make no API promise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

NAMES = ("domain-transfer", "deep-compression", "students", "low-bit", "recovery", "rankings", "decompositions", "n2n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments",
                                     description="reproduce the seeds' tables on real data shipped with Python packages")
    parser.add_argument("name", nargs="?", default="domain-transfer", choices=NAMES)
    parser.add_argument("--out", help="where results.json and the plots go (default netcompress-<name>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    return parser


def run(name: str, out: str | None = None, seed: int = 0, plots: bool = True) -> Path:
    """Run experiment ``name``; its results.json (and plots) go to ``out``. Returns the folder."""
    folder = Path(out or ("netcompress-demo" if name == "domain-transfer" else f"netcompress-{name}"))
    if name in ("students", "low-bit", "recovery"):
        from experiments import distillation
        from netcompress._core.atomic import atomic_write_bytes

        chosen = {"students": distillation.students, "low-bit": distillation.low_bit, "recovery": distillation.recovery}
        result = chosen[name](seed=seed)
        atomic_write_bytes(folder / "results.json", json.dumps(result, indent=1).encode())
        print(f"wrote {folder / 'results.json'}")
        return folder
    if name == "deep-compression":
        from experiments.deep_compression import run as deep_compression

        deep_compression(folder, seed=seed)
        return folder
    from experiments import decompositions, domain_transfer, n2n, rankings

    module = {"rankings": rankings, "decompositions": decompositions, "n2n": n2n, "domain-transfer": domain_transfer}
    module[name].run(folder, seed=seed, plots=plots)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args.name, args.out, args.seed, plots=not args.no_plots)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
