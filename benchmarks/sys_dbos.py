"""DBOS's benchmark cells (one DBOS per process: DBOS is a process-wide singleton).

SQLite: the system database file is created in WAL mode before DBOS opens it (the
journal mode is persistent in the file; DBOS itself does not set it), and every
connection DBOS opens sets the same `synchronous` as the durably figure it is compared
with. DBOS's own connect hook still runs (BEGIN IMMEDIATE, busy_timeout, foreign_keys).
PostgreSQL: the server's defaults, the same server and settings durably uses.

Throughput calls workflows directly, in one thread (or a pool of threads): DBOS's queue
polls (default once a second, dequeuing at most `worker_concurrency` per poll), and an
unlimited queue starts one thread per queued workflow, so the direct call is its
fastest honest path. A direct call also writes the workflow's row, so it is compared
with durably's trigger-then-drain figure, which writes the run's row too.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import (
    emit,
    last_json,
    percentiles,
    random_gaps,
    ready_and_wait_for_go,
    spawn,
    wait_line,
    wal_file,
)
from dbos import DBOS, DBOSClient

_latencies: list[float] = []


@DBOS.step()
def tiny(i: int) -> int:
    return i


@DBOS.workflow()
def many_wf(n: int) -> None:
    for i in range(n):
        tiny(i)


@DBOS.step()
def step_a() -> int:
    return 1


@DBOS.step()
def step_b(a: int) -> int:
    return a + 1


@DBOS.step()
def step_c(b: int) -> int:
    return b + 1


@DBOS.workflow()
def three_wf(i: int) -> int:
    return step_c(step_b(step_a()))


@DBOS.workflow()
def noop_wf(t0: float) -> None:
    _latencies.append(time.monotonic() - t0)


@DBOS.step()
def slow_step(i: int, delay: float) -> int:
    print(f"step {i}", flush=True)
    time.sleep(delay)
    return i


@DBOS.workflow()
def slow_wf(n: int, delay: float) -> None:
    for i in range(n):
        slow_step(i, delay)


def _sqlite_creator(path: str, synchronous: str) -> Any:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        conn.isolation_level = "IMMEDIATE"
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        return conn

    return connect


def _config(db: str, synchronous: str | None) -> dict[str, Any]:
    """`db` is a file path for SQLite, or a postgresql:// URL."""
    config: dict[str, Any] = {"name": "bench", "log_level": "ERROR"}
    if db.startswith("postgresql"):
        config["system_database_url"] = db
    else:
        if not Path(db).exists():
            wal_file(Path(db), synchronous or "FULL")
        config["system_database_url"] = f"sqlite:///{db}"
        config["db_engine_kwargs"] = {"creator": _sqlite_creator(db, synchronous or "FULL")}
    return config


def _launch(db: str, synchronous: str | None) -> DBOS:
    dbos = DBOS(config=_config(db, synchronous))  # type: ignore[arg-type]
    DBOS.launch()
    return dbos


def _client(db: str, synchronous: str | None) -> DBOSClient:
    if db.startswith("postgresql"):
        return DBOSClient(system_database_url=db)
    engine = sa.create_engine("sqlite://", creator=_sqlite_creator(db, synchronous or "FULL"))
    return DBOSClient(system_database_engine=engine)


def _done() -> None:
    DBOS.destroy(destroy_registry=True)


# -- 1: step overhead ------------------------------------------------------------------


def steps(db: str, synchronous: str | None, n: int) -> dict[str, Any]:
    _launch(db, synchronous)
    start = time.perf_counter()
    many_wf(n)
    elapsed = time.perf_counter() - start
    _done()
    return {"us_per_step": elapsed / n * 1e6}


# -- 2: throughput ---------------------------------------------------------------------


def end_to_end(db: str, synchronous: str | None, n: int) -> dict[str, Any]:
    _launch(db, synchronous)
    start = time.perf_counter()
    for i in range(n):
        three_wf(i)
    elapsed = time.perf_counter() - start
    _done()
    return {"runs_s": n / elapsed, "steps_s": 3 * n / elapsed}


def concurrent(db: str, synchronous: str | None, n: int, slots: int) -> dict[str, Any]:
    _launch(db, synchronous)
    start = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(three_wf, range(n)))
    elapsed = time.perf_counter() - start
    _done()
    return {"runs_s": n / elapsed, "steps_s": 3 * n / elapsed}


# -- 3: latency ------------------------------------------------------------------------


def latency_inproc(
    db: str, synchronous: str | None, n: int, low: float, high: float
) -> dict[str, Any]:
    """DBOS.start_workflow to the workflow body, same process."""
    _launch(db, synchronous)
    time.sleep(0.2)
    for gap in random_gaps(n, low, high):
        time.sleep(gap)
        DBOS.start_workflow(noop_wf, time.monotonic())
    deadline = time.monotonic() + 60
    while len(_latencies) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    _done()
    return {k: v * 1000 if k != "n" else v for k, v in percentiles(_latencies).items()}


def enqueue_child(
    db: str, synchronous: str | None, n: int, low: float, high: float, queue: str
) -> None:
    client = _client(db, synchronous)
    name = noop_wf.dbos_function_name  # type: ignore[attr-defined]
    ready_and_wait_for_go()
    for gap in random_gaps(n, low, high):
        time.sleep(gap)
        client.enqueue({"queue_name": queue, "workflow_name": name}, time.monotonic())
    client.destroy()
    emit({"enqueued": n})


def latency_xproc(
    db: str, synchronous: str | None, n: int, low: float, high: float, polling_interval: float
) -> dict[str, Any]:
    """DBOSClient.enqueue in another process to the workflow body here (queue polling)."""
    _launch(db, synchronous)
    DBOS.register_queue("lat", polling_interval_sec=polling_interval)
    child = spawn(
        "sys_dbos",
        "enqueue_child",
        db=db,
        synchronous=synchronous,
        n=n,
        low=low,
        high=high,
        queue="lat",
    )
    wait_line(child, "ready")
    time.sleep(2.0)  # the queue manager picks up new queues once a second
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    last_json(child)
    deadline = time.monotonic() + 60
    while len(_latencies) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    _done()
    return {k: v * 1000 if k != "n" else v for k, v in percentiles(_latencies).items()}


# -- 4: enqueue rate -------------------------------------------------------------------


def enqueue(db: str, synchronous: str | None, n: int) -> dict[str, Any]:
    """DBOSClient.enqueue calls onto a queue nobody serves (DBOS has no batch enqueue)."""
    # the client needs the system tables: let a launch create them first
    _launch(db, synchronous)
    _done()
    client = _client(db, synchronous)
    name = three_wf.dbos_function_name  # type: ignore[attr-defined]
    start = time.perf_counter()
    for i in range(n):
        client.enqueue({"queue_name": "idle", "workflow_name": name}, i)
    rate = n / (time.perf_counter() - start)
    client.destroy()
    return {"trigger_s": rate}


# -- 5: recovery -----------------------------------------------------------------------


def recovery_child(db: str, synchronous: str | None, start: bool, n: int, delay: float) -> None:
    """Start the workflow (first process) or let launch() recover it (restarted process)."""
    _launch(db, synchronous)
    if start:
        DBOS.start_workflow(slow_wf, n, delay)
        threading.Event().wait()
    else:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses = DBOS.list_workflows()
            if statuses and statuses[0].status == "SUCCESS":
                break
            time.sleep(0.01)
        print("done", flush=True)
        _done()


def recovery(
    db: str, synchronous: str | None, n: int, delay: float, kill_after: int
) -> dict[str, Any]:
    """SIGKILL mid-workflow; seconds from the kill until a restarted process finishes it.

    DBOS recovers its own executor's pending workflows at launch, so there is no stale
    threshold to wait out; the figure is mostly interpreter start-up and launch.
    """
    args = {"db": db, "synchronous": synchronous, "n": n, "delay": delay}
    first = spawn("sys_dbos", "recovery_child", start=True, **args)
    wait_line(first, f"step {kill_after}")
    os.kill(first.pid, signal.SIGKILL)
    killed = time.perf_counter()
    first.wait()
    second = spawn("sys_dbos", "recovery_child", start=False, **args)
    wait_line(second, "done")
    elapsed = time.perf_counter() - killed
    second.wait(60)
    return {"recovery_s": elapsed}


def settings(db: str, synchronous: str | None) -> dict[str, Any]:
    """The journal mode and synchronous level of the connections DBOS opens."""
    engine = _launch(db, synchronous)._sys_db.engine
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    _done()
    return {"journal_mode": mode, "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL"}[sync]}
