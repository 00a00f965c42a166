"""libSQL / Turso: one Dialect over two drivers, `libsql` (official) and `libsql-client`.

URLs (query options: `auth_token`, `driver`, `timeout`, `sync_url`, `sync_interval`):

| URL | default driver | transport |
|---|---|---|
| `libsql://HOST` | libsql | Hrana 3 over HTTPS (Turso Cloud) |
| `libsql+https://HOST`, `libsql+http://HOST:PORT` | libsql | Hrana 3 over HTTP(S) |
| `libsql+wss://HOST`, `libsql+ws://HOST:PORT` | libsql-client | Hrana 2 over WebSocket |
| `libsql+file:PATH` | libsql | a local file (`?sync_url=`: an embedded replica) |

`?driver=libsql-client` also serves `libsql://` (WebSocket), `libsql+http(s)://` (HTTP API
v1: no interactive transactions, so a transaction is sent as one atomic batch) and
`libsql+file:`. The token comes from `?auth_token=` (or `?authToken=`), else from the
environment variable `LIBSQL_AUTH_TOKEN`.

Nothing connects until the first statement. Writers of one process queue on a lock per
database, as in the sqlite3 adapter, so they never wait on the server's busy handling.
Driver errors become `LibsqlDatabaseError`; constraint violations `LibsqlIntegrityError`
(the Dialect's `integrity_errors`), whatever the driver and transport report.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.dialects import sqlite as sa_sqlite

from durably import ConfigurationError, DialectNotFoundError, hookimpl, redact_url, url_scheme

from ._common import (
    LibsqlDatabaseError,
    LibsqlIntegrityError,
    LibsqlStreamExpiredError,
    PendingCursor,
    ResultCursor,
)
from ._url import DRIVERS, SCHEMES, TOKEN_ENV, LibsqlTarget, parse_libsql_url

__all__ = [
    "DRIVERS",
    "SCHEMES",
    "TOKEN_ENV",
    "LibsqlDatabaseError",
    "LibsqlDialect",
    "LibsqlIntegrityError",
    "LibsqlPlugin",
    "LibsqlStreamExpiredError",
    "LibsqlTarget",
    "PendingCursor",
    "ResultCursor",
    "parse_libsql_url",
    "plugin",
]

_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


def _lock_for(key: str) -> threading.RLock:
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = threading.RLock()
        return lock


def _transport_class(url: str, driver: str) -> Any:
    """The transport class of `driver`, importing the driver: missing, it names the extra."""
    try:
        if driver == "libsql":
            from ._official import OfficialTransport

            return OfficialTransport
        from ._client import ClientTransport

        return ClientTransport
    except ImportError as exc:
        raise DialectNotFoundError(
            f"the {driver} driver for {redact_url(url)!r} is not installed ({exc}); "
            "install it with: pip install 'durably[libsql]'"
        ) from exc


class LibsqlDialect:
    """durably's Dialect over libSQL (see the module's docstring for URLs and drivers)."""

    integrity_errors: tuple[type[BaseException], ...] = (LibsqlIntegrityError,)
    skip_locked = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.target = parse_libsql_url(url)
        if not self.target.remote:
            directory = os.path.dirname(os.path.abspath(self.target.path))
            if not os.path.isdir(directory):
                raise ConfigurationError(
                    f"directory {directory!r} for {redact_url(url)!r} does not exist"
                )
        self.driver = self.target.driver
        # claims are one UPDATE ... RETURNING statement where the SQLite that runs them has
        # it (3.35+): always on servers and in the official driver's bundled libSQL; a
        # local file through libsql-client runs on the stdlib's sqlite3, whose SQLite varies
        self.returning = (
            self.target.remote or self.driver == "libsql" or sqlite3.sqlite_version_info >= (3, 35)
        )
        self.sqlalchemy_dialect = sa_sqlite.dialect()
        # a server's clock stamps heartbeats, so workers on several machines agree
        self.database_clock = self.target.remote
        self._transport = _transport_class(url, self.driver)(self.target)
        self._lock = _lock_for(self.target.lock_key())

    @property
    def interactive(self) -> bool:
        """False when a transaction is sent as one batch at the end of its block."""
        return bool(self._transport.interactive)

    def error_kind(self, exc: BaseException) -> str | None:
        """What a driver error means for the user (codes and messages differ per driver)."""
        if not isinstance(exc, LibsqlDatabaseError):
            return None
        message = str(exc)
        if exc.code.startswith("SQLITE_FULL") or "database or disk is full" in message:
            return "storage_full"
        if exc.code.startswith("SQLITE_TOOBIG") or "string or blob too big" in message:
            return "too_large"
        if "no such table" in message:
            return "missing_schema"
        return None

    def __repr__(self) -> str:
        return f"<LibsqlDialect {redact_url(self.url)} driver={self.driver}>"

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """An atomic write transaction: `BEGIN IMMEDIATE`, or one batch (see `interactive`)."""
        with self._lock, self._transport.transaction() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Any]:
        """Statements that run at once, each on its own, outside any write transaction."""
        with self._transport.read() as conn:
            yield conn

    def migrate(self, migrator: Any) -> None:
        """Run durably's alembic revisions as SQL through the driver (no SQLAlchemy engine).

        `migrator` (which wants a SQLAlchemy connection) is not used: the same revisions
        are rendered by alembic's offline mode; see `_migrate`.
        """
        from . import _migrate

        _migrate.migrate(self)

    def close(self) -> None:
        self._transport.close()


class LibsqlPlugin:
    """Registers the libSQL adapter for the `libsql` URL schemes."""

    @hookimpl
    def durably_dialect_for_url(self, url: str) -> LibsqlDialect | None:
        if url_scheme(url) in SCHEMES:
            return LibsqlDialect(url)
        return None

    @hookimpl
    def durably_dialect_schemes(self) -> list[str]:
        return list(SCHEMES)


plugin = LibsqlPlugin()
