"""The command line's view of the settings classes: one flag per field, ``netcompress methods``, per-method help.

Every field of every registered method's settings class becomes a flag (``bits`` → ``--bits``,
``group_size`` → ``--group-size``); its value is read as YAML (``4``, ``0.5``, ``false``, ``auto``,
``{fc1: 4, fc2: 8}`` for a per-layer value) and checked by the settings class itself, so the
command line, Python and recipes refuse the same values with the same sentence.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping

from netcompress.registry import METHODS, Method

__all__ = ["add_setting_flags", "describe_method", "flag_values", "methods_table", "setting_fields"]


def setting_fields() -> dict[str, list[tuple[Method, dataclasses.Field]]]:
    """Field name → the (method, field) pairs that have it, over every registered method."""
    fields: dict[str, list[tuple[Method, dataclasses.Field]]] = {}
    for chosen in METHODS.values():
        for f in dataclasses.fields(chosen.settings_class):
            fields.setdefault(f.name, []).append((chosen, f))
    return fields


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> str:
    return "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"


def _yaml(text: str) -> object:
    """A flag's value as YAML; ``fc1=4,fc2=8`` is a per-layer value (layer name → value)."""
    import yaml

    if "=" in text and not text.lstrip().startswith("{"):
        pairs = [part.partition("=") for part in text.split(",") if part.strip()]
        if any(not sep or not key.strip() for key, sep, _ in pairs):
            raise argparse.ArgumentTypeError(f"{text!r} must look like name=value,name=value")
        return {key.strip(): _yaml(value) for key, _, value in pairs}
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number, word, list or mapping") from None


def add_setting_flags(parser: argparse.ArgumentParser, method: str | None = None) -> None:
    """A flag for every settings field; with ``method``, only that method's are shown in ``--help``."""
    group = parser.add_argument_group(
        f"settings of {method}" if method else "method settings (`netcompress methods` lists each method's; "
                                               "`--method NAME --help` shows one)")
    for name, owners in sorted(setting_fields().items()):
        if name == "method":
            continue
        mine = [f for chosen, f in owners if chosen.name == method]
        if method is not None and not mine:
            shown = argparse.SUPPRESS
        elif mine:
            shown = f"{mine[0].type}, {_default(mine[0])}"
        else:
            shown = f"{owners[0][1].type}; of {', '.join(sorted(c.name for c, _ in owners))}"
        group.add_argument(_flag(name), dest=f"setting_{name}", type=_yaml, default=None, metavar="VALUE", help=shown)


def flag_values(args: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags: field name → value."""
    return {key[len("setting_"):]: value for key, value in vars(args).items()
            if key.startswith("setting_") and value is not None}


def _summary(chosen: Method) -> str:
    doc = (chosen.settings_class.__doc__ or chosen.fn.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def describe_method(name: str) -> str:
    """One method: what it is, its family, the layers it takes, and each setting with its type and default."""
    chosen = METHODS[name]
    lines = [f"{name} ({chosen.settings_class.__name__}, {chosen.family} family): {_summary(chosen)}",
             f"  takes: {', '.join(t.__name__ for t in chosen.accepts)}; "
             f"{'needs target data' if chosen.needs_stats else 'target data optional'}"]
    for f in dataclasses.fields(chosen.settings_class):
        lines.append(f"  {_flag(f.name):<16} {f.type} ({_default(f)})")
    return "\n".join(lines)


def methods_table(names: Mapping[str, Method] | None = None) -> str:
    """Every registered method, as ``netcompress methods`` prints it."""
    return "\n\n".join(describe_method(name) for name in (names or METHODS))
