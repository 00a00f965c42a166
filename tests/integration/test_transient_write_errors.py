"""Lock conflicts on MariaDB/MySQL that made the concurrent-claimers test flaky, made
deterministic with a second real session that holds a run's row lock.

- stale recovery scanned `ix_durably_runs_claim` and locked every running run's entry
  there before its primary-key row, while a fenced status write (complete, fail, release)
  locks the primary-key row before that entry: the two deadlock (error 1213) and the
  recovery failed out of `process_one`;
- a final write that fails once (deadlock, lock wait timeout) left the run `running`; it
  went stale, was recovered and its body ran a second time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import wait_until
from pydantic import BaseModel

from durably import Durably, StepContext, create_durably, define_job
from durably._store import ClaimRequest
from durably_dialects.sqlalchemy import SqlAlchemyDialect

pytestmark = pytest.mark.backends("mysql")


class Item(BaseModel):
    n: int


@contextmanager
def _session(url: str) -> Iterator[Any]:
    """A raw DB-API session of its own (not autocommit), closed at the end."""
    engine = sa.create_engine(url, isolation_level="READ COMMITTED")
    raw = engine.raw_connection()
    try:
        yield raw
    finally:
        raw.rollback()
        raw.close()
        engine.dispose()


def _scalar(raw: Any, sql: str, *params: Any) -> Any:
    cur = raw.cursor()
    cur.execute(sql, params)
    row = cur.fetchone()
    return None if row is None else row[0]


def _statements_running(observer: Any, like: str) -> list[Any]:
    """Query ids of this database's statements now executing whose text matches `like`
    (a statement of a few rows seen executing at all is, in practice, waiting for a lock;
    MariaDB 10.11 does not list such waits in INNODB_LOCK_WAITS reliably)."""
    cur = observer.cursor()
    cur.execute(
        "SELECT query_id FROM information_schema.PROCESSLIST"
        " WHERE db = DATABASE() AND command = 'Query' AND info LIKE %s",
        (like,),
    )
    observer.commit()
    return [row[0] for row in cur.fetchall()]


def test_stale_recovery_does_not_deadlock_with_a_run_completing(
    make_durably: Callable[..., Durably], backend_url: str
) -> None:
    d = make_durably()
    d.register({"j": define_job(name="j", input=Item, run=lambda step, p: p.n)})
    run = d.jobs.j.trigger(Item(n=1))
    store = d._runtime.store
    lease = store.claims.claim(ClaimRequest(("j",), "worker-a"))
    assert lease is not None and lease.run_id == run.id

    outcome: list[BaseException | int] = []

    def recover() -> None:
        try:
            # nothing is stale: the heartbeat was just written
            outcome.append(store.claims.recover_stale(d.stale_threshold))
        except BaseException as exc:
            outcome.append(exc)

    with _session(backend_url) as worker, _session(backend_url) as observer:
        # the worker's status write, in two halves: first the primary-key row ...
        _scalar(worker, "SELECT id FROM durably_runs WHERE id = %s FOR UPDATE", run.id)
        thread = threading.Thread(target=recover)
        thread.start()
        # ... the recovery either finishes at once or waits for that row
        recovering = "UPDATE durably_runs SET status='pending'%WHERE durably_runs.status%"
        wait_until(lambda: outcome or _statements_running(observer, recovering))
        # ... then the secondary-index entries the status change moves
        _scalar(
            worker,
            "UPDATE durably_runs SET status = 'completed', active_concurrency_key = NULL"
            " WHERE id = %s AND status = 'running'",
            run.id,
        )
        worker.commit()
        thread.join(timeout=30)
    assert outcome and not isinstance(outcome[0], BaseException), outcome


def test_a_final_write_failing_once_does_not_execute_the_run_again(backend_url: str) -> None:
    # the worker's sessions wait 1 s for a row lock, so its final write fails fast
    dialect = SqlAlchemyDialect(
        backend_url, connect_args={"init_command": "SET SESSION innodb_lock_wait_timeout=1"}
    )
    d = create_durably(dialect, polling_interval=0.05, heartbeat_interval=0.2, stale_threshold=2.0)
    executions: list[str] = []
    release = threading.Event()

    with _session(backend_url) as other, _session(backend_url) as observer:

        def body(step: StepContext, payload: Item) -> int:
            step.run("work", lambda: payload.n)
            executions.append(step.run_id)  # outside steps: runs again on a re-execution
            if len(executions) == 1:
                # another session takes the run's row: the 'complete' write has to wait
                _scalar(other, "SELECT id FROM durably_runs WHERE id = %s FOR UPDATE", step.run_id)
                release.set()
            return payload.n

        def let_go() -> None:
            # keep the row until the worker's first attempt gave up waiting, then free it
            release.wait(30)
            # (the heartbeat waits for the row too: look for the 'complete' write only)
            like = "UPDATE durably_runs SET status='completed'%"
            first = wait_until(lambda: _statements_running(observer, like))[0]
            wait_until(lambda: first not in _statements_running(observer, like))
            other.rollback()

        try:
            d.migrate()
            d.register({"j": define_job(name="j", input=Item, run=body)})
            run = d.jobs.j.trigger(Item(n=1))
            helper = threading.Thread(target=let_go)
            helper.start()
            assert d.process_one()
            helper.join(timeout=30)
            wait_until(lambda: d.process_one() or d.get_run(run.id).status == "completed")
            assert d.get_run(run.id).status == "completed"
            assert executions == [run.id], "the run's body was executed again"
        finally:
            d.close()
