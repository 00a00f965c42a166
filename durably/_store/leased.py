"""The writes made for a claimed run, each fenced by the claim's generation.

A write matches only while the run is `running` under that generation, so a worker that
lost its claim (stale, cancelled, reclaimed, deleted) changes nothing. A run's last write
is one of the typed finals `Complete`, `Fail` or `Release`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .._clock import to_db
from .._dialect import Connection
from .._events import Progress
from .._ids import new_ulid
from .._records import LogEntry
from .._schema import logs, runs, steps
from ._sql import Db, P, dumps, progress_json
from .claims import Claim, ClaimRequest, Claims


@dataclass(frozen=True)
class Complete:
    """The run returned: `output` is its JSON text."""

    output: str


@dataclass(frozen=True)
class Fail:
    """The run failed with `error` (in `step_name`, if a step raised)."""

    error: str
    step_name: str | None


@dataclass(frozen=True)
class Release:
    """Give the run back to pending, so another worker resumes it at once."""


Final = Complete | Fail | Release


def _held(id_param: str = "id") -> sa.ColumnElement[bool]:
    """The run is still running under the claim's generation."""
    return sa.and_(
        runs.c.id == P(id_param, type_=sa.String),
        runs.c.lease_generation == P("generation", type_=sa.Integer),
        runs.c.status == "running",
    )


class LeasedWrites:
    """Fenced writes over one `Db`; each returns False when the claim was lost."""

    def __init__(self, db: Db, claims: Claims) -> None:
        self.db = db
        self._claims = claims

    def _fenced(self, key: str, values: Callable[[], dict[str, Any]]) -> Any:
        db = self.db
        return db.sql(
            key,
            lambda: (
                runs.update()
                .where(_held())
                .values(heartbeat_at=db.heartbeat_value(), updated_at=P("now"), **values())
            ),
        )

    def _params(self, claim: Claim, **values: Any) -> dict[str, Any]:
        return {"id": claim.run_id, "generation": claim.generation, "now": self.db.now(), **values}

    def heartbeat(self, claim: Claim) -> bool:
        """Prove this worker still executes the run. A cancelled run is heartbeated too
        while it holds its concurrency key: the key stays held until the worker stopped."""
        db = self.db
        sql = db.sql(
            "heartbeat",
            lambda: (
                runs.update()
                .where(
                    runs.c.id == P("id"),
                    runs.c.lease_generation == P("generation"),
                    sa.or_(
                        runs.c.status == "running",
                        sa.and_(
                            runs.c.status == "cancelled",
                            runs.c.active_concurrency_key.is_not(None),
                        ),
                    ),
                )
                .values(heartbeat_at=db.heartbeat_value(), updated_at=P("now"))
            ),
        )
        params = self._params(claim)
        cur = db.write(lambda conn: db.exec(conn, sql, **params))
        return bool(cur.rowcount == 1)

    def persist_step(
        self,
        claim: Claim,
        *,
        index: int,
        name: str,
        status: str,
        output_json: str | None,
        error: str | None,
        started_at: str,
    ) -> bool:
        """Record a finished step and advance the run, in one transaction."""
        db = self.db
        if status == "completed":
            advance = self._fenced("advance", lambda: {"current_step_index": P("index")})
            params = self._params(claim, index=index + 1)
        else:
            advance = self._fenced("touch", dict)
            params = self._params(claim)
        insert = db.sql("insert_step", _insert_step)
        row = {
            "id": new_ulid(),
            "run_id": claim.run_id,
            "generation": claim.generation,
            "name": name,
            "index": index,
            "status": status,
            "output": output_json,
            "error": error,
            "started_at": started_at,
            "completed_at": params["now"],
        }

        def body(conn: Connection) -> Any:
            cur = db.exec(conn, advance, **params)
            db.exec(conn, insert, **row)
            return cur

        return bool(db.write(body).rowcount == 1)

    def set_progress(self, claim: Claim, progress: Progress) -> bool:
        db = self.db
        sql = self._fenced("set_progress", lambda: {"progress": P("progress")})
        params = self._params(claim, progress=progress_json(progress))
        return bool(db.write(lambda conn: db.exec(conn, sql, **params)).rowcount == 1)

    def insert_log(self, claim: Claim, entry: LogEntry) -> bool:
        """Store a log line of the run, unless the claim was lost (a zombie's logs vanish)."""
        db = self.db
        sql = db.sql("insert_log", _insert_log)
        params = {
            "id": entry.id,
            "run_id": entry.run_id,
            "generation": claim.generation,
            "step_name": entry.step_name,
            "level": entry.level,
            "message": entry.message,
            "data": None if entry.data is None else dumps(entry.data),
            "created_at": to_db(entry.created_at),
        }
        return bool(db.write(lambda conn: db.exec(conn, sql, **params)).rowcount == 1)

    # -- the final write ---------------------------------------------------------------

    def finish(
        self, claim: Claim, final: Final, then: ClaimRequest | None = None
    ) -> tuple[bool, Claim | None]:
        """Write the run's final state; with `then`, also claim the next run in the same
        transaction (one commit fewer per run).

        Only where a claim is one UPDATE ... RETURNING: the select-then-update claim after
        a write risks deadlocks (MySQL). After any error of the joint transaction (a
        concurrency-key race), which left nothing written, the run is finished alone.
        """
        db = self.db
        sql, params = self._final(claim, final)
        notify = db.notify if (isinstance(final, Release) or claim.concurrency_key) else None

        def finish_in(conn: Connection) -> Any:
            cur = db.exec(conn, sql, **params)
            # a released run, or a freed concurrency key, is claimable elsewhere now
            if notify is not None:
                notify(conn)
            return cur

        if then is not None and db.returning:
            try:
                cur, claimed = db.write(
                    lambda conn: (finish_in(conn), self._claims.claim_in(conn, then))
                )
            except db.integrity_errors:
                pass
            else:
                return bool(cur.rowcount == 1), self._claims.claimed(claimed)
        return bool(db.write(finish_in).rowcount == 1), None

    def _final(self, claim: Claim, final: Final) -> tuple[Any, dict[str, Any]]:
        if isinstance(final, Complete):
            sql = self._fenced(
                "complete",
                lambda: {
                    "status": "completed",
                    "output": P("output"),
                    "completed_at": P("now"),
                    "active_concurrency_key": None,
                },
            )
            return sql, self._params(claim, output=final.output)
        if isinstance(final, Fail):
            sql = self._fenced(
                "fail",
                lambda: {
                    "status": "failed",
                    "error": P("error"),
                    "failed_step_name": P("step"),
                    "completed_at": P("now"),
                    "active_concurrency_key": None,
                },
            )
            return sql, self._params(claim, error=final.error, step=final.step_name)
        sql = self._fenced(
            "release",
            lambda: {"status": "pending", "lease_owner": None, "active_concurrency_key": None},
        )
        return sql, self._params(claim)

    def acknowledge_stop(self, claim: Claim) -> None:
        """This worker stopped executing a run it no longer holds (cancelled, retried):
        free the concurrency key the run kept for as long as a step could still run."""
        if claim.concurrency_key is None:
            return
        db = self.db
        sql = db.sql(
            "acknowledge_stop",
            lambda: (
                runs.update()
                .where(
                    runs.c.id == P("id"),
                    runs.c.lease_generation == P("generation"),
                    runs.c.status != "running",
                    runs.c.active_concurrency_key.is_not(None),
                )
                .values(active_concurrency_key=None)
            ),
        )

        def body(conn: Connection) -> Any:
            cur = db.exec(conn, sql, id=claim.run_id, generation=claim.generation)
            if db.notify is not None:
                db.notify(conn)
            return cur

        db.write(body)


def _insert_step() -> sa.sql.ClauseElement:
    # the insert re-checks the lease itself, so the two statements of a step need no read
    # in between and a batch-only transport can send them as one batch
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
    ).where(sa.exists().where(_held("run_id")))
    columns = ["id", "run_id", "name", "index", "status", "output", "error"]
    return steps.insert().from_select([*columns, "started_at", "completed_at"], values)


def _insert_log() -> sa.sql.ClauseElement:
    values = sa.select(
        P("id", type_=sa.String),
        P("run_id", type_=sa.String),
        P("step_name", type_=sa.String),
        P("level", type_=sa.String),
        P("message", type_=sa.Text),
        P("data", type_=sa.Text),
        P("created_at", type_=sa.String),
    ).where(sa.exists().where(_held("run_id")))
    columns = ["id", "run_id", "step_name", "level", "message", "data", "created_at"]
    return logs.insert().from_select(columns, values)
