"""The floor: the write of one step done with bare sqlite3 (insert + update + commit, WAL)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any


def floor(path: str, synchronous: str, n: int) -> dict[str, Any]:
    """µs per BEGIN IMMEDIATE; INSERT step row; UPDATE run row; COMMIT."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
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
    return {"us_per_step": elapsed / n * 1e6}
