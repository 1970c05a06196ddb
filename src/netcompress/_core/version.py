"""The version of netcompress, in one place (the package and the files it writes read it here)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
