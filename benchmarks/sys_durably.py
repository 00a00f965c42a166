"""durably's benchmark cells. Each function runs in its own process (see cell.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from common import (
    emit,
    last_json,
    percentiles,
    random_gaps,
    ready_and_wait_for_go,
    rss_mb,
    spawn,
    wait_line,
    wait_until,
)

from durably import StepContext, create_durably, define_job
from durably._clock import to_db


@define_job(name="many")
def many(step: StepContext, payload: dict[str, Any]) -> None:
    for i in range(payload["n"]):
        step.run(f"s{i}", lambda i=i: i)


@define_job(name="three")
def three(step: StepContext, payload: dict[str, Any]) -> int:
    a = step.run("a", lambda: 1)
    b = step.run("b", lambda: a + 1)
    return step.run("c", lambda: b + 1)


@define_job(name="one")
def one(step: StepContext, payload: dict[str, Any]) -> int:
    return step.run("only", lambda: 1)


@define_job(name="noop")
def noop(step: StepContext, payload: dict[str, Any]) -> None:
    return None


def _slow_step(i: int, delay: float) -> int:
    print(f"step {i}", flush=True)
    time.sleep(delay)
    return i


@define_job(name="slow")
def slow(step: StepContext, payload: dict[str, Any]) -> None:
    for i in range(payload["n"]):
        step.run(f"s{i}", lambda i=i: _slow_step(i, payload["delay"]))


JOBS = {"many": many, "three": three, "one": one, "noop": noop, "slow": slow}


def _open(url: str, **options: Any) -> Any:
    d = create_durably(url, **options)
    d.migrate()
    d.register(JOBS)
    return d


# -- 1: step overhead ------------------------------------------------------------------


def steps(url: str, n: int) -> dict[str, Any]:
    """µs per step.run in one run of `n` tiny steps."""
    with _open(url) as d:
        d.jobs.many.trigger({"n": n})
        start = time.perf_counter()
        d.process_one()
        elapsed = time.perf_counter() - start
        assert len(d.get_steps(d.get_runs(limit=1)[0].id)) == n
    return {"us_per_step": elapsed / n * 1e6}


# -- 2: throughput ---------------------------------------------------------------------


def drain(url: str, n: int) -> dict[str, Any]:
    """3-step runs triggered up front, then drained by process_until_idle (one thread)."""
    with _open(url) as d:
        d.jobs.three.batch_trigger([{"i": i} for i in range(n)])
        start = time.perf_counter()
        done = d.process_until_idle()
        elapsed = time.perf_counter() - start
    assert done == n, done
    return {"runs_s": n / elapsed, "steps_s": 3 * n / elapsed}


def end_to_end(url: str, n: int) -> dict[str, Any]:
    """n trigger() calls, then the drain: the same work DBOS does when a workflow is called."""
    with _open(url) as d:
        handle = d.jobs.three
        start = time.perf_counter()
        for i in range(n):
            handle.trigger({"i": i})
        done = d.process_until_idle()
        elapsed = time.perf_counter() - start
    assert done == n, done
    return {"runs_s": n / elapsed, "steps_s": 3 * n / elapsed}


def concurrent(url: str, n: int, slots: int) -> dict[str, Any]:
    """The background worker with `max_concurrent_runs=slots` drains n pre-triggered runs."""
    with _open(url, max_concurrent_runs=slots) as d:
        d.jobs.three.batch_trigger([{"i": i} for i in range(n)])
        count = 0
        lock = threading.Lock()
        finished = threading.Event()

        def on_complete(_event: Any) -> None:
            nonlocal count
            with lock:
                count += 1
                if count == n:
                    finished.set()

        d.on("run:complete", on_complete)
        start = time.perf_counter()
        d.start()
        if not finished.wait(600):
            raise TimeoutError(f"only {count} of {n} runs completed")
        elapsed = time.perf_counter() - start
    return {"runs_s": n / elapsed, "steps_s": 3 * n / elapsed}


def drain_child(url: str) -> None:
    """A worker process of `processes`: ready, go, drain, report its count."""
    with _open(url) as d:
        ready_and_wait_for_go()
        done = d.process_until_idle()
    emit({"done": done})


def processes(url: str, n: int, procs: int) -> dict[str, Any]:
    """`procs` worker processes drain n pre-triggered runs (process start-up not timed)."""
    with _open(url) as d:
        d.jobs.three.batch_trigger([{"i": i} for i in range(n)])
    children = [spawn("sys_durably", "drain_child", url=url) for _ in range(procs)]
    for child in children:
        wait_line(child, "ready")
    start = time.perf_counter()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    done = sum(last_json(child)["done"] for child in children)
    elapsed = time.perf_counter() - start
    assert done == n, done
    return {"runs_s": n / elapsed, "steps_s": 3 * n / elapsed}


# -- 3: trigger-to-start latency -------------------------------------------------------


def _collect_latencies(d: Any, n: int) -> tuple[list[float], threading.Event]:
    latencies: list[float] = []
    enough = threading.Event()

    def on_start(event: Any) -> None:
        latencies.append(time.monotonic() - event.payload["t0"])
        if len(latencies) >= n:
            enough.set()

    d.on("run:start", on_start)
    return latencies, enough


def latency_inproc(url: str, n: int, low: float, high: float) -> dict[str, Any]:
    """trigger() to run:start on an idle background worker in the same process."""
    with _open(url) as d:
        latencies, enough = _collect_latencies(d, n)
        d.start()
        time.sleep(0.2)
        for gap in random_gaps(n, low, high):
            time.sleep(gap)
            d.jobs.noop.trigger({"t0": time.monotonic()})
        if not enough.wait(60):
            raise TimeoutError(f"{len(latencies)} of {n} runs started")
    return {k: v * 1000 if k != "n" else v for k, v in percentiles(latencies).items()}


def trigger_child(url: str, n: int, low: float, high: float) -> None:
    """The other process: triggers at random gaps, each payload carrying its trigger time.

    time.monotonic() is CLOCK_MONOTONIC, one clock for every process on the machine.
    """
    with create_durably(url) as d:
        handle = d.register(JOBS)["noop"]
        ready_and_wait_for_go()
        for gap in random_gaps(n, low, high):
            time.sleep(gap)
            handle.trigger({"t0": time.monotonic()})
    emit({"triggered": n})


def latency_xproc(
    url: str, n: int, low: float, high: float, polling_interval: float
) -> dict[str, Any]:
    """trigger() in another process to run:start on an idle worker here."""
    with _open(url, polling_interval=polling_interval) as d:
        latencies, enough = _collect_latencies(d, n)
        d.start()
        child = spawn("sys_durably", "trigger_child", url=url, n=n, low=low, high=high)
        wait_line(child, "ready")
        time.sleep(0.2)
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        last_json(child)
        if not enough.wait(60):
            raise TimeoutError(f"{len(latencies)} of {n} runs started")
    return {k: v * 1000 if k != "n" else v for k, v in percentiles(latencies).items()}


# -- 4: enqueue rate -------------------------------------------------------------------


def enqueue(url: str, n: int) -> dict[str, Any]:
    with _open(url) as d:
        handle = d.jobs.three
        start = time.perf_counter()
        for i in range(n):
            handle.trigger({"i": i})
        rate = n / (time.perf_counter() - start)
        items = [{"i": i} for i in range(n)]
        start = time.perf_counter()
        handle.batch_trigger(items)
        batch = time.perf_counter() - start
    return {"trigger_s": rate, "batch_s": batch}


# -- 5: recovery -----------------------------------------------------------------------

RECOVERY_OPTIONS = {"heartbeat_interval": 0.5, "stale_threshold": 2.0, "polling_interval": 0.1}


def recovery_child(url: str, run_id: str) -> None:
    """A worker that works until `run_id` is completed, then says done."""
    with _open(url, **RECOVERY_OPTIONS) as d:
        d.start()
        wait_until(lambda: d.get_run(run_id).status == "completed", 120, 0.01)
        print("done", flush=True)
        d.stop()


def recovery(url: str, n: int, delay: float, kill_after: int) -> dict[str, Any]:
    """SIGKILL a worker mid-run; seconds from the kill until a restarted worker finishes.

    Includes the restarted interpreter's start-up and the stale threshold (2 s here).
    """
    with _open(url) as d:
        run_id = d.jobs.slow.trigger({"n": n, "delay": delay}).id
    first = spawn("sys_durably", "recovery_child", url=url, run_id=run_id)
    wait_line(first, f"step {kill_after}")
    os.kill(first.pid, signal.SIGKILL)
    killed = time.perf_counter()
    first.wait()
    second = spawn("sys_durably", "recovery_child", url=url, run_id=run_id)
    wait_line(second, "done")
    elapsed = time.perf_counter() - killed
    second.wait(60)
    return {"recovery_s": elapsed, "stale_threshold": RECOVERY_OPTIONS["stale_threshold"]}


# -- 6: scale --------------------------------------------------------------------------


def _seed_history(path: str, count: int) -> None:
    """Insert `count` completed runs directly (fast), older than anything triggered later."""
    conn = sqlite3.connect(path)
    base = datetime(2020, 1, 1, tzinfo=timezone.utc)
    batch = 50_000
    for first in range(0, count, batch):
        rows = []
        for i in range(first, min(count, first + batch)):
            at = to_db(base + timedelta(milliseconds=i))
            rows.append((f"0H{i:024d}", "three", "completed", 3, 1, at, at, at, at))
        conn.executemany(
            "INSERT INTO durably_runs (id, job_name, status, current_step_index, "
            "lease_generation, created_at, updated_at, started_at, completed_at) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO durably_payloads (run_id, payload) VALUES (?, ?)",
            [(row[0], '{"i":0}') for row in rows],
        )
        conn.commit()
    conn.close()


def _plans(path: str, d: Any) -> dict[str, str]:
    """EXPLAIN QUERY PLAN of every statement the store compiled during this cell."""
    conn = sqlite3.connect(path)
    plans = {}
    for key, sql in d._runtime.store.db._cache.items():
        names = sql._names or ()
        params = [0 if n in ("generation", "index", "limit", "offset") else "x" for n in names]
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql.text}", params).fetchall()
        plans[str(key)] = " | ".join(str(r[-1]) for r in rows)
    conn.close()
    return plans


def scale(path: str, history: int, samples: int) -> dict[str, Any]:
    """Claim and get_runs(limit=50) timings with `history` runs in the database (SQLite)."""
    url = f"sqlite:///{path}"
    with _open(url) as d:
        pass
    _seed_history(path, history)
    with _open(url) as d:
        d.jobs.noop.batch_trigger([{"i": i} for i in range(samples)])
        claims = []
        claims_store, request = d._runtime.store.claims, d._keeper.request()
        for _ in range(samples):
            start = time.perf_counter()
            lease = claims_store.claim(request)
            claims.append(time.perf_counter() - start)
            # left running: the next claim takes the next pending run
            assert lease is not None
        listings = []
        for _ in range(samples):
            start = time.perf_counter()
            got = d.get_runs(limit=50)
            listings.append(time.perf_counter() - start)
            assert len(got) == 50
        # the remaining hot statements, so that their plans are checked too
        d.jobs.three.trigger({"i": 0})
        d.process_one()
        d.jobs.three.trigger({"i": 0}, idempotency_key="k")
        d.get_runs(job_name="three", status="pending", limit=50)
        plans = _plans(path, d)
    return {
        "claim_ms": percentiles(claims)["p50"] * 1000,
        "list_ms": percentiles(listings)["p50"] * 1000,
        "plans": plans,
    }


def rss_child(url: str, n: int, every: int) -> None:
    """Drain n one-step runs, sampling this process's RSS every `every` runs."""
    samples = []
    with _open(url) as d:
        done = 0
        while done < n:
            done += d.process_until_idle(max_runs=every)
            samples.append(rss_mb()[0])
        peak = rss_mb()[1]
    emit({"samples": samples, "peak": peak, "done": done})


def rss(url: str, n: int) -> dict[str, Any]:
    """Peak RSS of a worker process over n runs (triggered here, drained by a child)."""
    every = max(1, n // 10)
    with _open(url) as d:
        for first in range(0, n, 10_000):
            d.jobs.one.batch_trigger([{"i": i} for i in range(first, min(n, first + 10_000))])
    child = spawn("sys_durably", "rss_child", url=url, n=n, every=every)
    result = last_json(child, timeout=1800)
    samples = result["samples"]
    return {
        "rss_first_mb": samples[0],
        "rss_last_mb": samples[-1],
        "peak_mb": result["peak"],
        "runs": result["done"],
    }


def settings(url: str) -> dict[str, Any]:
    """The journal mode and synchronous level durably's connections actually use."""
    with _open(url) as d, d.dialect.read() as conn:
        mode = conn.execute("PRAGMA journal_mode").rows[0][0]
        sync = conn.execute("PRAGMA synchronous").rows[0][0]
    return {
        "journal_mode": mode,
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[sync],
    }
