"""Huey's benchmark cells: `SqliteHuey` storage (WAL), one worker thread unless stated.

Huey checkpoints no steps: a task is one unit, and its "three steps" are three lines of
Python inside it. Persisted per task: the queue row (insert, then select + delete at
dequeue) and the result row. A task killed mid-way is gone (it left the queue when it
was dequeued), so Huey has no recovery figure.

Workers here are plain threads running Huey's own dequeue/execute loop: the consumer
does the same, plus signal handling and a back-off sleep (0.1 s, growing to 10 s) when the
queue is empty; the latency cells poll every 0.1 s, the consumer's initial delay.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from common import (
    emit,
    last_json,
    percentiles,
    random_gaps,
    ready_and_wait_for_go,
    spawn,
    wait_line,
)
from huey import Huey
from huey.storage import SqliteStorage

_latencies: list[float] = []
_SYNC = {"OFF": 0, "NORMAL": 1, "FULL": 2}


class _Storage(SqliteStorage):
    """SqliteStorage with an explicit `synchronous` (its `fsync` knows only OFF and FULL)."""

    def __init__(self, *args: Any, synchronous: str = "FULL", **kwargs: Any) -> None:
        self._synchronous = _SYNC[synchronous]
        super().__init__(*args, **kwargs)

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute(f"pragma synchronous={self._synchronous}")
        return conn


def _make(path: str, synchronous: str) -> tuple[Huey, dict[str, Any]]:
    huey = Huey("bench", storage_class=_Storage, filename=path, synchronous=synchronous)

    @huey.task()
    def three_task(i: int) -> int:
        a = 1
        b = a + 1
        return b + 1

    @huey.task()
    def noop_task(t0: float) -> None:
        _latencies.append(time.monotonic() - t0)

    return huey, {"three": three_task, "noop": noop_task}


def _work(huey: Huey, stop: threading.Event | None = None, poll: float = 0.1) -> int:
    """Dequeue and execute until the queue is empty (or, with `stop`, until stopped)."""
    done = 0
    while True:
        task = huey.dequeue()
        if task is None:
            if stop is None:
                return done
            if stop.wait(poll):
                return done
            continue
        huey.execute(task)
        done += 1


def drain(path: str, synchronous: str, n: int) -> dict[str, Any]:
    huey, tasks = _make(path, synchronous)
    for i in range(n):
        tasks["three"](i)
    start = time.perf_counter()
    done = _work(huey)
    elapsed = time.perf_counter() - start
    assert done == n, done
    return {"runs_s": n / elapsed}


def end_to_end(path: str, synchronous: str, n: int) -> dict[str, Any]:
    huey, tasks = _make(path, synchronous)
    start = time.perf_counter()
    for i in range(n):
        tasks["three"](i)
    done = _work(huey)
    elapsed = time.perf_counter() - start
    assert done == n, done
    return {"runs_s": n / elapsed}


def concurrent(path: str, synchronous: str, n: int, slots: int) -> dict[str, Any]:
    huey, tasks = _make(path, synchronous)
    for i in range(n):
        tasks["three"](i)
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(_work(huey))) for _ in range(slots)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert sum(counts) == n, counts
    return {"runs_s": n / elapsed}


def drain_child(path: str, synchronous: str) -> None:
    huey, _ = _make(path, synchronous)
    ready_and_wait_for_go()
    emit({"done": _work(huey)})


def processes(path: str, synchronous: str, n: int, procs: int) -> dict[str, Any]:
    _, tasks = _make(path, synchronous)
    for i in range(n):
        tasks["three"](i)
    children = [
        spawn("sys_huey", "drain_child", path=path, synchronous=synchronous) for _ in range(procs)
    ]
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
    return {"runs_s": n / elapsed}


def enqueue_child(path: str, synchronous: str, n: int, low: float, high: float) -> None:
    _, tasks = _make(path, synchronous)
    ready_and_wait_for_go()
    for gap in random_gaps(n, low, high):
        time.sleep(gap)
        tasks["noop"](time.monotonic())
    emit({"enqueued": n})


def latency(
    path: str, synchronous: str, n: int, low: float, high: float, xproc: bool, poll: float
) -> dict[str, Any]:
    """Enqueue (here or in another process) to the task body, one polling worker thread."""
    huey, tasks = _make(path, synchronous)
    stop = threading.Event()
    worker = threading.Thread(target=_work, args=(huey, stop, poll))
    worker.start()
    time.sleep(0.2)
    if xproc:
        child = spawn(
            "sys_huey",
            "enqueue_child",
            path=path,
            synchronous=synchronous,
            n=n,
            low=low,
            high=high,
        )
        wait_line(child, "ready")
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        last_json(child)
    else:
        for gap in random_gaps(n, low, high):
            time.sleep(gap)
            tasks["noop"](time.monotonic())
    deadline = time.monotonic() + 60
    while len(_latencies) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join()
    return {k: v * 1000 if k != "n" else v for k, v in percentiles(_latencies).items()}


def enqueue(path: str, synchronous: str, n: int) -> dict[str, Any]:
    _, tasks = _make(path, synchronous)
    start = time.perf_counter()
    for i in range(n):
        tasks["three"](i)
    return {"trigger_s": n / (time.perf_counter() - start)}


def settings(path: str, synchronous: str) -> dict[str, Any]:
    huey, _ = _make(path, synchronous)
    conn = huey.storage.conn
    mode = conn.execute("pragma journal_mode").fetchone()[0]
    sync = conn.execute("pragma synchronous").fetchone()[0]
    return {"journal_mode": mode, "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL"}[sync]}
