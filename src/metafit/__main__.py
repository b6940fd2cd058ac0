"""``python -m metafit``: the same command line as ``metafit``."""

import sys

from metafit.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
