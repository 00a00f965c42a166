"""Every read and write of runs, steps and logs, on top of a `Dialect`.

Statements are SQLAlchemy Core expressions over `schema.metadata`, compiled once per
dialect and cached; the dialect only executes the resulting SQL text. Every write made
for a claimed run is fenced by the run's lease generation and `status = 'running'`, so a
worker that lost its claim (stale, cancelled, reclaimed) changes nothing.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic_core import to_json

from .clock import Clock, from_db, to_db
from .dialect import Connection, Dialect
from .errors import InvalidRunStateError, RunNotFoundError
from .events import Progress
from .ids import new_ulid
from .records import LogEntry, Run, StepRecord
from .schema import logs, runs, steps

logger = logging.getLogger("durably.store")

_RETRY: Any = object()
T = TypeVar("T")
# attempts of a write transaction that a deadlock or lock wait timeout rolled back
_TRANSIENT_ATTEMPTS = 5

_json_loads = json.loads


def dumps(value: Any) -> str:
    """Compact JSON text of a JSON-ready value (NaN and infinities become null, as in steps)."""
    return to_json(value).decode()


def loads(text: str | None) -> Any:
    """Parse stored JSON text (None stays None)."""
    return None if text is None else _json_loads(text)


class _Sql:
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
        names = self._names
        if names is None:
            if self._defaults:
                return {**self._defaults, **values}
            return values
        if self._defaults:
            merged = {**self._defaults, **values}
            return tuple([merged[n] for n in names])
        return tuple([values[n] for n in names])


P = sa.bindparam
_RUN_COLUMNS = (
    runs.c.id,
    runs.c.job_name,
    runs.c.status,
    runs.c.payload,
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
    runs.c.lease_generation,
)
_STEP_COLUMNS = (
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
_LOG_COLUMNS = (
    logs.c.id,
    logs.c.run_id,
    logs.c.step_name,
    logs.c.level,
    logs.c.message,
    logs.c.data,
    logs.c.created_at,
)


# the SET clauses of each fenced UPDATE, beyond heartbeat_at and updated_at; built only
# when a statement is first compiled for a dialect
_FENCED_VALUES: dict[str, Callable[[], dict[str, Any]]] = {
    "touch": lambda: {},
    "advance": lambda: {"current_step_index": P("index")},
    "set_progress": lambda: {"progress": P("progress")},
    "complete": lambda: {
        "status": "completed",
        "output": P("output"),
        "completed_at": P("now"),
        "active_concurrency_key": None,
    },
    "fail": lambda: {
        "status": "failed",
        "error": P("error"),
        "failed_step_name": P("step"),
        "completed_at": P("now"),
        "active_concurrency_key": None,
    },
    "release": lambda: {"status": "pending", "lease_owner": None, "active_concurrency_key": None},
}


def _status_in(*statuses: str) -> sa.ColumnElement[bool]:
    # IN over literal values compiles to a post-compile expansion that needs
    # SQLAlchemy's execution; OR of plain comparisons compiles to ordinary SQL text
    return sa.or_(*[runs.c.status == s for s in statuses])


def _progress_from_db(text: str | None) -> Progress | None:
    if text is None:
        return None
    data = _json_loads(text)
    return Progress(data.get("current"), data.get("total"), data.get("message"))


def run_from_row(row: Sequence[Any]) -> Run:
    """Build a `Run` from a row selected with `_RUN_COLUMNS`."""
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
        created_at=from_db(row[10]),  # type: ignore[arg-type]
        updated_at=from_db(row[11]),  # type: ignore[arg-type]
        started_at=from_db(row[12]),
        completed_at=from_db(row[13]),
        heartbeat_at=from_db(row[14]),
        failed_step_name=row[15],
    )


@dataclass
class Lease:
    """A worker's claim on a run: the generation fences every write made for it."""

    run_id: str
    job_name: str
    generation: int
    payload: Any
    first_claim: bool
    concurrency_key: str | None = None
    # set from other threads; read at step boundaries
    cancel_requested: bool = False
    release_requested: bool = False
    lost: bool = False
    last_write: float = 0.0


@dataclass(frozen=True)
class NewRun:
    """A run to insert."""

    id: str
    job_name: str
    payload_json: str
    idempotency_key: str | None
    concurrency_key: str | None


def _lease_from_row(row: Sequence[Any]) -> Lease:
    run_id, job_name, payload, generation, concurrency_key = row
    return Lease(
        run_id=run_id,
        job_name=job_name,
        generation=generation,
        payload=loads(payload),
        first_claim=generation == 1,
        concurrency_key=concurrency_key,
    )


class Store:
    """Reads and writes durably's tables through one Dialect."""

    def __init__(self, dialect: Dialect, clock: Clock) -> None:
        self.dialect = dialect
        self._clock = clock
        self._sa = dialect.sqlalchemy_dialect
        self._integrity = tuple(dialect.integrity_errors)
        self._transient: Callable[[BaseException], bool] = getattr(
            dialect, "transient_error", lambda exc: False
        )
        self._cache: dict[Hashable, _Sql] = {}
        self._skip_locked = bool(getattr(dialect, "skip_locked", False))
        self._notify: Callable[[Connection], None] | None = getattr(dialect, "notify", None)
        # single-statement claims where UPDATE ... RETURNING exists
        self._returning = bool(getattr(dialect, "returning", False))
        # the real clock formats its own timestamps faster; a test clock goes through now()
        fast_now: Callable[[], str] | None = getattr(clock, "now_db", None)
        if fast_now is not None:
            self.now = fast_now  # type: ignore[method-assign]

    # -- statement cache -------------------------------------------------------------

    def _sql(self, key: Hashable, build: Callable[[], sa.sql.ClauseElement]) -> _Sql:
        sql = self._cache.get(key)
        if sql is None:
            sql = self._cache[key] = _Sql(build(), self._sa)
        return sql

    def _exec(self, conn: Connection, sql: _Sql, **values: Any) -> Any:
        return conn.execute(sql.text, sql.bind(values))

    def now(self) -> str:
        return to_db(self._clock.now())

    def _write(self, body: Callable[[Connection], T]) -> T:
        """Run `body` in a write transaction; after a deadlock or lock wait timeout, which
        rolled all of it back, run it again in a new one. Only for bodies whose whole
        effect is their SQL (no state of the caller changes inside them)."""
        attempt = 0
        while True:
            try:
                with self.dialect.transaction() as conn:
                    return body(conn)
            except Exception as exc:
                attempt += 1
                if attempt >= _TRANSIENT_ATTEMPTS or not self._transient(exc):
                    raise
                logger.debug("transient error, attempt %d again: %s", attempt + 1, exc)
                time.sleep(random.uniform(0, 0.005 * 2**attempt))

    # -- creating runs ---------------------------------------------------------------

    def create_runs(self, new_runs: Sequence[NewRun]) -> list[tuple[Run, bool]]:
        """Insert runs in one transaction; an existing idempotency key returns its run.

        Returns (run, created) per input, in order. All or nothing.
        """
        for attempt in range(3):
            try:
                return self._create_runs_once(new_runs)
            except self._integrity:
                # a concurrent trigger inserted one of our idempotency keys first;
                # the next attempt finds it and returns it
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _create_runs_once(self, new_runs: Sequence[NewRun]) -> list[tuple[Run, bool]]:
        now = self.now()
        find = self._sql(
            "find_idempotent",
            lambda: sa.select(*_RUN_COLUMNS).where(
                runs.c.job_name == P("job_name"), runs.c.idempotency_key == P("key")
            ),
        )
        insert = self._sql(
            "insert_run",
            lambda: runs.insert().values(
                id=P("id"),
                job_name=P("job_name"),
                payload=P("payload"),
                status="pending",
                idempotency_key=P("idempotency_key"),
                concurrency_key=P("concurrency_key"),
                current_step_index=0,
                lease_generation=0,
                created_at=P("now"),
                updated_at=P("now"),
            ),
        )
        results: list[tuple[Run, bool]] = []
        to_insert: list[Any] = []
        seen_keys: dict[tuple[str, str], Run] = {}
        created_at = from_db(now)
        assert created_at is not None
        keys = {(n.job_name, n.idempotency_key) for n in new_runs if n.idempotency_key is not None}
        if keys:
            # looked up before the write transaction, which only inserts: a key inserted
            # concurrently in between makes the insert fail, and the caller retries
            with self.dialect.read() as conn:
                for job_name, key in keys:
                    row = self._exec(conn, find, job_name=job_name, key=key).fetchone()
                    if row is not None:
                        seen_keys[(job_name, key)] = run_from_row(row)
        for new in new_runs:
            if new.idempotency_key is not None:
                existing = seen_keys.get((new.job_name, new.idempotency_key))
                if existing is not None:
                    results.append((existing, False))
                    continue
            run = Run(
                id=new.id,
                job_name=new.job_name,
                status="pending",
                payload=loads(new.payload_json),
                output=None,
                error=None,
                progress=None,
                idempotency_key=new.idempotency_key,
                concurrency_key=new.concurrency_key,
                current_step_index=0,
                created_at=created_at,
                updated_at=created_at,
                started_at=None,
                completed_at=None,
            )
            if new.idempotency_key is not None:
                seen_keys[(new.job_name, new.idempotency_key)] = run
            results.append((run, True))
            to_insert.append(
                insert.bind(
                    {
                        "id": new.id,
                        "job_name": new.job_name,
                        "payload": new.payload_json,
                        "idempotency_key": new.idempotency_key,
                        "concurrency_key": new.concurrency_key,
                        "now": now,
                    }
                )
            )
        if not to_insert:
            return results
        with self.dialect.transaction() as conn:
            if len(to_insert) == 1:
                conn.execute(insert.text, to_insert[0])
            elif to_insert:
                conn.executemany(insert.text, to_insert)
            if self._notify is not None:
                self._notify(conn)
        return results

    # -- claiming --------------------------------------------------------------------

    def claim(self, job_names: Sequence[str], owner: str) -> Lease | None:
        """Atomically take the oldest claimable pending run of `job_names`."""
        if not job_names:
            return None
        names, params = self._claim_params(job_names)
        for _ in range(5):
            try:
                row = self._write(lambda conn: self._claim_in(conn, names, owner, params))
            except self._integrity:
                # another claimer took the same concurrency key at the same moment
                # (possible where claims are not serialised); look again
                continue
            row = self._claimed_row(row)
            if row is not _RETRY:
                return None if row is None else _lease_from_row(row)
        return None

    def finish_and_claim(
        self, lease: Lease, key: str, job_names: Sequence[str], owner: str, **params: Any
    ) -> tuple[bool, Lease | None]:
        """Finish `lease` (`complete` or `fail`) and claim the next run in one transaction.

        A worker that goes on claiming saves one commit per run this way. Where the claim
        cannot be part of it, the run is finished on its own and the caller claims as usual
        (None): on backends without UPDATE ... RETURNING, whose select-then-update claim
        after a write risks deadlocks (MySQL), and after any error of the joint transaction
        (a concurrency-key race, a deadlock), which left nothing written.
        """
        if not self._returning:
            return self.finish(lease, key, **params), None
        names, claim_params = self._claim_params(job_names)
        try:
            with self.dialect.transaction() as conn:
                cur = self._finish_in(conn, lease, key, params)
                row = self._claim_in(conn, names, owner, claim_params)
        except Exception as exc:
            logger.debug("finishing %s with the next claim failed: %s", lease.run_id, exc)
            return self.finish(lease, key, **params), None
        done = bool(cur.rowcount == 1)
        row = self._claimed_row(row)
        return done, None if row is None or row is _RETRY else _lease_from_row(row)

    @staticmethod
    def _claim_params(job_names: Sequence[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
        names = tuple(sorted(job_names))
        return names, {f"job_{i}": name for i, name in enumerate(names)}

    def _claim_in(
        self, conn: Connection, names: tuple[str, ...], owner: str, params: dict[str, Any]
    ) -> Any:
        """Claim inside the transaction of `conn`; read the outcome with `_claimed_row`
        after the transaction (batch-only transports fill results in at its end)."""
        if self._returning:
            # one statement: UPDATE ... WHERE id = (oldest claimable) RETURNING the run
            sql = self._sql(
                ("claim_returning", len(names)), lambda: self._claim_update(len(names))
            )
            return self._exec(conn, sql, owner=owner, now=self.now(), **params)
        return self._claim_select_update(conn, names, owner, params)

    def _claimed_row(self, claimed: Any) -> Any:
        """The claimed run's row, None when nothing was claimable, or `_RETRY`."""
        if self._returning:
            return claimed.fetchone()
        return claimed

    def _claim_select_update(
        self, conn: Connection, names: tuple[str, ...], owner: str, params: dict[str, Any]
    ) -> Any:
        """Select the oldest claimable run (locking it), then update it: for backends
        without UPDATE ... RETURNING (MySQL/MariaDB); needs an interactive transaction."""
        select_sql = self._sql(
            ("claim_select", len(names)), lambda: self._claim_candidates(len(names), full=True)
        )
        update_sql = self._sql(
            "claim_update",
            lambda: (
                runs.update()
                .where(
                    runs.c.id == P("id"),
                    runs.c.status == "pending",
                    runs.c.lease_generation == P("old_generation"),
                )
                .values(**self._claim_values(P("generation")))
            ),
        )
        row = self._exec(conn, select_sql, **params).fetchone()
        if row is None:
            return None
        run_id, job_name, payload, generation, concurrency_key = row
        updated = self._exec(
            conn,
            update_sql,
            id=run_id,
            old_generation=generation,
            generation=generation + 1,
            owner=owner,
            now=self.now(),
        )
        if updated.rowcount != 1:
            return _RETRY
        return run_id, job_name, payload, generation + 1, concurrency_key

    @staticmethod
    def _claim_values(generation: Any) -> dict[str, Any]:
        return {
            "status": "running",
            "lease_generation": generation,
            "lease_owner": P("owner"),
            "active_concurrency_key": runs.c.concurrency_key,
            "heartbeat_at": P("now"),
            "started_at": sa.func.coalesce(runs.c.started_at, P("now")),
            "updated_at": P("now"),
        }

    def _claim_update(self, n: int) -> sa.sql.ClauseElement:
        candidate = self._claim_candidates(n, full=False).scalar_subquery()
        return (
            runs.update()
            .where(runs.c.id == candidate, runs.c.status == "pending")
            .values(**self._claim_values(runs.c.lease_generation + 1))
            .returning(
                runs.c.id,
                runs.c.job_name,
                runs.c.payload,
                runs.c.lease_generation,
                runs.c.concurrency_key,
            )
        )

    def _claim_candidates(self, n: int, *, full: bool) -> sa.Select[Any]:
        """The oldest claimable pending run of n job names (aliases keep the subqueries
        independent of an enclosing UPDATE of the same table)."""
        c = runs.alias("candidate")
        held_by = runs.alias("holder")
        earlier = runs.alias("earlier")
        held = (
            sa.select(held_by.c.active_concurrency_key)
            .where(held_by.c.active_concurrency_key.is_not(None))
            .scalar_subquery()
        )
        # only the oldest pending run of a concurrency key may be claimed: otherwise a
        # claimer that skips a row locked by another claimer could start a later run first
        has_earlier = sa.exists().where(
            earlier.c.concurrency_key == c.c.concurrency_key,
            earlier.c.status == "pending",
            sa.or_(
                earlier.c.created_at < c.c.created_at,
                sa.and_(earlier.c.created_at == c.c.created_at, earlier.c.id < c.c.id),
            ),
        )
        columns = (
            (c.c.id, c.c.job_name, c.c.payload, c.c.lease_generation, c.c.concurrency_key)
            if full
            else (c.c.id,)
        )
        stmt = (
            sa.select(*columns)
            .where(
                c.c.status == "pending",
                c.c.job_name.in_([P(f"job_{i}") for i in range(n)]),
                sa.or_(
                    c.c.concurrency_key.is_(None),
                    sa.and_(c.c.concurrency_key.not_in(held), ~has_earlier),
                ),
            )
            .order_by(c.c.created_at, c.c.id)
            .limit(1)
        )
        if self._skip_locked:
            stmt = stmt.with_for_update(skip_locked=True)
        return stmt

    def recover_stale(self, stale_before: str) -> int:
        """Return running runs whose heartbeat is older than `stale_before` to pending.

        The stale runs are found by a plain read, then each is updated by its primary key
        (re-checked: still running, same lease, still stale). One UPDATE filtering on
        `status = 'running'` would scan `ix_durably_runs_claim` and, on MySQL/MariaDB,
        lock every running run's entry there before its row, the reverse of the order
        of a worker's status write (row, then that entry): the two deadlocked.
        """
        find = self._sql(
            "stale_runs",
            lambda: (
                sa.select(runs.c.id, runs.c.lease_generation)
                .where(runs.c.status == "running", runs.c.heartbeat_at < P("cutoff"))
                .order_by(runs.c.id)
            ),
        )
        sql = self._sql(
            "recover_stale",
            lambda: (
                runs.update()
                .where(
                    runs.c.id == P("id"),
                    runs.c.lease_generation == P("generation"),
                    runs.c.status == "running",
                    runs.c.heartbeat_at < P("cutoff"),
                )
                .values(
                    status="pending",
                    active_concurrency_key=None,
                    lease_owner=None,
                    updated_at=P("now"),
                )
            ),
        )
        with self.dialect.read() as conn:
            stale = self._exec(conn, find, cutoff=stale_before).fetchall()
        if not stale:
            return 0
        now = self.now()

        def body(conn: Connection) -> list[Any]:
            return [
                self._exec(conn, sql, id=run_id, generation=gen, cutoff=stale_before, now=now)
                for run_id, gen in stale
            ]

        count = sum(int(cur.rowcount) for cur in self._write(body))
        if count:
            logger.info("returned %d stale run(s) to pending", count)
        return count

    # -- writes fenced by the lease ----------------------------------------------------

    def completed_steps(self, run_id: str) -> dict[str, str | None]:
        """name -> stored output JSON of the run's completed steps."""
        sql = self._sql(
            "completed_steps",
            lambda: sa.select(steps.c.name, steps.c.output).where(
                steps.c.run_id == P("run_id"), steps.c.status == "completed"
            ),
        )
        with self.dialect.read() as conn:
            return {
                name: output for name, output in self._exec(conn, sql, run_id=run_id).fetchall()
            }

    def _fenced(self, key: str) -> _Sql:
        """UPDATE of a claimed run, matching only while the lease is current."""
        return self._sql(
            key,
            lambda: (
                runs.update()
                .where(
                    runs.c.id == P("id"),
                    runs.c.lease_generation == P("generation"),
                    runs.c.status == "running",
                )
                .values(heartbeat_at=P("now"), updated_at=P("now"), **_FENCED_VALUES[key]())
            ),
        )

    def _insert_step_sql(self) -> _Sql:
        def build() -> sa.sql.ClauseElement:
            # the insert re-checks the lease itself, so the two statements of a step need
            # no read in between and a batch-only transport can send them as one batch
            lease_held = sa.exists().where(
                runs.c.id == P("run_id", type_=sa.String),
                runs.c.lease_generation == P("generation", type_=sa.Integer),
                runs.c.status == "running",
            )
            values = sa.select(
                P("id", type_=sa.String),
                P("run_id", type_=sa.String),
                P("name", type_=sa.String),
                P("index", type_=sa.Integer),
                P("status", type_=sa.String),
                P("output", type_=sa.Text),
                P("error", type_=sa.Text),
                P("started_at", type_=sa.String),
                P("completed_at", type_=sa.String),
            ).where(lease_held)
            columns = ["id", "run_id", "name", "index", "status", "output", "error"]
            return steps.insert().from_select([*columns, "started_at", "completed_at"], values)

        return self._sql("insert_step", build)

    def persist_step(
        self,
        lease: Lease,
        *,
        index: int,
        name: str,
        status: str,
        output_json: str | None,
        error: str | None,
        started_at: str,
    ) -> bool:
        """Record a finished step and advance the run, in one transaction; False if fenced off."""
        insert = self._insert_step_sql()
        now = self.now()
        if status == "completed":
            advance = self._fenced("advance")
            params: dict[str, Any] = {"index": index + 1}
        else:
            advance = self._fenced("touch")
            params = {}
        step_id = new_ulid()

        def body(conn: Connection) -> Any:
            cur = self._exec(
                conn, advance, id=lease.run_id, generation=lease.generation, now=now, **params
            )
            self._exec(
                conn,
                insert,
                id=step_id,
                run_id=lease.run_id,
                generation=lease.generation,
                name=name,
                index=index,
                status=status,
                output=output_json,
                error=error,
                started_at=started_at,
                completed_at=now,
            )
            return cur

        return bool(self._write(body).rowcount == 1)

    def set_progress(self, lease: Lease, progress: Progress) -> bool:
        sql = self._fenced("set_progress")
        data: dict[str, Any] = {"current": progress.current}
        if progress.total is not None:
            data["total"] = progress.total
        if progress.message is not None:
            data["message"] = progress.message
        cur = self._write(
            lambda conn: self._exec(
                conn,
                sql,
                id=lease.run_id,
                generation=lease.generation,
                progress=dumps(data),
                now=self.now(),
            )
        )
        return bool(cur.rowcount == 1)

    def heartbeat(self, lease: Lease) -> bool:
        sql = self._fenced("touch")
        cur = self._write(
            lambda conn: self._exec(
                conn, sql, id=lease.run_id, generation=lease.generation, now=self.now()
            )
        )
        return bool(cur.rowcount == 1)

    def finish(self, lease: Lease, key: str, **params: Any) -> bool:
        """The final fenced write of a run: `complete`, `fail` or `release`.

        Retried after a deadlock or lock timeout: a final write that failed leaves the run
        `running` until it goes stale, and then its job function runs again."""
        cur = self._write(lambda conn: self._finish_in(conn, lease, key, params))
        return bool(cur.rowcount == 1)

    def _finish_in(self, conn: Connection, lease: Lease, key: str, params: dict[str, Any]) -> Any:
        cur = self._exec(
            conn,
            self._fenced(key),
            id=lease.run_id,
            generation=lease.generation,
            now=self.now(),
            **params,
        )
        # a released run, or a freed concurrency key, is claimable elsewhere now
        if (key == "release" or lease.concurrency_key is not None) and self._notify:
            self._notify(conn)
        return cur

    def release(self, lease: Lease) -> bool:
        """Give a claimed run back to pending so another worker resumes it at once."""
        return self.finish(lease, "release")

    # -- state changes requested by users ----------------------------------------------

    def _state_error(self, run_id: str, operation: str, allowed: str) -> Exception:
        """Why a conditional state change matched no row: unknown run, or wrong state."""
        sql = self._sql("status_of", lambda: sa.select(runs.c.status).where(runs.c.id == P("id")))
        with self.dialect.read() as conn:
            row = self._exec(conn, sql, id=run_id).fetchone()
        if row is None:
            return RunNotFoundError(run_id)
        return InvalidRunStateError(run_id, row[0], operation, allowed)

    def _job_name_of(self, run_id: str) -> str:
        sql = self._sql(
            "job_name_of", lambda: sa.select(runs.c.job_name).where(runs.c.id == P("id"))
        )
        with self.dialect.read() as conn:
            row = self._exec(conn, sql, id=run_id).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        return str(row[0])

    # Each state change is conditional SQL whose outcome is read after the transaction:
    # no statement depends on a result read inside it (so batch-only transports work),
    # and concurrent changes resolve by compare-and-set.

    def cancel(self, run_id: str) -> str:
        """pending/running -> cancelled; returns the job name."""
        sql = self._sql(
            "cancel",
            lambda: (
                runs.update()
                .where(runs.c.id == P("id"), _status_in("pending", "running"))
                .values(
                    status="cancelled",
                    active_concurrency_key=None,
                    completed_at=P("now"),
                    updated_at=P("now"),
                )
            ),
        )
        with self.dialect.transaction() as conn:
            cur = self._exec(conn, sql, id=run_id, now=self.now())
            if self._notify is not None:
                self._notify(conn)  # a freed concurrency key may make a run claimable
        if cur.rowcount != 1:
            raise self._state_error(run_id, "cancel", "pending or running")
        return self._job_name_of(run_id)

    def retry(self, run_id: str) -> str:
        """failed/cancelled -> pending, dropping failed step records; returns the job name."""
        retryable = sa.exists().where(
            runs.c.id == P("id", type_=sa.String), _status_in("failed", "cancelled")
        )
        drop_failed = self._sql(
            "drop_failed_steps",
            lambda: steps.delete().where(
                steps.c.run_id == P("id"), steps.c.status != "completed", retryable
            ),
        )
        sql = self._sql(
            "retry",
            lambda: (
                runs.update()
                .where(runs.c.id == P("id"), _status_in("failed", "cancelled"))
                .values(
                    status="pending",
                    output=None,
                    error=None,
                    failed_step_name=None,
                    lease_owner=None,
                    heartbeat_at=None,
                    started_at=None,
                    completed_at=None,
                    updated_at=P("now"),
                )
            ),
        )
        with self.dialect.transaction() as conn:
            self._exec(conn, drop_failed, id=run_id)
            cur = self._exec(conn, sql, id=run_id, now=self.now())
            if self._notify is not None:
                self._notify(conn)
        if cur.rowcount != 1:
            raise self._state_error(run_id, "retry", "failed or cancelled")
        return self._job_name_of(run_id)

    def delete_run(self, run_id: str) -> None:
        """Delete a terminal run with its steps and logs."""
        terminal = sa.exists().where(
            runs.c.id == P("id", type_=sa.String),
            _status_in("completed", "failed", "cancelled"),
        )
        statements = [
            self._sql(
                "delete_steps",
                lambda: steps.delete().where(steps.c.run_id == P("id"), terminal),
            ),
            self._sql(
                "delete_logs", lambda: logs.delete().where(logs.c.run_id == P("id"), terminal)
            ),
            self._sql(
                "delete_run",
                lambda: runs.delete().where(
                    runs.c.id == P("id"), _status_in("completed", "failed", "cancelled")
                ),
            ),
        ]
        with self.dialect.transaction() as conn:
            for sql in statements:
                cur = self._exec(conn, sql, id=run_id)
        if cur.rowcount != 1:
            raise self._state_error(run_id, "delete", "completed, failed or cancelled")

    # -- reads -----------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run | None:
        sql = self._sql("get_run", lambda: sa.select(*_RUN_COLUMNS).where(runs.c.id == P("id")))
        with self.dialect.read() as conn:
            row = self._exec(conn, sql, id=run_id).fetchone()
        return None if row is None else run_from_row(row)

    def get_runs(
        self,
        *,
        job_names: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        nj = None if job_names is None else len(job_names)
        ns = None if statuses is None else len(statuses)
        has_limit = limit is not None
        has_offset = bool(offset)

        def build() -> sa.sql.ClauseElement:
            stmt = sa.select(*_RUN_COLUMNS)
            if nj is not None:
                stmt = stmt.where(runs.c.job_name.in_([P(f"job_{i}") for i in range(nj)]))
            if ns is not None:
                stmt = stmt.where(runs.c.status.in_([P(f"status_{i}") for i in range(ns)]))
            stmt = stmt.order_by(runs.c.created_at.desc(), runs.c.id.desc())
            if has_limit:
                stmt = stmt.limit(P("limit", type_=sa.Integer))
            if has_offset:
                if not has_limit and self._sa.name in ("mysql", "mariadb", "sqlite"):
                    # these need a LIMIT before OFFSET; use the largest one they accept
                    stmt = stmt.limit(P("limit", type_=sa.Integer))
                stmt = stmt.offset(P("offset", type_=sa.Integer))
            return stmt

        sql = self._sql(("get_runs", nj, ns, has_limit, has_offset), build)
        params: dict[str, Any] = {}
        for i, name in enumerate(job_names or ()):
            params[f"job_{i}"] = name
        for i, status in enumerate(statuses or ()):
            params[f"status_{i}"] = status
        if has_limit:
            params["limit"] = limit
        if has_offset:
            params["offset"] = offset
            if not has_limit:
                params["limit"] = 2**62
        if nj == 0 or ns == 0:
            return []
        with self.dialect.read() as conn:
            rows = self._exec(conn, sql, **params).fetchall()
        return [run_from_row(row) for row in rows]

    def get_steps(self, run_id: str) -> list[StepRecord]:
        sql = self._sql(
            "get_steps",
            lambda: (
                sa.select(*_STEP_COLUMNS)
                .where(steps.c.run_id == P("run_id"))
                .order_by(steps.c.index, steps.c.id)
            ),
        )
        with self.dialect.read() as conn:
            rows = self._exec(conn, sql, run_id=run_id).fetchall()
        return [
            StepRecord(
                id=r[0],
                run_id=r[1],
                name=r[2],
                index=r[3],
                status=r[4],
                output=loads(r[5]),
                error=r[6],
                started_at=from_db(r[7]),  # type: ignore[arg-type]
                completed_at=from_db(r[8]),
            )
            for r in rows
        ]

    def count_steps(self, run_id: str) -> int:
        sql = self._sql(
            "count_steps",
            lambda: (
                sa.select(sa.func.count()).select_from(steps).where(steps.c.run_id == P("run_id"))
            ),
        )
        with self.dialect.read() as conn:
            row = self._exec(conn, sql, run_id=run_id).fetchone()
        return int(row[0]) if row else 0

    def insert_logs(self, entries: Iterable[LogEntry]) -> None:
        sql = self._sql(
            "insert_log",
            lambda: logs.insert().values(
                id=P("id"),
                run_id=P("run_id"),
                step_name=P("step_name"),
                level=P("level"),
                message=P("message"),
                data=P("data"),
                created_at=P("created_at"),
            ),
        )
        rows = [
            sql.bind(
                {
                    "id": e.id,
                    "run_id": e.run_id,
                    "step_name": e.step_name,
                    "level": e.level,
                    "message": e.message,
                    "data": None if e.data is None else dumps(e.data),
                    "created_at": to_db(e.created_at),
                }
            )
            for e in entries
        ]
        if not rows:
            return
        with self.dialect.transaction() as conn:
            conn.executemany(sql.text, rows)

    def get_logs(self, run_id: str) -> list[LogEntry]:
        sql = self._sql(
            "get_logs",
            lambda: (
                sa.select(*_LOG_COLUMNS).where(logs.c.run_id == P("run_id")).order_by(logs.c.id)
            ),
        )
        with self.dialect.read() as conn:
            rows = self._exec(conn, sql, run_id=run_id).fetchall()
        return [
            LogEntry(
                id=r[0],
                run_id=r[1],
                step_name=r[2],
                level=r[3],
                message=r[4],
                data=loads(r[5]),
                created_at=from_db(r[6]),  # type: ignore[arg-type]
            )
            for r in rows
        ]
