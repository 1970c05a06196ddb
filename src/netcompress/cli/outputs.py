"""The command line's outputs: checked against each other before any work, and summed up after it."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["check_ncz_target", "check_onnx_target", "check_separate_outputs", "summary"]


def check_ncz_target(path: Path, output: Path, force: bool) -> None:
    from netcompress.storage.container import MAGIC

    if path.resolve() == output.resolve():
        raise ValueError(f"--ncz {path} is the -o directory; give the container a file name of its own")
    if path.is_dir():
        raise ValueError(f"--ncz {path} is a directory; give a file name such as model.ncz")
    if path.exists() and not force:
        with open(path, "rb") as handle:
            ours = handle.read(len(MAGIC)) == MAGIC
        if not ours:
            raise ValueError(f"{path} exists and is not a netcompress container; choose another --ncz path, "
                             "or pass --force to replace it")


def check_separate_outputs(args: argparse.Namespace) -> None:
    """Refuse outputs that are the same path or nested in one another, before any work.

    Each output is staged beside its final path and renamed into place whole, so a directory that
    holds another output would be refused as foreign (or left half-written) after the compression ran.
    The one nesting allowed is ``--ncz`` inside ``-o``: ``nc.save`` leaves files it did not write alone.
    """
    outputs = [("-o", args.output), ("--save-pretrained", getattr(args, "save_pretrained", None)),
               ("--ncz", args.ncz)]
    given = [(flag, Path(path), Path(path).resolve()) for flag, path in outputs if path is not None]
    for flag, path, resolved in given:
        for other, other_path, other_resolved in given:
            if other == flag or (flag, other) == ("--ncz", "-o"):
                continue  # --ncz inside -o is allowed, the same path refused by _check_ncz_target
            if resolved == other_resolved and "--ncz" not in (flag, other) and flag < other:
                raise ValueError(f"{flag} {path} and {other} {other_path} are the same path; give each output "
                                 "a path of its own")
            if other_resolved in resolved.parents:
                raise ValueError(f"{flag} {path} is inside the {other} {'file' if other == '--ncz' else 'directory'} "
                                 f"{other_path}; outputs do not nest, so give {flag} and {other} separate paths")


def summary(report, output: Path, args: argparse.Namespace) -> str:
    """Parameters and bytes, before and after: the weights as given, and the files as written."""
    on_disk = sum(f.stat().st_size for f in output.iterdir() if f.is_file())
    given = Path(args.weights) if getattr(args, "weights", None) else None
    given_bytes = (given.stat().st_size if given.is_file() else sum(f.stat().st_size for f in given.iterdir()
                                                                   if f.is_file())) if given is not None else None
    text = f"{report.params_before:,} → {report.params_after:,} parameters in the reported layers; " \
           f"{on_disk:,} bytes on disk"
    return text + (f" (the --weights given hold {given_bytes:,})" if given_bytes is not None else "")


def check_onnx_target(args: argparse.Namespace) -> Path:
    """The --onnx path, refused before anything is read if it is the --load directory or a foreign file."""
    from netcompress.storage.onnx import is_netcompress_onnx

    path = Path(args.onnx)
    if args.load and path.resolve() == Path(args.load).resolve():
        raise ValueError(f"--onnx {path} is the --load directory; give the ONNX file a name of its own")
    if path.is_dir():
        raise ValueError(f"--onnx {path} is a directory; give a file name such as model.onnx")
    if path.exists() and not args.force and not is_netcompress_onnx(path):
        raise ValueError(f"{path} exists and is not an ONNX file netcompress wrote; choose another --onnx path, "
                         "or pass --force to replace it")
    return path
