"""Regression tests of the promise with real worker processes, SIGSTOP/SIGCONT and SIGKILL.

The promise: a step whose result was committed never runs again, and at most one worker
executes a run at any moment. A worker frozen with SIGSTOP longer than the stale
threshold loses its run to another worker; when it thaws it is a zombie, and nothing it
does may reach the run any more: it must not start another step body, and its logs must
not be stored. Workers are `tests/crash/promise_worker.py` processes; what each step body
did is read from their marker files, what the database holds through a Durably instance
of the test process (which never executes runs) and SQLAlchemy.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from durably import Durably

pytestmark = [pytest.mark.crash, pytest.mark.backends("sqlite", "postgres", "mysql", "libsql")]

WORKER = Path(__file__).with_name("promise_worker.py")
LIMIT = 45.0
STALE = 1.0
# how long a thawed zombie is given to show the bug while the database refuses its writes
ZOMBIE_CHANCE = 3.0


def _load_worker() -> Any:
    spec = importlib.util.spec_from_file_location("durably_promise_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


promise_worker = _load_worker()


@dataclass(frozen=True)
class Marker:
    kind: str
    run_id: str
    step: str
    pid: int
    at: float
    label: str


class Workers:
    """The worker processes of one test and their marker files; all killed at teardown."""

    def __init__(self, tmp_path: Path, backend: str, url: str) -> None:
        self.dir = tmp_path
        self.backend = backend
        self.url = url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._outs: list[Any] = []
        # a libSQL file is a SQLite file: the test inspects and locks it with the stdlib driver
        self.sql_url = "sqlite:///" + url.split(":", 1)[1] if backend == "libsql" else url
        self.file_based = backend in ("sqlite", "libsql")
        self.engine = sa.create_engine(self.sql_url, isolation_level="AUTOCOMMIT")

    def spawn(self, label: str, *args: str) -> subprocess.Popen[bytes]:
        out = open(self.dir / f"{label}.out", "wb")  # noqa: SIM115 - closed at teardown
        self._outs.append(out)
        markers = str(self.dir / f"{label}.markers")
        proc = subprocess.Popen(
            [sys.executable, "-u", str(WORKER), "--db", self.url, "--markers", markers, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        self.procs[label] = proc
        return proc

    def markers(self, label: str | None = None) -> list[Marker]:
        found = []
        for path in sorted(self.dir.glob("*.markers")):
            if label is None or path.stem == label:
                for line in path.read_text(encoding="utf-8").splitlines():
                    parts = line.split()
                    if len(parts) == 5:  # else a line still being written
                        kind, run_id, step, pid, at = parts
                        found.append(Marker(kind, run_id, step, int(pid), float(at), path.stem))
        return found

    def has(self, kind: str, step: str = "-", label: str | None = None) -> bool:
        return any(m.kind == kind and m.step == step for m in self.markers(label))

    def report(self) -> str:
        parts = []
        for label, proc in self.procs.items():
            out = (self.dir / f"{label}.out").read_text(encoding="utf-8", errors="replace")
            marks = self.dir / f"{label}.markers"
            tail = marks.read_text(encoding="utf-8")[-2000:] if marks.exists() else ""
            parts.append(f"--- {label} pid={proc.pid} rc={proc.poll()}\n{out[-3000:]}\n{tail}")
        return "\n".join(parts)

    def wait_until(self, predicate: Callable[[], Any], what: str, timeout: float = LIMIT) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}\n{self.report()}")
            time.sleep(0.02)
        return value

    def wait_exit(self, label: str) -> int:
        try:
            return self.procs[label].wait(LIMIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{label} did not exit\n{self.report()}") from None

    def _in_transaction(self) -> bool:
        """Whether another connection is inside a transaction (a frozen one would block all)."""
        if self.file_based:
            probe = sa.create_engine(
                self.sql_url, connect_args={"timeout": 0}, isolation_level="AUTOCOMMIT"
            )
            try:
                with probe.connect() as conn:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    conn.exec_driver_sql("ROLLBACK")
                return False
            except sa.exc.OperationalError:
                return True
            finally:
                probe.dispose()
        if self.backend == "postgres":
            query = (
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                " AND state <> 'idle'"
            )
        else:
            query = (
                "SELECT COUNT(*) FROM information_schema.innodb_trx t"
                " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
                " WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()"
            )
        with self.engine.connect() as conn:
            return bool(conn.exec_driver_sql(query).scalar())

    def freeze(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGSTOP `proc` at a moment it holds no transaction open."""
        for _ in range(50):
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.05)
            if not self._in_transaction():
                return
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        raise AssertionError(f"could not freeze pid {proc.pid} outside a transaction")

    @contextmanager
    def writes_to_runs_blocked(self) -> Iterator[None]:
        """Hold a lock that makes every write to durably_runs wait (reads go on).

        A thawed zombie's heartbeat then cannot learn that its lease is gone: only a
        worker that checks its lease before starting a step body can avoid the bug, and
        today's worker shows it every time instead of when its heartbeat loses a race.
        """
        with self.engine.connect() as conn:
            if self.file_based:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield
                finally:
                    conn.exec_driver_sql("ROLLBACK")
            elif self.backend == "postgres":
                conn.exec_driver_sql("BEGIN")
                conn.exec_driver_sql("LOCK TABLE durably_runs IN EXCLUSIVE MODE")
                try:
                    yield
                finally:
                    conn.exec_driver_sql("ROLLBACK")
            else:
                conn.exec_driver_sql("LOCK TABLES durably_runs READ")
                try:
                    yield
                finally:
                    conn.exec_driver_sql("UNLOCK TABLES")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for out in self._outs:
            out.close()
        self.engine.dispose()


@pytest.fixture
def workers(tmp_path: Path, backend: str, backend_url: str) -> Iterator[Workers]:
    w = Workers(tmp_path, backend, backend_url)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def app(make_durably: Callable[..., Durably]) -> Durably:
    """A Durably in the test process with the `steps` job registered (it executes nothing)."""
    d = make_durably()
    d.register({"steps": promise_worker.steps_job})
    return d


def _starts(markers: list[Marker], run_id: str) -> list[str]:
    return [m.step for m in markers if m.kind == "start" and m.run_id == run_id]


def _completed(app: Durably, run_id: str) -> bool:
    run = app.get_run(run_id)
    return run is not None and run.status == "completed"


def test_thawed_worker_does_not_start_a_step_of_a_run_taken_over(
    workers: Workers, app: Durably
) -> None:
    """A is frozen between steps 1 and 2, B takes the run over and commits steps 2-4;
    thawed, A must not run step 2's body, whose result B already committed."""
    release = workers.dir / "release-a"
    run = app.jobs.steps.trigger({"steps": 4})
    a = workers.spawn(
        "a", "--mode", "one", "--gate-before", "step-2", "--release-file", str(release)
    )
    workers.wait_until(lambda: workers.has("gate", "step-2", "a"), "a waits before step-2")
    workers.freeze(a)
    try:
        workers.spawn("b", "--mode", "loop", "--stale", str(STALE))
        assert workers.wait_exit("b") == 0, workers.report()
        assert _completed(app, run.id), workers.report()
        release.touch()
        with workers.writes_to_runs_blocked():
            a.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + ZOMBIE_CHANCE
            while time.monotonic() < deadline and not workers.has("start", "step-2", "a"):
                time.sleep(0.01)
    finally:
        release.touch()
        a.send_signal(signal.SIGCONT)
    assert workers.wait_exit("a") == 0, workers.report()

    assert _starts(workers.markers("a"), run.id) == ["step-1"], workers.report()
    assert _starts(workers.markers("b"), run.id) == ["step-2", "step-3", "step-4"]
    assert _completed(app, run.id)


def test_worker_frozen_after_checking_its_lease_does_not_start_the_step_once_thawed(
    workers: Workers, app: Durably
) -> None:
    """A checked its lease for step 2 and is frozen before the body starts (here: in a
    step:start listener); B takes over and completes the run. Thawed, A is past its local
    deadline: it must check again, and not run step 2's body (the fault campaign found it)."""
    release = workers.dir / "release-a"
    run = app.jobs.steps.trigger({"steps": 3})
    a = workers.spawn(
        "a", "--mode", "one", "--hold-at-start", "step-2", "--release-file", str(release)
    )
    workers.wait_until(lambda: workers.has("holding", "step-2", "a"), "a holds at step-2")
    workers.freeze(a)
    try:
        workers.spawn("b", "--mode", "loop", "--stale", str(STALE))
        assert workers.wait_exit("b") == 0, workers.report()
        assert _completed(app, run.id), workers.report()
    finally:
        release.touch()
        a.send_signal(signal.SIGCONT)
    assert workers.wait_exit("a") == 0, workers.report()

    assert _starts(workers.markers("a"), run.id) == ["step-1"], workers.report()
    assert _starts(workers.markers("b"), run.id) == ["step-2", "step-3"]
    assert _completed(app, run.id)


def test_worker_thawed_inside_the_first_step_of_a_run_taken_over_stores_nothing(
    workers: Workers, app: Durably
) -> None:
    """A is frozen inside step 1 of a brand-new run; B reruns step 1 (never committed) and
    completes the run. Thawed, A's step body ends: A starts no other step, and the log
    line its body writes after the thaw is fenced off like its step result."""
    release = workers.dir / "release-a"
    run = app.jobs.steps.trigger({"steps": 3})
    a = workers.spawn(
        "a", "--mode", "one", "--block", "step-1", "--release-file", str(release),
        "--log-persistence",
    )  # fmt: skip
    workers.wait_until(lambda: workers.has("start", "step-1", "a"), "a starts step-1")
    workers.freeze(a)
    try:
        workers.spawn("b", "--mode", "loop", "--stale", str(STALE), "--log-persistence")
        assert workers.wait_exit("b") == 0, workers.report()
        assert _completed(app, run.id), workers.report()
    finally:
        release.touch()
        a.send_signal(signal.SIGCONT)
    assert workers.wait_exit("a") == 0, workers.report()
    assert workers.has("done", "step-1", "a")

    assert _starts(workers.markers("a"), run.id) == ["step-1"], workers.report()
    assert _starts(workers.markers("b"), run.id) == ["step-1", "step-2", "step-3"]
    step_logs_by_pid = [
        (entry.message, entry.data["pid"])
        for entry in app.get_logs(run.id)
        if entry.message.startswith("end ")
    ]
    b_pid = workers.procs["b"].pid
    assert sorted(step_logs_by_pid) == [
        ("end step-1", b_pid),
        ("end step-2", b_pid),
        ("end step-3", b_pid),
    ], f"a zombie's log was stored (a is pid {a.pid})"
    assert _completed(app, run.id)


def test_log_written_outside_steps_is_stored_once_when_a_killed_run_resumes(
    workers: Workers, app: Durably
) -> None:
    """The job logs `start` before its first step. A is killed in step 2; B resumes the
    run, replaying step 1 and passing the same log call again: the stored logs must not
    say `start` twice."""
    run = app.jobs.steps.trigger({"steps": 3})
    a = workers.spawn("a", "--mode", "one", "--block", "step-2", "--log-persistence")
    workers.wait_until(lambda: workers.has("start", "step-2", "a"), "a starts step-2")
    a.send_signal(signal.SIGKILL)
    workers.wait_exit("a")
    workers.spawn("b", "--mode", "loop", "--stale", str(STALE), "--log-persistence")
    assert workers.wait_exit("b") == 0, workers.report()
    assert _completed(app, run.id), workers.report()

    messages = [entry.message for entry in app.get_logs(run.id)]
    assert messages.count("start") == 1, messages
    assert _starts(workers.markers("b"), run.id) == ["step-2", "step-3"]
