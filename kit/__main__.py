"""`python -m kit`: the kit's command line (kit/cli.py)."""

import sys

from kit.cli import main

if __name__ == "__main__":
    sys.exit(main())
