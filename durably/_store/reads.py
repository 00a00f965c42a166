"""Everything the store only reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa

from .._records import LogEntry, Run, StepRecord
from .._schema import logs, runs, steps
from ._sql import (
    LOG_COLUMNS,
    STEP_COLUMNS,
    Db,
    P,
    log_from_row,
    run_from_row,
    select_runs,
    step_from_row,
)
from .claims import Claim

# the largest LIMIT/OFFSET every backend binds (PostgreSQL binds a 32-bit integer)
MAX_PAGE = 2**31 - 1

LeaseState = Literal["held", "cancelled", "lost"]


class Reads:
    """Reads over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def lease_state(self, claim: Claim) -> LeaseState:
        """Whether the claim still holds its run: the check made before a step starts."""
        db = self.db
        sql = db.sql(
            "lease_state",
            lambda: sa.select(runs.c.status, runs.c.lease_generation).where(runs.c.id == P("id")),
        )
        with db.read() as conn:
            row = db.exec(conn, sql, id=claim.run_id).fetchone()
        if row is None or row[1] != claim.generation:
            return "lost"
        if row[0] == "running":
            return "held"
        return "cancelled" if row[0] == "cancelled" else "lost"

    def completed_steps(self, run_id: str) -> dict[str, str | None]:
        """name -> stored output JSON of the run's completed steps."""
        db = self.db
        sql = db.sql(
            "completed_steps",
            lambda: sa.select(steps.c.name, steps.c.output).where(
                steps.c.run_id == P("run_id"), steps.c.status == "completed"
            ),
        )
        with db.read() as conn:
            return dict(db.exec(conn, sql, run_id=run_id).fetchall())

    def get_run(self, run_id: str) -> Run | None:
        db = self.db
        sql = db.sql("get_run", lambda: select_runs().where(runs.c.id == P("id")))
        with db.read() as conn:
            row = db.exec(conn, sql, id=run_id).fetchone()
        return None if row is None else run_from_row(row)

    def get_runs(
        self,
        *,
        job_names: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        if (job_names is not None and not job_names) or (statuses is not None and not statuses):
            return []
        db = self.db
        nj = None if job_names is None else len(job_names)
        ns = None if statuses is None else len(statuses)
        has_limit = limit is not None
        has_offset = bool(offset)
        # MySQL and SQLite need a LIMIT before an OFFSET
        needs_limit = has_offset and not has_limit and db.sa_dialect.name != "postgresql"

        def build() -> sa.sql.ClauseElement:
            stmt = select_runs()
            if nj is not None:
                stmt = stmt.where(runs.c.job_name.in_([P(f"job_{i}") for i in range(nj)]))
            if ns is not None:
                stmt = stmt.where(runs.c.status.in_([P(f"status_{i}") for i in range(ns)]))
            stmt = stmt.order_by(runs.c.created_at.desc(), runs.c.id.desc())
            if has_limit or needs_limit:
                stmt = stmt.limit(P("limit", type_=sa.Integer))
            if has_offset:
                stmt = stmt.offset(P("offset", type_=sa.Integer))
            return stmt

        sql = db.sql(("get_runs", nj, ns, has_limit, has_offset, needs_limit), build)
        params: dict[str, Any] = {f"job_{i}": name for i, name in enumerate(job_names or ())}
        params.update({f"status_{i}": status for i, status in enumerate(statuses or ())})
        if has_limit or needs_limit:
            params["limit"] = MAX_PAGE if limit is None else min(limit, MAX_PAGE)
        if has_offset:
            params["offset"] = min(offset or 0, MAX_PAGE)
        with db.read() as conn:
            rows = db.exec(conn, sql, **params).fetchall()
        return [run_from_row(row) for row in rows]

    def get_steps(self, run_id: str) -> list[StepRecord]:
        db = self.db
        sql = db.sql(
            "get_steps",
            lambda: (
                sa.select(*STEP_COLUMNS)
                .where(steps.c.run_id == P("run_id"))
                .order_by(steps.c.index, steps.c.id)
            ),
        )
        with db.read() as conn:
            rows = db.exec(conn, sql, run_id=run_id).fetchall()
        return [step_from_row(r) for r in rows]

    def count_steps(self, run_id: str) -> int:
        db = self.db
        sql = db.sql(
            "count_steps",
            lambda: (
                sa.select(sa.func.count()).select_from(steps).where(steps.c.run_id == P("run_id"))
            ),
        )
        with db.read() as conn:
            row = db.exec(conn, sql, run_id=run_id).fetchone()
        return int(row[0]) if row else 0

    def get_logs(self, run_id: str) -> list[LogEntry]:
        db = self.db
        sql = db.sql(
            "get_logs",
            lambda: sa.select(*LOG_COLUMNS).where(logs.c.run_id == P("run_id")).order_by(logs.c.id),
        )
        with db.read() as conn:
            rows = db.exec(conn, sql, run_id=run_id).fetchall()
        return [log_from_row(r) for r in rows]
