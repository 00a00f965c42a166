"""`durably dialects`: the installed dialect plugins, their schemes and drivers, and what
to install for the schemes durably knows but cannot open here."""

from __future__ import annotations

import argparse
from typing import Any

from .._dialect import (
    KNOWN_SCHEMES,
    _load_errors,
    install_hint,
    installed_schemes,
    iter_plugins,
    plugin_drivers,
)
from .output import console, dialects_view, to_json


def listing() -> dict[str, Any]:
    """`{schemes, installed, missing, failed}`: what `durably dialects --json` prints.

    `schemes` are the schemes that open here; each installed plugin has its `schemes` and,
    when durably knows them, its `drivers` (whether each imports); `missing` are the known
    schemes that do not open, with what to install.
    """
    plugins: list[dict[str, Any]] = []
    for name, plugin in iter_plugins():
        announce = getattr(plugin, "durably_dialect_schemes", None)
        schemes = sorted(announce() or []) if callable(announce) else []
        module = getattr(plugin, "__name__", None) or type(plugin).__module__
        entry: dict[str, Any] = {"name": name, "module": module, "schemes": schemes}
        drivers = plugin_drivers(name)
        if drivers is not None:
            entry["drivers"] = drivers
        plugins.append(entry)
    plugins.sort(key=lambda p: str(p["name"]))
    installed = installed_schemes()
    # an extra counts as installed once any of its schemes is: `postgresql://` alone
    # means psycopg2 to SQLAlchemy, but `durably[postgres]` is there all the same
    extras_present = {KNOWN_SCHEMES[s] for s in installed if s in KNOWN_SCHEMES}
    missing = [
        {"scheme": scheme, "extra": extra, "install": install_hint(scheme)}
        for scheme, extra in sorted(KNOWN_SCHEMES.items())
        if scheme not in installed and extra not in extras_present
    ]
    failed = [{"name": name, "error": error} for name, error in sorted(_load_errors.items())]
    return {"schemes": installed, "installed": plugins, "missing": missing, "failed": failed}


def dialects(args: argparse.Namespace) -> int:
    """List the dialects: a table, or JSON with `--json`."""
    found = listing()
    if args.json:
        print(to_json(found))
    else:
        console().print(dialects_view(found["installed"], found["missing"], found["failed"]))
    return 0
