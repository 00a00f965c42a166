"""`python -m durably.cli`: the same as the `durably` command."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
