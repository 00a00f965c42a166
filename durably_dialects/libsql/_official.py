"""The transport on the official `libsql` driver: local files, embedded replicas, and
remote databases over Hrana 3 HTTP (`libsql://`, `libsql+http(s)://`).

One driver connection per thread. Transactions are interactive (`BEGIN IMMEDIATE` ...
`COMMIT` on the connection; remotely, the statements share one stream through batons).
A remote stream that stayed idle dies on the server (`STREAM_EXPIRED`, about 10 s on
sqld); the driver cannot recover it, so the connection is reopened and the statement
sent again, which is safe only outside a transaction (or at its `BEGIN`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import libsql  # type: ignore[import-untyped]

from ._common import (
    LibsqlDatabaseError,
    LibsqlStreamExpiredError,
    ResultCursor,
    classify,
    positional,
    result_cursor,
)
from ._url import LibsqlTarget

_I32 = range(-(2**31), 2**31)


def _param(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value not in _I32:
        # libsql 0.1.x binds an int beyond 32 bits as a float, losing precision; SQLite
        # turns the decimal text back into an integer wherever one is expected
        return str(value)
    return value


class _Conn:
    """The core's Connection over one driver connection."""

    __slots__ = ("_conn", "_in_tx", "_transport")

    def __init__(self, transport: OfficialTransport, conn: Any, in_tx: bool) -> None:
        self._transport = transport
        self._conn = conn
        self._in_tx = in_tx

    def execute(self, sql: str, params: Any = ()) -> ResultCursor:
        if self._in_tx:
            return self._transport.execute_on(self._conn, sql, params)
        return self._transport.execute_outside(sql, params)

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        for one in params:
            self.execute(sql, one)


class OfficialTransport:
    """libSQL through the official `libsql` driver."""

    interactive = True

    def __init__(self, target: LibsqlTarget) -> None:
        self._target = target
        self._local = threading.local()
        self._conns: list[Any] = []
        self._guard = threading.Lock()
        self._closed = False

    # -- connections -----------------------------------------------------------------

    def _open(self) -> Any:
        t = self._target
        try:
            if t.remote:
                conn = libsql.connect(
                    t.driver_url(), auth_token=t.auth_token or "", isolation_level=None
                )
            elif t.sync_url is not None:
                options: dict[str, Any] = {"sync_url": t.sync_url}
                if t.sync_interval is not None:
                    options["sync_interval"] = t.sync_interval
                conn = libsql.connect(
                    t.path,
                    isolation_level=None,
                    timeout=t.timeout,
                    auth_token=t.auth_token or "",
                    **options,
                )
                conn.sync()
            else:
                conn = libsql.connect(t.path, isolation_level=None, timeout=t.timeout)
                self._enable_wal(conn)
        except ValueError as exc:
            raise classify(str(exc), None) from exc
        with self._guard:
            self._conns.append(conn)
        return conn

    def _enable_wal(self, conn: Any) -> None:
        # switching to WAL ignores the busy timeout: retry while another process holds a lock
        deadline = time.monotonic() + self._target.timeout
        while True:
            try:
                self.execute_on(conn, "PRAGMA journal_mode=WAL", ())
                return
            except LibsqlDatabaseError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _conn(self) -> Any:
        if self._closed:
            raise RuntimeError("this libSQL database is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    def _discard(self, conn: Any) -> None:
        """Forget a broken connection; this thread opens a new one on its next statement."""
        if getattr(self._local, "conn", None) is conn:
            del self._local.conn
        with self._guard:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except Exception:
            pass

    # -- statements ------------------------------------------------------------------

    def execute_on(self, conn: Any, sql: str, params: Any) -> ResultCursor:
        """Run one statement on `conn` and read its results at once."""
        try:
            cur = conn.execute(sql, [_param(v) for v in positional(params)])
            description = cur.description or ()
            rows = (cur.fetchall() or []) if description else []
            return result_cursor(sql, len(description), rows, cur.rowcount)
        except ValueError as exc:
            error = classify(str(exc), None)
        if isinstance(error, LibsqlStreamExpiredError):
            self._discard(conn)
        raise error

    def execute_outside(self, sql: str, params: Any) -> ResultCursor:
        """Run a statement outside a transaction, reopening an expired stream once."""
        try:
            return self.execute_on(self._conn(), sql, params)
        except LibsqlStreamExpiredError:
            return self.execute_on(self._conn(), sql, params)

    @contextmanager
    def transaction(self) -> Iterator[_Conn]:
        try:
            conn = self._conn()
            self.execute_on(conn, "BEGIN IMMEDIATE", ())
        except LibsqlStreamExpiredError:
            conn = self._conn()
            self.execute_on(conn, "BEGIN IMMEDIATE", ())
        try:
            yield _Conn(self, conn, in_tx=True)
            self.execute_on(conn, "COMMIT", ())
        except BaseException:
            self._rollback(conn)
            raise

    def _rollback(self, conn: Any) -> None:
        with self._guard:
            if conn not in self._conns:
                return  # discarded (its stream died): nothing is left to roll back
        try:
            if conn.in_transaction:
                self.execute_on(conn, "ROLLBACK", ())
        except Exception:
            # a connection whose state is unknown is not reused
            self._discard(conn)

    @contextmanager
    def read(self) -> Iterator[_Conn]:
        yield _Conn(self, None, in_tx=False)

    def close(self) -> None:
        self._closed = True
        with self._guard:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
