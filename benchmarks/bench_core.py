"""durably's own figures on the embedded SQLite default, beside the bare-sqlite3 floor.

Run: .venv/bin/python benchmarks/bench_core.py [--reps 3] [--synchronous NORMAL|FULL]
Peers (DBOS, Huey) and the PostgreSQL rows come with the benchmarks issue.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from durably import StepContext, create_durably, define_job


@define_job(name="many")
def many(step: StepContext, payload: dict[str, Any]) -> None:
    for i in range(payload["n"]):
        step.run(f"s{i}", lambda i=i: i)


@define_job(name="three")
def three(step: StepContext, payload: dict[str, Any]) -> int:
    a = step.run("a", lambda: 1)
    b = step.run("b", lambda: a + 1)
    return step.run("c", lambda: b + 1)


def step_overhead(tmp: Path, sync: str, n: int) -> float:
    """µs per step.run in one run of `n` tiny steps."""
    with create_durably(f"sqlite:///{tmp / 'steps.db'}?synchronous={sync}") as d:
        d.migrate()
        d.register({"many": many})["many"].trigger({"n": n})
        start = time.perf_counter()
        d.process_one()
        return (time.perf_counter() - start) / n * 1e6


def floor(tmp: Path, sync: str, n: int) -> float:
    """µs per insert + update + commit with bare sqlite3 (WAL)."""
    conn = sqlite3.connect(tmp / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("CREATE TABLE r (id TEXT PRIMARY KEY, idx INT, hb TEXT)")
    conn.execute("CREATE TABLE s (id TEXT PRIMARY KEY, run_id TEXT, name TEXT, idx INT, out TEXT)")
    conn.execute("INSERT INTO r VALUES ('x', 0, '')")
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO s VALUES (?,?,?,?,?)", (f"id{i}", "x", f"s{i}", i, "1"))
        conn.execute("UPDATE r SET idx=?, hb=? WHERE id='x'", (i, "2026-01-01T00:00:00.000000Z"))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed / n * 1e6


def throughput(tmp: Path, sync: str, n: int) -> float:
    """Runs/s of 3-step runs, triggered up front, drained by process_until_idle."""
    with create_durably(f"sqlite:///{tmp / 'tp.db'}?synchronous={sync}") as d:
        d.migrate()
        handle = d.register({"three": three})["three"]
        for i in range(n):
            handle.trigger({"i": i})
        start = time.perf_counter()
        done = d.process_until_idle()
        return done / (time.perf_counter() - start)


def enqueue(tmp: Path, sync: str, n: int) -> tuple[float, float]:
    """(trigger calls/s, seconds for one batch_trigger of n)."""
    with create_durably(f"sqlite:///{tmp / 'enq.db'}?synchronous={sync}") as d:
        d.migrate()
        handle = d.register({"three": three})["three"]
        start = time.perf_counter()
        for i in range(n):
            handle.trigger({"i": i})
        rate = n / (time.perf_counter() - start)
        start = time.perf_counter()
        handle.batch_trigger([{"i": i} for i in range(n)])
        return rate, time.perf_counter() - start


def median(fn: Callable[[Path], Any], reps: int) -> Any:
    results = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(fn(Path(tmp)))
    if isinstance(results[0], tuple):
        return tuple(statistics.median(r[i] for r in results) for i in range(len(results[0])))
    return statistics.median(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2_000)
    args = parser.parse_args()
    sync = args.synchronous
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {platform.machine()}")
    print(f"journal_mode=WAL synchronous={sync}; medians of {args.reps} reps\n")
    step_us = median(lambda t: step_overhead(t, sync, args.steps), args.reps)
    floor_us = median(lambda t: floor(t, sync, args.steps), args.reps)
    runs_s = median(lambda t: throughput(t, sync, args.runs), args.reps)
    trig_s, batch_s = median(lambda t: enqueue(t, sync, 10_000), args.reps)
    rows = [
        ("step overhead (µs/step.run)", f"{step_us:.1f}"),
        ("bare sqlite3 insert+update+commit (µs)", f"{floor_us:.1f}"),
        ("durably / floor", f"{step_us / floor_us:.2f}x"),
        (f"3-step runs/s ({args.runs} runs, 1 worker)", f"{runs_s:.0f}"),
        ("trigger() calls/s", f"{trig_s:.0f}"),
        ("batch_trigger of 10,000 (s)", f"{batch_s:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
