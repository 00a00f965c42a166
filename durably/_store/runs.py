"""The state changes users ask for: creating runs, cancel, retry and delete.

Each is conditional SQL whose outcome is read after the transaction: no statement
depends on a result read inside it (so batch-only transports work), and concurrent
changes resolve by compare-and-set on the run row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .._clock import from_db
from .._dialect import Connection
from .._errors import InvalidRunStateError, RunNotFoundError
from .._records import Run
from .._schema import logs, payloads, runs, steps
from ._sql import Db, P, loads, run_from_row, select_runs, status_in

_TERMINAL = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class NewRun:
    """A run to insert."""

    id: str
    job_name: str
    payload_json: str
    idempotency_key: str | None
    concurrency_key: str | None


class RunChanges:
    """Creating runs and the user-requested transitions, over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    # -- creating runs ---------------------------------------------------------------

    def create_runs(self, new_runs: Sequence[NewRun]) -> list[tuple[Run, bool]]:
        """Insert runs in one transaction; an existing idempotency key returns its run.

        Returns (run, created) per input, in order. All or nothing.
        """
        for attempt in range(3):
            try:
                return self._create_runs_once(new_runs)
            except self.db.integrity_errors:
                # a concurrent trigger inserted one of our idempotency keys first;
                # the next attempt finds it and returns it
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _existing(self, new_runs: Sequence[NewRun]) -> dict[tuple[str, str], Run]:
        """The runs that already hold the idempotency keys of `new_runs`.

        Looked up before the write transaction, which only inserts: a key inserted
        concurrently in between makes the insert fail, and the caller tries again.
        """
        db = self.db
        keys = {(n.job_name, n.idempotency_key) for n in new_runs if n.idempotency_key}
        if not keys:
            return {}
        find = db.sql(
            "find_idempotent",
            lambda: select_runs().where(
                runs.c.job_name == P("job_name"), runs.c.idempotency_key == P("key")
            ),
        )
        found: dict[tuple[str, str], Run] = {}
        with db.read() as conn:
            for job_name, key in keys:
                row = db.exec(conn, find, job_name=job_name, key=key).fetchone()
                if row is not None:
                    found[(job_name, key)] = run_from_row(row)
        return found

    def _create_runs_once(self, new_runs: Sequence[NewRun]) -> list[tuple[Run, bool]]:
        db = self.db
        now = db.now()
        created_at = from_db(now)
        assert created_at is not None
        insert = db.sql("insert_run", _insert_run)
        insert_payload = db.sql("insert_payload", _insert_payload)
        seen = self._existing(new_runs)
        results: list[tuple[Run, bool]] = []
        rows: list[Any] = []
        payload_rows: list[Any] = []
        for new in new_runs:
            key = (new.job_name, new.idempotency_key) if new.idempotency_key else None
            if key is not None and key in seen:
                results.append((seen[key], False))
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
            if key is not None:
                seen[key] = run
            results.append((run, True))
            rows.append(
                insert.bind(
                    {
                        "id": new.id,
                        "job_name": new.job_name,
                        "idempotency_key": new.idempotency_key,
                        "concurrency_key": new.concurrency_key,
                        "now": now,
                    }
                )
            )
            payload_rows.append(insert_payload.bind({"id": new.id, "payload": new.payload_json}))
        if not rows:
            return results

        def body(conn: Connection) -> None:
            # the runs first: a clashing idempotency key fails before any payload is written
            for sql, values in ((insert, rows), (insert_payload, payload_rows)):
                if len(values) == 1:
                    conn.execute(sql.text, values[0])
                else:
                    conn.executemany(sql.text, values)
            if db.notify is not None:
                db.notify(conn)

        db.write(body)
        return results

    # -- user-requested transitions ----------------------------------------------------

    def _state_error(self, run_id: str, operation: str, allowed: str) -> Exception:
        """Why a conditional state change matched no row: unknown run, or wrong state."""
        db = self.db
        sql = db.sql("status_of", lambda: sa.select(runs.c.status).where(runs.c.id == P("id")))
        with db.read() as conn:
            row = db.exec(conn, sql, id=run_id).fetchone()
        if row is None:
            return RunNotFoundError(run_id)
        return InvalidRunStateError(run_id, row[0], operation, allowed)

    def _job_name_of(self, run_id: str) -> str:
        db = self.db
        sql = db.sql("job_name_of", lambda: sa.select(runs.c.job_name).where(runs.c.id == P("id")))
        with db.read() as conn:
            row = db.exec(conn, sql, id=run_id).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        return str(row[0])

    def cancel(self, run_id: str) -> str:
        """pending/running -> cancelled; returns the job name.

        A running run keeps its concurrency key: its worker may still be inside a step,
        and frees the key once it stopped (or its heartbeat goes stale).
        """
        db = self.db
        sql = db.sql(
            "cancel",
            lambda: (
                runs.update()
                .where(runs.c.id == P("id"), status_in("pending", "running"))
                .values(status="cancelled", completed_at=P("now"), updated_at=P("now"))
            ),
        )
        now = db.now()
        cur = db.write(lambda conn: db.exec(conn, sql, id=run_id, now=now))
        if cur.rowcount != 1:
            raise self._state_error(run_id, "cancel", "pending or running")
        return self._job_name_of(run_id)

    def retry(self, run_id: str) -> str:
        """failed/cancelled -> pending, dropping failed step records; returns the job name."""
        db = self.db
        retryable = sa.exists().where(
            runs.c.id == P("id", type_=sa.String), status_in("failed", "cancelled")
        )
        drop_failed = db.sql(
            "drop_failed_steps",
            lambda: steps.delete().where(
                steps.c.run_id == P("id"), steps.c.status != "completed", retryable
            ),
        )
        sql = db.sql(
            "retry",
            lambda: (
                runs.update()
                .where(runs.c.id == P("id"), status_in("failed", "cancelled"))
                .values(
                    status="pending",
                    output=None,
                    error=None,
                    failed_step_name=None,
                    lease_owner=None,
                    started_at=None,
                    completed_at=None,
                    updated_at=P("now"),
                )
            ),
        )
        now = db.now()

        def body(conn: Connection) -> Any:
            db.exec(conn, drop_failed, id=run_id)
            cur = db.exec(conn, sql, id=run_id, now=now)
            if db.notify is not None:
                db.notify(conn)
            return cur

        if db.write(body).rowcount != 1:
            raise self._state_error(run_id, "retry", "failed or cancelled")
        return self._job_name_of(run_id)

    def delete_run(self, run_id: str) -> None:
        """Delete a terminal run with its payload, steps and logs.

        The run row decides first: the rest goes only once it is gone, so a concurrent
        retry that wins keeps its payload and every completed step.
        """
        db = self.db
        gone = ~sa.exists().where(runs.c.id == P("id", type_=sa.String))
        statements = [
            db.sql(
                "delete_run",
                lambda: runs.delete().where(runs.c.id == P("id"), status_in(*_TERMINAL)),
            ),
            db.sql("delete_steps", lambda: steps.delete().where(steps.c.run_id == P("id"), gone)),
            db.sql("delete_logs", lambda: logs.delete().where(logs.c.run_id == P("id"), gone)),
            db.sql(
                "delete_payload",
                lambda: payloads.delete().where(payloads.c.run_id == P("id"), gone),
            ),
        ]

        def body(conn: Connection) -> Any:
            results = [db.exec(conn, sql, id=run_id) for sql in statements]
            return results[0]

        if db.write(body).rowcount != 1:
            raise self._state_error(run_id, "delete", "completed, failed or cancelled")


def _insert_run() -> sa.sql.ClauseElement:
    return runs.insert().values(
        id=P("id"),
        job_name=P("job_name"),
        status="pending",
        idempotency_key=P("idempotency_key"),
        concurrency_key=P("concurrency_key"),
        current_step_index=0,
        lease_generation=0,
        created_at=P("now"),
        updated_at=P("now"),
    )


def _insert_payload() -> sa.sql.ClauseElement:
    return payloads.insert().values(run_id=P("id"), payload=P("payload"))
