"""``python -m netcompress``: the same command as ``netcompress``."""

import sys

from netcompress.cli.main import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
