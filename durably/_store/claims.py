"""Taking runs: the atomic claim (one statement or select-then-update, per backend) and
stale recovery.

Every claim bumps the run's lease generation; the `Claim` it returns carries that
generation, which fences every later write made for the run (see `leased`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .._dialect import Connection
from .._schema import payloads, runs
from ._sql import Db, P, loads

logger = logging.getLogger("durably.store")

# a select-then-update claim whose row was taken in between: look again
_RACED: Any = object()


@dataclass(frozen=True)
class Claim:
    """What a claim took: the run and the generation that fences its writes."""

    run_id: str
    job_name: str
    generation: int
    payload: Any
    concurrency_key: str | None

    @property
    def first(self) -> bool:
        """True on the run's first claim: it has no steps to replay."""
        return self.generation == 1


@dataclass(frozen=True)
class ClaimRequest:
    """Who claims, and for which jobs."""

    job_names: tuple[str, ...]
    owner: str


def _claim_from_row(row: Sequence[Any]) -> Claim:
    run_id, job_name, payload, generation, concurrency_key = row
    return Claim(run_id, job_name, generation, loads(payload), concurrency_key)


def _payload_of(run_id: Any) -> sa.Select[Any]:
    """The payload of run `run_id` (a parameter, or the id column of an enclosing UPDATE).

    SQLite's RETURNING names columns unqualified (`run_id = id`): `id` is durably_runs'
    because durably_payloads has no column of that name.
    """
    return sa.select(payloads.c.payload).where(payloads.c.run_id == run_id)


class Claims:
    """Claiming and stale recovery over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def claim(self, request: ClaimRequest) -> Claim | None:
        """Atomically take the oldest claimable pending run of `request.job_names`."""
        if not request.job_names:
            return None
        for _ in range(5):
            try:
                result = self.db.write(lambda conn: self.claim_in(conn, request))
            except self.db.integrity_errors:
                # another claimer took the same concurrency key at the same moment
                # (possible where claims are not serialised); look again
                continue
            row = self.claimed_row(result)
            if row is not _RACED:
                return None if row is None else _claim_from_row(row)
        return None

    def claim_in(self, conn: Connection, request: ClaimRequest) -> Any:
        """Claim inside the transaction of `conn`; read the outcome with `claimed_row`
        after the transaction (batch-only transports fill results in at its end)."""
        names = request.job_names
        params = {f"job_{i}": name for i, name in enumerate(names)}
        db = self.db
        if db.returning:
            # one statement: UPDATE ... WHERE id = (oldest claimable) RETURNING the run
            sql = db.sql(("claim_returning", len(names)), lambda: self._claim_update(len(names)))
            return db.exec(conn, sql, owner=request.owner, now=db.now(), **params)
        return self._claim_select_update(conn, request.owner, params)

    def claimed_row(self, claimed: Any) -> Any:
        """The claimed run's row, None when nothing was claimable, or `_RACED`."""
        if self.db.returning:
            return claimed.fetchone()
        return claimed

    def claimed(self, result: Any) -> Claim | None:
        """The `Claim` of a `claim_in` result, None when nothing was (cleanly) claimed."""
        row = self.claimed_row(result)
        return None if row is None or row is _RACED else _claim_from_row(row)

    def _claim_select_update(self, conn: Connection, owner: str, params: dict[str, Any]) -> Any:
        """Select the oldest claimable run (locking it), then update it: for backends
        without UPDATE ... RETURNING (MySQL/MariaDB); needs an interactive transaction."""
        db = self.db
        n = len(params)
        select_sql = db.sql(("claim_select", n), lambda: self._candidates(n, full=True))
        update_sql = db.sql(
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
        row = db.exec(conn, select_sql, **params).fetchone()
        if row is None:
            return None
        run_id, job_name, generation, concurrency_key = row
        updated = db.exec(
            conn,
            update_sql,
            id=run_id,
            old_generation=generation,
            generation=generation + 1,
            owner=owner,
            now=db.now(),
        )
        if updated.rowcount != 1:
            return _RACED
        # read once the run is ours, by primary key: never the payloads of other candidates
        payload_sql = db.sql("claim_payload", lambda: _payload_of(P("id")))
        found = db.exec(conn, payload_sql, id=run_id).fetchone()
        payload = None if found is None else found[0]
        return run_id, job_name, payload, generation + 1, concurrency_key

    def _claim_values(self, generation: Any) -> dict[str, Any]:
        return {
            "status": "running",
            "lease_generation": generation,
            "lease_owner": P("owner"),
            "active_concurrency_key": runs.c.concurrency_key,
            "heartbeat_at": self.db.heartbeat_value(),
            "started_at": sa.func.coalesce(runs.c.started_at, P("now")),
            "updated_at": P("now"),
        }

    def _claim_update(self, n: int) -> sa.sql.ClauseElement:
        candidate = self._candidates(n, full=False).scalar_subquery()
        return (
            runs.update()
            .where(runs.c.id == candidate, runs.c.status == "pending")
            .values(**self._claim_values(runs.c.lease_generation + 1))
            .returning(
                runs.c.id,
                runs.c.job_name,
                # the claimed run's payload, read in the same statement
                _payload_of(runs.c.id).scalar_subquery(),
                runs.c.lease_generation,
                runs.c.concurrency_key,
            )
        )

    def _candidates(self, n: int, *, full: bool) -> sa.Select[Any]:
        """The oldest claimable pending run of n job names (aliases keep the subqueries
        independent of an enclosing UPDATE of the same table)."""
        c = runs.alias("candidate")
        held_by = runs.alias("holder")
        earlier = runs.alias("earlier")
        # a key is held by a running run, and by a cancelled one until its worker has
        # stopped executing it (acknowledged, or gone stale)
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
            (c.c.id, c.c.job_name, c.c.lease_generation, c.c.concurrency_key) if full else (c.c.id,)
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
        if self.db.skip_locked:
            stmt = stmt.with_for_update(skip_locked=True)
        return stmt

    def recover_stale(self, threshold: float) -> int:
        """Give runs whose heartbeat is older than `threshold` seconds back to pending,
        and free the concurrency keys that stopped runs hold past it.

        The stale rows are found by a plain read, then changed one by one by primary key,
        each re-checked: a scan that locked index entries before rows would take locks in
        the opposite order of every other write of a run, and deadlock with them (InnoDB).
        """
        db = self.db
        cutoff = db.stale_cutoff(threshold)
        find_stale = db.sql(
            "find_stale",
            lambda: (
                sa.select(runs.c.id, runs.c.lease_generation)
                .where(runs.c.status == "running", runs.c.heartbeat_at < P("cutoff"))
                .order_by(runs.c.id)
            ),
        )
        # a cancelled (or retried) run keeps its key while its worker may still run a
        # step; a worker that died never acknowledges, so the key goes with its heartbeat
        find_keys = db.sql(
            "find_stale_keys",
            lambda: (
                sa.select(runs.c.id, runs.c.lease_generation)
                .where(
                    runs.c.active_concurrency_key.is_not(None),
                    runs.c.status != "running",
                    sa.or_(runs.c.heartbeat_at.is_(None), runs.c.heartbeat_at < P("cutoff")),
                )
                .order_by(runs.c.id)
            ),
        )
        with db.read() as conn:
            stale = db.exec(conn, find_stale, cutoff=cutoff).fetchall()
            keys = db.exec(conn, find_keys, cutoff=cutoff).fetchall()
        if not stale and not keys:
            return 0
        recover = db.sql(
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
        free_key = db.sql(
            "free_stale_key",
            lambda: (
                runs.update()
                .where(
                    runs.c.id == P("id"),
                    runs.c.lease_generation == P("generation"),
                    runs.c.status != "running",
                    sa.or_(runs.c.heartbeat_at.is_(None), runs.c.heartbeat_at < P("cutoff")),
                )
                .values(active_concurrency_key=None)
            ),
        )
        now = db.now()

        def body(conn: Connection) -> list[Any]:
            done = [
                db.exec(conn, recover, id=i, generation=g, cutoff=cutoff, now=now) for i, g in stale
            ]
            for i, g in keys:
                db.exec(conn, free_key, id=i, generation=g, cutoff=cutoff)
            if db.notify is not None:
                db.notify(conn)
            return done

        count = sum(int(cur.rowcount) for cur in db.write(body))
        if count:
            logger.info("returned %d stale run(s) to pending", count)
        return count
