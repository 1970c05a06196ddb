"""``python -m netcompress.cli``: the same as ``python -m netcompress``."""

import sys

from netcompress.cli.main import main

sys.exit(main())
