"""The ``netcompress`` command line (:mod:`.main`) and how it reads models and data (:mod:`.inputs`)."""

from netcompress.cli.main import main

__all__ = ["main"]
