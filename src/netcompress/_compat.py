"""Import paths of netcompress 0.1's flat layout, kept working for one release.

``import netcompress.io`` or ``from netcompress.container import storage_table`` still work:
a finder on ``sys.meta_path`` answers each old path with a module that looks names up in
their new homes, and warns once (``DeprecationWarning``) with the path to use instead.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# old module → the modules that now hold its names, first the one to name in the warning
MOVED: dict[str, tuple[str, ...]] = {
    "netcompress.plan": ("netcompress.lowrank.plan",),
    "netcompress.prune_units": ("netcompress.prune.structured",),
    "netcompress._graph": ("netcompress.prune._dependency",),
    "netcompress.lowbit": ("netcompress.quantize.lowbit",),
    "netcompress.io": ("netcompress.storage.io",),
    "netcompress.modules": ("netcompress._description", "netcompress._layers"),
    "netcompress.codec": ("netcompress.storage.codec",),
    "netcompress.container": ("netcompress.storage.container", "netcompress.storage.tables",
                              "netcompress.storage._header"),
    "netcompress._atomic": ("netcompress.storage.atomic",),
    "netcompress.train": ("netcompress.distill.finetune",),
    "netcompress.inputs": ("netcompress.cli.inputs",),
    "netcompress.data": ("netcompress.prototype.data",),
    "netcompress.models": ("netcompress.prototype.models",),
    "netcompress.experiments": ("netcompress.prototype.experiments",),
    **{f"netcompress.experiments.{name}": (f"netcompress.prototype.experiments.{name}",)
       for name in ("deep_compression", "distillation", "domain_transfer", "plots", "real_models")},
}


class _Alias(types.ModuleType):
    """A module whose attributes are read from the modules that now hold them."""

    def __init__(self, name: str, homes: tuple[str, ...]):
        super().__init__(name, f"Moved to {homes[0]} (netcompress 0.2).")
        self._homes = homes

    def __getattr__(self, attribute: str):
        for home in self._homes:
            module = importlib.import_module(home)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} (now {self._homes[0]}) has no attribute {attribute!r}")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _Alias(spec.name, MOVED[spec.name])

    def exec_module(self, module) -> None:
        warnings.warn(f"{module.__name__} moved to {MOVED[module.__name__][0]}; the old path goes in the next "
                      "release", DeprecationWarning, stacklevel=2)
        if MOVED[module.__name__][0].endswith("experiments"):
            module.__path__ = []  # a package: its old submodules are aliases too


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=fullname.endswith("experiments"))


def install() -> None:
    """Answer the old import paths (once per interpreter)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())


def moved_names(module: str, names: dict[str, str]):
    """A module ``__getattr__`` answering names that moved out of ``module`` (name → new module), with a warning."""

    def __getattr__(attribute: str):
        if attribute not in names:
            raise AttributeError(f"module {module!r} has no attribute {attribute!r}")
        warnings.warn(f"{module}.{attribute} moved to {names[attribute]}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(names[attribute]), attribute)

    return __getattr__
