"""Small helpers shared by the public-API tests (not collected: no `test_` prefix)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from typing import Any

from conftest import wait_until

from durably import Durably

__all__ = [
    "Gate",
    "Recorder",
    "SimulatedCrash",
    "count_rows",
    "in_background",
    "sqlite_path",
    "wait_for_status",
    "wait_until",
]


class SimulatedCrash(BaseException):
    """Raised inside a job to interrupt it like a crash: the run is released, not failed."""


class Recorder:
    """Collects the events of one type (or "*") in delivery order, thread-safely."""

    def __init__(self, durably: Durably, event_type: str = "*") -> None:
        self._lock = threading.Lock()
        self._events: list[Any] = []
        self.unsubscribe = durably.on(event_type, self._on)

    def _on(self, event: Any) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Any]:
        with self._lock:
            return list(self._events)

    def of(self, event_type: str | None = None, run_id: str | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if (event_type is None or e.type == event_type)
            and (run_id is None or getattr(e, "run_id", None) == run_id)
        ]

    def types(self, run_id: str | None = None) -> list[str]:
        return [e.type for e in self.of(None, run_id)]


class Gate:
    """Lets a job signal that it reached a point and wait there until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def pass_through(self, timeout: float = 20.0) -> None:
        self.entered.set()
        if not self.opened.wait(timeout):
            raise AssertionError("the test never opened the gate")

    def wait_entered(self, timeout: float = 20.0) -> None:
        if not self.entered.wait(timeout):
            raise AssertionError("the job never reached the gate")

    def open(self) -> None:
        self.opened.set()


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `fn` in a daemon thread; the dict gets `result` or `error` when it ends."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_status(durably: Durably, run_id: str, *statuses: str, timeout: float = 20.0) -> Any:
    """Wait until the run has one of `statuses`; returns the run."""

    def check() -> Any:
        run = durably.get_run(run_id)
        return run if run is not None and run.status in statuses else None

    return wait_until(check, timeout)


def sqlite_path(db_url: str) -> str:
    return db_url[len("sqlite:///") :]


def count_rows(db_url: str, table: str) -> int:
    """Count rows with a separate stdlib connection (what is really in the file)."""
    with closing(sqlite3.connect(sqlite_path(db_url))) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
