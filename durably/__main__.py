"""`python -m durably`: the same as the `durably` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
