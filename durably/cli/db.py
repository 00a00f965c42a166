"""Opening the database a command names: an existing one, never a new empty file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._app import Durably, create_durably
from .._dialect import redact_url
from .._errors import DurablyError


def sqlite_path(url: str) -> str | None:
    """The file a `sqlite:///` URL names; None for memory or any other URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("sqlite", "sqlite+pysqlite"):
        return None
    path = rest.partition("?")[0]
    if path in ("", "/", "/:memory:") or not path.startswith("/"):
        return None
    return path[1:]


@contextmanager
def existing(url: str, **options: Any) -> Iterator[Durably]:
    """`create_durably(url, **options)`, closed after; a missing SQLite file is an error,
    not created (the commands that read or change runs never create a database)."""
    path = sqlite_path(url)
    if path is not None and not Path(path).exists():
        raise DurablyError(
            f"no database at {path!r}: the file does not exist "
            f"(`durably migrate {redact_url(url)}` creates it)"
        )
    with create_durably(url, **options) as durably:
        yield durably
