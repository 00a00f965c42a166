"""Runs one benchmark cell in this fresh process: `cell.py MODULE FUNCTION JSON_KWARGS`.

The function's result (a dict) is printed as the last line of stdout, as JSON.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys


def main() -> int:
    module, function, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    logging.basicConfig(level=logging.ERROR)
    result = getattr(importlib.import_module(module), function)(**kwargs)
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
