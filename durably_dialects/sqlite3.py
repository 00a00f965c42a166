"""The embedded default: stdlib `sqlite3`, WAL mode, one writer per process at a time.

URLs: `sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite://` (in memory).
Query options: `?synchronous=NORMAL|FULL|OFF` (default NORMAL, durable across process
crashes in WAL mode; FULL also survives power loss), `?timeout=SECONDS` (busy timeout
for other processes' write locks, default 30); any other option is an error.

Every write transaction is `BEGIN IMMEDIATE` under a lock shared by all connections to
the same file in this process: threads of one process queue on that lock instead of
spinning on SQLite's busy handler, so they never see `database is locked`.

Connections to a file come from a small pool, checked out for one `transaction()` or
`read()` and given back after it: at most `IDLE_CONNECTIONS` stay open while idle, however
many threads came and went (thread pools, a thread per request), and a thread running
transactions in a row gets the same connection back. A writer checks out only once it
holds the lock, so queued writers hold no connection. A connection left inside a
transaction (its ROLLBACK failed) or closed under its user is dropped, never reused.
"""

from __future__ import annotations

import math
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

from durably import ConfigurationError, DialectNotFoundError, Result, hookimpl, redact_url

SCHEMES = ("sqlite",)
# the query options of a sqlite URL
OPTIONS = ("synchronous", "timeout")
# idle connections a file's pool keeps open; more are opened while more threads read at once
IDLE_CONNECTIONS = 4

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
    """(file path or None for memory, query options) of a `sqlite://` URL.

    Only `OPTIONS` are taken: an unknown one (a typo, an option of another driver) is a
    `ConfigurationError` rather than a setting silently ignored.
    """
    if not url.startswith("sqlite://"):
        raise DialectNotFoundError(f"not a sqlite URL: {redact_url(url)!r}")
    rest = url[len("sqlite://") :]
    rest, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(name) for name in unknown)} in {redact_url(url)!r}; "
            f"a sqlite URL takes {' and '.join(OPTIONS)}"
        )
    if rest in ("", "/", "/:memory:"):
        return None, options
    if not rest.startswith("/"):
        raise DialectNotFoundError(
            f"bad sqlite URL {redact_url(url)!r}: "
            "use sqlite:///relative.db, sqlite:////absolute.db or sqlite://"
        )
    return rest[1:], options


def _timeout(url: str, text: str) -> float:
    """The `timeout` option: seconds >= 0 to wait for another process's write lock."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigurationError(
            f"bad timeout={text!r} in {redact_url(url)!r}: use a number of seconds >= 0"
        )
    return value


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


def sqlite_error_kind(exc: BaseException) -> str | None:
    """The Dialect's `error_kind` for an error of the stdlib sqlite3 module."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return "storage_full"
    if code == sqlite3.SQLITE_TOOBIG:
        return "too_large"
    if "no such table" in str(exc):
        return "missing_schema"
    return None


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
                f"bad synchronous={sync!r} in {redact_url(url)!r}: use OFF, NORMAL, FULL or EXTRA"
            )
        self.synchronous = sync
        self.timeout = _timeout(url, options.get("timeout", "30"))
        self.sqlalchemy_dialect = sa_sqlite.dialect()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []  # LIFO: the warmest connection first
        self._open_conns: set[sqlite3.Connection] = set()  # idle and checked out
        self._closed = False
        if path is None:
            # one shared connection: a private in-memory database per dialect instance
            self._lock: threading.RLock = threading.RLock()
            self._shared: sqlite3.Connection | None = self._open(":memory:")
            self._open_conns.add(self._shared)
        else:
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise ConfigurationError(
                    f"directory {directory!r} for {redact_url(url)!r} does not exist"
                )
            self._lock = _lock_for(path)
            self._shared = None

    def error_kind(self, exc: BaseException) -> str | None:
        return sqlite_error_kind(exc)

    def _open(self, target: str) -> sqlite3.Connection:
        raw = sqlite3.connect(
            target, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            if target != ":memory:":
                self._enable_wal(raw, target)
            raw.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            raw.close()  # a failed open must not hold the file until garbage collection
            raise
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

    def _checkout(self) -> sqlite3.Connection:
        """An idle connection of the pool, or a new one; the memory database's shared one."""
        with self._pool_lock:
            if self._closed:
                raise RuntimeError(f"the database {redact_url(self.url)!r} is closed")
            if self._shared is not None:
                return self._shared
            if self._idle:
                return self._idle.pop()
        assert self.path is not None
        raw = self._open(self.path)
        with self._pool_lock:
            if not self._closed:
                self._open_conns.add(raw)
                return raw
        raw.close()
        raise RuntimeError(f"the database {redact_url(self.url)!r} is closed")

    def _checkin(self, raw: sqlite3.Connection) -> None:
        """Give `raw` back to the pool, or close it: broken, surplus, or the pool is closed."""
        if raw is self._shared:
            return
        try:
            reusable = not raw.in_transaction
        except sqlite3.Error:  # closed under its user
            reusable = False
        with self._pool_lock:
            if reusable and not self._closed and len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(raw)
                return
            self._open_conns.discard(raw)
        _close_quietly(raw)

    @contextmanager
    def transaction(self) -> Iterator[_Conn]:
        with self._lock:
            raw = self._checkout()
            try:
                raw.execute("BEGIN IMMEDIATE")
                try:
                    yield _Conn(raw)
                    raw.execute("COMMIT")
                except BaseException:
                    if raw.in_transaction:
                        raw.execute("ROLLBACK")
                    raise
            finally:
                self._checkin(raw)

    @contextmanager
    def read(self) -> Iterator[_Conn]:
        raw = self._checkout()
        if raw is self._shared:
            with self._lock:
                yield _Conn(raw)
            return
        try:
            yield _Conn(raw)
        finally:
            self._checkin(raw)

    def migrate(self, migrator: Any) -> None:
        with self._lock:
            raw = self._checkout()
            try:
                self._migrate_on(raw, migrator)
            finally:
                self._checkin(raw)

    @staticmethod
    def _migrate_on(raw: sqlite3.Connection, migrator: Any) -> None:
        engine = sa.create_engine("sqlite://", creator=lambda: raw, poolclass=sa.pool.StaticPool)

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # serialises concurrent migrate() calls across processes: the second waits
            # here, then finds the tables at head and does nothing
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        try:
            with engine.begin() as conn:
                migrator.upgrade(conn)
        finally:
            engine.dispose(close=False)

    def close(self) -> None:
        """Close every connection, checked-out ones included (their users then fail)."""
        with self._pool_lock:
            self._closed = True
            conns = list(self._open_conns)
            self._open_conns.clear()
            self._idle.clear()
        for raw in conns:
            _close_quietly(raw)


def _close_quietly(raw: sqlite3.Connection) -> None:
    try:
        raw.close()
    except sqlite3.Error:
        pass


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
