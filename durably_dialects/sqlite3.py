"""The embedded default: stdlib `sqlite3`, WAL mode, one writer per process at a time.

URLs: `sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite://` (in memory).
Query options: `?synchronous=NORMAL|FULL|OFF` (default NORMAL, durable across process
crashes in WAL mode; FULL also survives power loss), `?timeout=SECONDS` (busy timeout
for other processes' write locks, default 30).

Every write transaction is `BEGIN IMMEDIATE` under a lock shared by all connections to
the same file in this process: threads of one process queue on that lock instead of
spinning on SQLite's busy handler, so they never see `database is locked`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sa_sqlite

from durably import ConfigurationError, DialectNotFoundError, Result, hookimpl

SCHEMES = ("sqlite",)

_file_locks: dict[str, threading.RLock] = {}
_file_locks_guard = threading.Lock()


def _lock_for(path: str) -> threading.RLock:
    key = os.path.realpath(path)
    with _file_locks_guard:
        lock = _file_locks.get(key)
        if lock is None:
            lock = _file_locks[key] = threading.RLock()
        return lock


def parse_sqlite_url(url: str) -> tuple[str | None, dict[str, str]]:
    """(file path or None for memory, query options) of a `sqlite://` URL."""
    if not url.startswith("sqlite://"):
        raise DialectNotFoundError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://") :]
    rest, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    if rest in ("", "/", "/:memory:"):
        return None, options
    if not rest.startswith("/"):
        raise DialectNotFoundError(
            f"bad sqlite URL {url!r}: use sqlite:///relative.db, sqlite:////absolute.db or sqlite://"
        )
    return rest[1:], options


class _Conn:
    """Adapts a sqlite3 connection to the core's Connection protocol."""

    __slots__ = ("_raw",)

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def execute(self, sql: str, params: Any = ()) -> Result:
        cur = self._raw.execute(sql, params)
        if cur.description is None:  # a write without RETURNING: nothing to fetch
            return Result((), cur.rowcount)
        rows = cur.fetchall()
        return Result(rows, len(rows) if rows and cur.rowcount < 0 else cur.rowcount)

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        self._raw.executemany(sql, params)


class SqliteDialect:
    """durably's Dialect over the stdlib sqlite3 module."""

    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    skip_locked = False
    returning = sqlite3.sqlite_version_info >= (3, 35)

    def __init__(self, url: str) -> None:
        self.url = url
        path, options = parse_sqlite_url(url)
        self.path = path
        sync = options.get("synchronous", "NORMAL").upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(
                f"bad synchronous={sync!r} in {url!r}: use OFF, NORMAL, FULL or EXTRA"
            )
        self.synchronous = sync
        self.timeout = float(options.get("timeout", "30"))
        self.sqlalchemy_dialect = sa_sqlite.dialect()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        if path is None:
            # one shared connection: a private in-memory database per dialect instance
            self._lock: threading.RLock = threading.RLock()
            self._shared: sqlite3.Connection | None = self._open(":memory:")
        else:
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise ConfigurationError(f"directory {directory!r} for {url!r} does not exist")
            self._lock = _lock_for(path)
            self._shared = None

    def _open(self, target: str) -> sqlite3.Connection:
        raw = sqlite3.connect(
            target, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        if target != ":memory:":
            self._enable_wal(raw, target)
        raw.execute(f"PRAGMA synchronous={self.synchronous}")
        self._all.append(raw)
        return raw

    def _enable_wal(self, raw: sqlite3.Connection, target: str) -> None:
        # switching to WAL needs a moment of exclusive access and ignores the busy
        # timeout, so another process's open transaction makes it fail at once: retry
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                mode = raw.execute("PRAGMA journal_mode=WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        if mode is None or str(mode[0]).lower() != "wal":
            raise RuntimeError(f"could not switch {target!r} to WAL mode (got {mode!r})")

    def _raw(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"the database {self.url!r} is closed")
        if self._shared is not None:
            return self._shared
        raw: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if raw is None:
            assert self.path is not None
            raw = self._local.conn = self._open(self.path)
        return raw

    @contextmanager
    def transaction(self) -> Iterator[_Conn]:
        raw = self._raw()
        with self._lock:
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield _Conn(raw)
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[_Conn]:
        raw = self._raw()
        if self._shared is not None:
            with self._lock:
                yield _Conn(raw)
        else:
            yield _Conn(raw)

    def migrate(self, migrator: Any) -> None:
        raw = self._raw()
        engine = sa.create_engine("sqlite://", creator=lambda: raw, poolclass=sa.pool.StaticPool)

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # serialises concurrent migrate() calls across processes: the second waits
            # here, then finds the tables at head and does nothing
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        try:
            with self._lock, engine.begin() as conn:
                migrator.upgrade(conn)
        finally:
            engine.dispose(close=False)

    def close(self) -> None:
        self._closed = True
        for raw in self._all:
            try:
                raw.close()
            except sqlite3.Error:
                pass
        self._all.clear()


class Sqlite3Plugin:
    """Registers the stdlib sqlite3 adapter for `sqlite://` URLs."""

    @hookimpl
    def durably_dialect_for_url(self, url: str) -> SqliteDialect | None:
        if url.startswith("sqlite://"):
            return SqliteDialect(url)
        return None

    @hookimpl
    def durably_dialect_schemes(self) -> list[str]:
        return list(SCHEMES)


plugin = Sqlite3Plugin()
