"""What the libSQL transports share: the adapter's errors, result cursors, error mapping."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from durably import StoreError

_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)
_CODE_PATTERNS = (
    re.compile(r'code: "([A-Z_]+)"'),  # libsql: Debug form of a Hrana error
    re.compile(r"error code: ([A-Z_]+)"),  # libsql: a cursor step error
    re.compile(r'"code"\s*:\s*"([A-Z_]+)"'),  # libsql: an HTTP error body
)


class LibsqlDatabaseError(StoreError):
    """A libSQL driver or server error; `code` is the Hrana/SQLite code when known."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class LibsqlIntegrityError(LibsqlDatabaseError):
    """A UNIQUE (or other) constraint was violated: the Dialect's `integrity_errors`."""


class LibsqlStreamExpiredError(LibsqlDatabaseError):
    """The server closed a remote stream that stayed idle too long (`STREAM_EXPIRED`)."""


def classify(message: str, code: str | None) -> LibsqlDatabaseError:
    """The adapter's error for a driver error message and code (codes differ per driver)."""
    if not code or code == "UNKNOWN":
        code = next((m.group(1) for p in _CODE_PATTERNS if (m := p.search(message))), "UNKNOWN")
    if code == "STREAM_EXPIRED" or "STREAM_EXPIRED" in message:
        return LibsqlStreamExpiredError(message, "STREAM_EXPIRED")
    if code.startswith("SQLITE_CONSTRAINT") or "constraint failed" in message:
        # the local libsql driver gives SQLite's message only
        return LibsqlIntegrityError(message, "SQLITE_CONSTRAINT" if code == "UNKNOWN" else code)
    return LibsqlDatabaseError(message, code)


class ResultCursor:
    """The rows and rowcount of one executed statement, read at once.

    Rows are fetched when the statement runs, so a cursor read after its transaction
    ended sees the statement's own results (drivers that step lazily would otherwise
    run an UPDATE ... RETURNING after COMMIT).
    """

    __slots__ = ("_pos", "_rows", "rowcount")

    def __init__(self, rows: Sequence[Sequence[Any]], rowcount: int) -> None:
        self._rows = [tuple(r) for r in rows]
        self._pos = 0
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return row

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._pos = self._rows[self._pos :], len(self._rows)
        return rows


def result_cursor(
    sql: str, columns: int, rows: Sequence[Sequence[Any]], affected: int
) -> ResultCursor:
    """A ResultCursor with one rowcount rule for every driver: the changed rows of DML
    (the RETURNING rows when there are any), -1 for queries."""
    if not columns:
        return ResultCursor(rows, affected)
    return ResultCursor(rows, len(rows) if _RETURNING.search(sql) else -1)


class PendingCursor:
    """The cursor of a statement buffered in a batch: filled when the batch has run.

    Reading it earlier is a bug of the caller (durably's store reads results only after
    the transaction block), so it raises instead of guessing.
    """

    __slots__ = ("_result", "sql")

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self._result: ResultCursor | None = None

    def fill(self, result: ResultCursor) -> None:
        self._result = result

    def _ready(self) -> ResultCursor:
        if self._result is None:
            raise RuntimeError(
                "this libSQL transport sends a transaction as one batch when the block "
                "exits; a statement's results can only be read after that "
                f"(statement: {self.sql[:80]!r})"
            )
        return self._result

    @property
    def rowcount(self) -> int:
        return self._ready().rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._ready().fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._ready().fetchall()


def positional(params: Any) -> list[Any]:
    """Statement parameters as a list: the store compiles for SQLite's qmark style."""
    if params is None:
        return []
    if isinstance(params, (list, tuple)):
        return list(params)
    raise TypeError(
        f"the libSQL adapter takes positional (qmark) parameters, got {type(params).__name__}"
    )
