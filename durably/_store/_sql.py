"""What every part of the store shares: compiled statements, transactions, clocks, rows.

Statements are SQLAlchemy Core expressions over `schema.metadata`, compiled once per
dialect and cached; the dialect only executes the resulting SQL text.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_json

from .._clock import Clock, from_db, to_db
from .._dialect import Connection, Dialect, redact_url
from .._errors import DurablyError, StoreError
from .._events import Progress
from .._records import LogEntry, Run, StepRecord
from .._schema import logs, payloads, runs, steps

logger = logging.getLogger("durably.store")

P = sa.bindparam

# The current time in the stored form (see clock.to_db), computed by the database
# server: on servers shared by many machines, staleness is judged by one clock.
_DATABASE_NOW: dict[str, str] = {
    "postgresql": "to_char(clock_timestamp() AT TIME ZONE 'UTC', "
    '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')',
    "mysql": "DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%fZ')",
    "mariadb": "DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%fZ')",
    # SQLite has milliseconds only; padded to the same fixed width
    "sqlite": "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')",
}

# how often a transaction that lost a deadlock (or a serialisation conflict) is rerun
_DEADLOCK_ATTEMPTS = 5


def dumps(value: Any) -> str:
    """Compact JSON text of a JSON-ready value (NaN and infinities become null, as in steps)."""
    return to_json(value).decode()


def loads(text: str | None) -> Any:
    """Parse stored JSON text (None stays None)."""
    return None if text is None else json.loads(text)


class Sql:
    """One compiled statement: SQL text plus a binder for the driver's paramstyle."""

    __slots__ = ("_defaults", "_names", "text")

    def __init__(self, stmt: sa.sql.ClauseElement, dialect: Any) -> None:
        compiled: Any = stmt.compile(dialect=dialect)
        self.text: str = compiled.string
        # values fixed in the statement itself (literals); the rest must be passed in
        self._defaults: dict[str, Any] = {
            name: bind.value for name, bind in compiled.binds.items() if not bind.required
        }
        names = compiled.positiontup if compiled.positional else None
        self._names: tuple[str, ...] | None = tuple(names) if names is not None else None

    def bind(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        merged = {**self._defaults, **values} if self._defaults else values
        if self._names is None:
            return merged
        return tuple([merged[n] for n in self._names])


class Db:
    """One dialect's access to durably's tables, shared by the store's parts."""

    def __init__(self, dialect: Dialect, clock: Clock) -> None:
        self.dialect = dialect
        self.clock = clock
        self.sa_dialect = dialect.sqlalchemy_dialect
        self.integrity_errors = tuple(dialect.integrity_errors)
        self.returning = bool(getattr(dialect, "returning", False))
        self.skip_locked = bool(getattr(dialect, "skip_locked", False))
        self.notify: Callable[[Connection], None] | None = getattr(dialect, "notify", None)
        self._is_transient: Callable[[BaseException], bool] | None = getattr(
            dialect, "is_transient", None
        )
        self.database_clock = bool(getattr(dialect, "database_clock", False))
        self._error_kind: Callable[[BaseException], str | None] | None = getattr(
            dialect, "error_kind", None
        )
        self._cache: dict[Hashable, Sql] = {}
        # the real clock formats its own timestamps at half the cost (every step stamps twice)
        self.now: Callable[[], str] = getattr(clock, "now_db", None) or (lambda: to_db(clock.now()))

    def sql(self, key: Hashable, build: Callable[[], sa.sql.ClauseElement]) -> Sql:
        """The statement `build()` makes, compiled once for this dialect."""
        sql = self._cache.get(key)
        if sql is None:
            sql = self._cache[key] = Sql(build(), self.sa_dialect)
        return sql

    @staticmethod
    def exec(conn: Connection, sql: Sql, **values: Any) -> Any:
        return conn.execute(sql.text, sql.bind(values))

    def read(self) -> Any:
        return self.dialect.read()

    def write(self, body: Callable[[Connection], Any]) -> Any:
        """Run `body` in one write transaction; one that lost a deadlock or a lock wait was
        rolled back, so it is run again from the start (not surfaced to the caller)."""
        for attempt in range(_DEADLOCK_ATTEMPTS):
            try:
                with self.dialect.transaction() as conn:
                    return body(conn)
            except Exception as exc:
                if attempt + 1 == _DEADLOCK_ATTEMPTS or not self.transient(exc):
                    raise
                logger.debug("transaction rolled back (%s), running it again", exc)
                # a little jitter, so that the two sides of a deadlock do not meet again
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def transient(self, exc: BaseException) -> bool:
        return self._is_transient is not None and self._is_transient(exc)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Database failures as `StoreError`s: what the public API lets through."""
        try:
            yield
        except Exception as exc:
            if isinstance(exc, DurablyError) and not isinstance(exc, StoreError):
                raise  # durably's own verdict (a bad id, a wrong state)
            error = self.store_error(exc)
            if error is exc:
                raise
            raise error from exc

    def store_error(self, exc: Exception) -> Exception:
        """The `StoreError` that says what `exc` means for the user (`exc` if it says it)."""
        kind = self._error_kind(exc) if self._error_kind is not None else None
        where = redact_url(str(getattr(self.dialect, "url", "the database")))
        if kind == "missing_schema":
            return StoreError(
                f"durably's tables are not in {where}: run migrate() first "
                f"(on the command line: `durably migrate {where}`)"
            )
        if kind == "storage_full":
            return StoreError(f"the database {where} is full, nothing was written: {_first(exc)}")
        if kind == "too_large":
            return StoreError(
                "a statement was larger than the database server accepts (MySQL/MariaDB: "
                "max_allowed_packet); nothing was written. Lower max_payload_bytes, or raise "
                f"the server's limit: {_first(exc)}"
            )
        if isinstance(exc, StoreError):
            return exc
        return StoreError(f"the database {where} failed: {_first(exc)}")

    # -- the clock that decides staleness ----------------------------------------------

    def heartbeat_value(self) -> Any:
        """What `heartbeat_at` is set to: the server's clock where it has one."""
        if self.database_clock:
            return sa.literal_column(_DATABASE_NOW[self.sa_dialect.name])
        return P("now")

    def stale_cutoff(self, threshold: float) -> str:
        """`now - threshold` in the stored form, by the clock that writes heartbeats."""
        if self.database_clock:
            sql = self.sql("database_now", lambda: sa.select(self.heartbeat_value()))
            with self.read() as conn:
                row = self.exec(conn, sql).fetchone()
            now = from_db(row[0]) if row else None
            assert now is not None
        else:
            now = self.clock.now()
        return to_db(now - timedelta(seconds=threshold))


def _first(exc: BaseException) -> str:
    """The first line of an error, short: SQLAlchemy appends the SQL and its parameters."""
    line = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def status_in(*statuses: str) -> sa.ColumnElement[bool]:
    # IN over literal values compiles to a post-compile expansion that needs
    # SQLAlchemy's execution; OR of plain comparisons compiles to ordinary SQL text
    return sa.or_(*[runs.c.status == s for s in statuses])


RUN_COLUMNS = (
    runs.c.id,
    runs.c.job_name,
    runs.c.status,
    payloads.c.payload,
    runs.c.output,
    runs.c.error,
    runs.c.progress,
    runs.c.idempotency_key,
    runs.c.concurrency_key,
    runs.c.current_step_index,
    runs.c.created_at,
    runs.c.updated_at,
    runs.c.started_at,
    runs.c.completed_at,
    runs.c.heartbeat_at,
    runs.c.failed_step_name,
)
# a run and its payload (see schema.payloads); an outer join keeps the runs table the
# one the planner walks, by the index that orders or filters it
RUN_SOURCE = runs.outerjoin(payloads, payloads.c.run_id == runs.c.id)


def select_runs() -> sa.Select[Any]:
    """SELECT `RUN_COLUMNS` FROM a run and its payload; add the WHERE and ORDER BY."""
    return sa.select(*RUN_COLUMNS).select_from(RUN_SOURCE)


STEP_COLUMNS = (
    steps.c.id,
    steps.c.run_id,
    steps.c.name,
    steps.c.index,
    steps.c.status,
    steps.c.output,
    steps.c.error,
    steps.c.started_at,
    steps.c.completed_at,
)
LOG_COLUMNS = (
    logs.c.id,
    logs.c.run_id,
    logs.c.step_name,
    logs.c.level,
    logs.c.message,
    logs.c.data,
    logs.c.created_at,
)


def progress_json(progress: Progress) -> str:
    data: dict[str, Any] = {"current": progress.current}
    if progress.total is not None:
        data["total"] = progress.total
    if progress.message is not None:
        data["message"] = progress.message
    return dumps(data)


def _progress_from_db(text: str | None) -> Progress | None:
    if text is None:
        return None
    data = json.loads(text)
    return Progress(data.get("current"), data.get("total"), data.get("message"))


def _time(value: str) -> datetime:
    parsed = from_db(value)
    assert parsed is not None
    return parsed


def run_from_row(row: Sequence[Any]) -> Run:
    """Build a `Run` from a row selected with `RUN_COLUMNS` (see `select_runs`)."""
    return Run(
        id=row[0],
        job_name=row[1],
        status=row[2],
        payload=loads(row[3]),
        output=loads(row[4]),
        error=row[5],
        progress=_progress_from_db(row[6]),
        idempotency_key=row[7],
        concurrency_key=row[8],
        current_step_index=row[9],
        created_at=_time(row[10]),
        updated_at=_time(row[11]),
        started_at=from_db(row[12]),
        completed_at=from_db(row[13]),
        heartbeat_at=from_db(row[14]),
        failed_step_name=row[15],
    )


def step_from_row(r: Sequence[Any]) -> StepRecord:
    return StepRecord(
        id=r[0],
        run_id=r[1],
        name=r[2],
        index=r[3],
        status=r[4],
        output=loads(r[5]),
        error=r[6],
        started_at=_time(r[7]),
        completed_at=from_db(r[8]),
    )


def log_from_row(r: Sequence[Any]) -> LogEntry:
    return LogEntry(
        id=r[0],
        run_id=r[1],
        step_name=r[2],
        level=r[3],
        message=r[4],
        data=loads(r[5]),
        created_at=_time(r[6]),
    )
