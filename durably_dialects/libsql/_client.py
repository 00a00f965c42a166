"""The transports on `libsql-client` (archived upstream, still served by self-hosted sqld).

- `ws(s)://` (Hrana 2 over WebSocket) and `file:`: interactive transactions. The client
  opens them with a deferred `BEGIN`; durably needs the write lock at once, so the empty
  transaction is replaced by `BEGIN IMMEDIATE` on the same stream.
- `http(s)://` (HTTP API v1): every request is a fresh stream, so there is no interactive
  transaction. `transaction()` buffers the statements and sends them as one atomic batch
  when the block exits; their cursors are filled in then (durably's store reads results
  only after the block).

The client is async; it runs on an event loop in a daemon thread of this adapter, so an
instance that is never closed cannot hang the interpreter at exit (the client's own sync
wrapper uses a non-daemon thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import aiohttp
import libsql_client  # type: ignore[import-untyped]

from ._common import (
    LibsqlDatabaseError,
    PendingCursor,
    ResultCursor,
    classify,
    positional,
    result_cursor,
)
from ._url import LibsqlTarget

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop in a daemon thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="durably-libsql-client", daemon=True
        )
        self._thread.start()

    def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


def _cursor(sql: str, result: libsql_client.ResultSet) -> ResultCursor:
    rows = [row.astuple() for row in result.rows]
    return result_cursor(sql, len(result.columns), rows, result.rows_affected)


class _ReadConn:
    """Statements outside a transaction: each one runs on its own."""

    __slots__ = ("_transport",)

    def __init__(self, transport: ClientTransport) -> None:
        self._transport = transport

    def execute(self, sql: str, params: Any = ()) -> ResultCursor:
        return self._transport.execute_alone(sql, params)

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        for one in params:
            self.execute(sql, one)


class _TxConn:
    """Statements of an interactive transaction."""

    __slots__ = ("_transport", "_tx")

    def __init__(self, transport: ClientTransport, tx: Any) -> None:
        self._transport = transport
        self._tx = tx

    def execute(self, sql: str, params: Any = ()) -> ResultCursor:
        args = positional(params)
        result = self._transport.call(lambda client: self._tx.execute(sql, args))
        return _cursor(sql, result)

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        for one in params:
            self.execute(sql, one)


class BatchConn:
    """Statements of a transaction sent as one batch: results come after the block."""

    __slots__ = ("cursors", "statements")

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[Any]]] = []
        self.cursors: list[PendingCursor] = []

    def execute(self, sql: str, params: Any = ()) -> PendingCursor:
        cursor = PendingCursor(sql)
        self.statements.append((sql, positional(params)))
        self.cursors.append(cursor)
        return cursor

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        for one in params:
            self.execute(sql, one)


class ClientTransport:
    """libSQL through `libsql-client`: interactive on ws(s)/file, batches on http(s)."""

    def __init__(self, target: LibsqlTarget) -> None:
        self._target = target
        self.interactive = target.transport not in ("http", "https")
        self._file = target.transport == "file"
        self._guard = threading.Lock()
        self._loop: _LoopThread | None = None
        self._client: Any = None
        self._closed = False

    # -- the client ------------------------------------------------------------------

    def _ensure(self) -> tuple[_LoopThread, Any]:
        """The loop and the client, created on first use (resolving a URL connects nowhere)."""
        with self._guard:
            if self._closed:
                raise RuntimeError("this libSQL database is closed")
            if self._client is None:
                loop = _LoopThread()
                target = self._target

                async def create() -> Any:
                    return libsql_client.create_client(
                        target.driver_url(), auth_token=target.auth_token
                    )

                try:
                    client = self._mapped(loop, lambda: loop.run(create))
                    if self._file:
                        self._enable_wal(loop, client)
                except BaseException:
                    loop.stop()
                    raise
                self._loop, self._client = loop, client
            assert self._loop is not None
            return self._loop, self._client

    def _enable_wal(self, loop: _LoopThread, client: Any) -> None:
        """Put a local file in WAL mode, so that readers never block the writer."""
        deadline = time.monotonic() + self._target.timeout
        while True:
            try:
                self._mapped(
                    loop, lambda: loop.run(lambda: client.execute("PRAGMA journal_mode=WAL"))
                )
                return
            except LibsqlDatabaseError as exc:
                if not exc.code.startswith("SQLITE_BUSY") or time.monotonic() >= deadline:
                    raise
            time.sleep(0.02)

    @staticmethod
    def _mapped(loop: _LoopThread, work: Callable[[], T]) -> T:
        try:
            return work()
        except libsql_client.LibsqlError as exc:
            raise classify(str(exc), exc.code) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise LibsqlDatabaseError(
                f"cannot reach the libSQL server: {exc!r}", "CONNECTION_ERROR"
            ) from exc

    def call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run `work(client)` on the client's loop, mapping its errors to the adapter's."""
        loop, client = self._ensure()
        return self._mapped(loop, lambda: loop.run(lambda: work(client)))

    def execute_alone(self, sql: str, params: Any) -> ResultCursor:
        args = positional(params)
        # a file: client opens a connection per statement with no busy timeout: a reader
        # can meet a lock for a moment (a checkpoint), so it tries again for a while
        deadline = time.monotonic() + (self._target.timeout if self._file else 0)
        while True:
            try:
                return _cursor(sql, self.call(lambda client: client.execute(sql, args)))
            except LibsqlDatabaseError as exc:
                if not (exc.code.startswith("SQLITE_BUSY") and time.monotonic() < deadline):
                    raise
            time.sleep(0.01)

    # -- transactions ----------------------------------------------------------------

    async def _begin(self, client: Any) -> Any:
        tx = client.transaction()
        try:
            if self._file:
                await tx.execute(f"PRAGMA busy_timeout = {int(self._target.timeout * 1000)}")
            await tx.execute("ROLLBACK")
            await tx.execute("BEGIN IMMEDIATE")
        except BaseException:
            tx.close()
            raise
        return tx

    @contextmanager
    def transaction(self) -> Iterator[_TxConn | BatchConn]:
        if not self.interactive:
            batch = BatchConn()
            yield batch
            self._send_batch(batch)
            return
        tx = self.call(self._begin)

        async def close() -> None:
            tx.close()

        try:
            yield _TxConn(self, tx)
            self.call(lambda client: tx.commit())
        except BaseException:
            try:
                self.call(lambda client: tx.rollback())
            except Exception:
                pass
            raise
        finally:
            try:
                self.call(lambda client: close())
            except Exception:
                pass

    def _send_batch(self, batch: BatchConn) -> None:
        if not batch.statements:
            return
        statements = list(batch.statements)
        results = self.call(lambda client: client.batch(statements))
        for cursor, (sql, _), result in zip(batch.cursors, statements, results, strict=True):
            cursor.fill(_cursor(sql, result))

    @contextmanager
    def read(self) -> Iterator[_ReadConn]:
        yield _ReadConn(self)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            loop, client = self._loop, self._client
            self._loop = self._client = None
        if loop is None:
            return
        try:
            loop.run(client.close)
        except Exception:
            pass
        loop.stop()
