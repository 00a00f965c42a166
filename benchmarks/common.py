"""Helpers shared by the benchmark cells: child processes, random arrivals, RSS, SQLite files.

Every measurement ("cell") runs in a fresh interpreter started by `run.py`, so that one
system's threads, caches and singletons (DBOS is one per process) never leak into the
next figure. A cell prints one JSON object as the last line of its stdout.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CELL = HERE / "cell.py"


def spawn(module: str, function: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start `cell.py module function kwargs` as a child with pipes for a ready/go handshake."""
    return subprocess.Popen(
        [sys.executable, str(CELL), module, function, json.dumps(kwargs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def wait_line(proc: subprocess.Popen[str], expected: str, timeout: float = 120.0) -> None:
    """Read the child's stdout until a line equal to `expected` (its ready signal)."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited (rc={proc.wait()}) before printing {expected!r}")
        if line.strip() == expected:
            return
    raise TimeoutError(f"child did not print {expected!r} within {timeout} s")


def last_json(proc: subprocess.Popen[str], timeout: float = 600.0) -> Any:
    """The JSON object a child printed last, after it exits."""
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed with rc={proc.returncode}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def ready_and_wait_for_go() -> None:
    """Child side of the handshake: say ready, block until the parent says go."""
    print("ready", flush=True)
    sys.stdin.readline()


def random_gaps(n: int, low: float, high: float, seed: int = 1) -> list[float]:
    """Random gaps between arrivals: a fixed gap would phase-lock with a poller."""
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(n)]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=20, method="inclusive")
    return {"p50": statistics.median(ordered), "p95": q[18], "n": len(ordered)}


def rss_mb() -> tuple[float, float]:
    """(current VmRSS, peak VmHWM) of this process in MB."""
    fields: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def wal_file(path: Path, synchronous: str) -> None:
    """Create an SQLite file in WAL mode (the mode is persistent in the file)."""
    conn = sqlite3.connect(path)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.close()
    if mode.lower() != "wal":
        raise RuntimeError(f"{path} did not switch to WAL ({mode})")


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)


def pg_admin_url() -> str:
    return os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


def ensure_pg_database(name: str) -> str:
    """Create database `name` on the benchmark server if missing; returns its libpq URL.

    Only `durably_bench` and `dbos_bench` are ever created or emptied, never `test`.
    """
    if name not in ("durably_bench", "dbos_bench"):
        raise ValueError(f"refusing to touch database {name!r}")
    import psycopg

    admin = pg_admin_url()
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin}/{name}"


def reset_pg_database(name: str) -> str:
    """Drop and recreate a benchmark database, so every rep starts from empty tables."""
    if name not in ("durably_bench", "dbos_bench"):
        raise ValueError(f"refusing to touch database {name!r}")
    import psycopg

    admin = pg_admin_url()
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin}/{name}"


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)
