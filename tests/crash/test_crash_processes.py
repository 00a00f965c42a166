"""Crash tests with real worker processes on one SQLite file.

Workers are `python tests/crash/worker_app.py` processes killed with SIGKILL, frozen with
SIGSTOP or interrupted with SIGINT; what each step body did is read back from the
per-process marker files that `worker_app` appends to, and what the database holds is
read through a Durably instance in the test process (which never executes runs) and
raw sqlite3 queries.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from durably import BatchItem, Durably

pytestmark = pytest.mark.crash

WORKER_SCRIPT = Path(__file__).with_name("worker_app.py")
LIMIT = 45.0


def _load_worker_app() -> Any:
    spec = importlib.util.spec_from_file_location("durably_crash_worker_app", WORKER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker_app = _load_worker_app()


@dataclass(frozen=True)
class Marker:
    kind: str
    run_id: str
    step: str
    pid: int
    at: float
    key: str
    label: str


class Cluster:
    """The worker processes of one test, their marker files and logs; all killed at teardown."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.dir = tmp_path
        self.db_url = db_url
        self.db_path = db_url[len("sqlite:///") :]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    def spawn(self, label: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{label}.out", "wb")  # noqa: SIM115 - closed at teardown
        self._logs.append(log)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-u",
                str(WORKER_SCRIPT),
                "--db",
                self.db_url,
                "--markers",
                str(self.dir / f"{label}.markers"),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        self.procs[label] = proc
        return proc

    def markers(self, label: str | None = None) -> list[Marker]:
        found: list[Marker] = []
        for path in sorted(self.dir.glob("*.markers")):
            if label is not None and path.stem != label:
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) != 6:
                    continue  # a line still being written
                kind, run_id, step, pid, at, key = parts
                found.append(Marker(kind, run_id, step, int(pid), float(at), key, path.stem))
        return found

    def has(self, kind: str, step: str = "-", label: str | None = None) -> bool:
        return any(m.kind == kind and m.step == step for m in self.markers(label))

    def report(self) -> str:
        parts = []
        for label, proc in self.procs.items():
            out = (self.dir / f"{label}.out").read_text(encoding="utf-8", errors="replace")
            marks = self.dir / f"{label}.markers"
            tail = marks.read_text(encoding="utf-8")[-2000:] if marks.exists() else ""
            parts.append(
                f"--- {label} pid={proc.pid} rc={proc.poll()}\n{out[-3000:]}\n"
                f"--- {label} markers (tail)\n{tail}"
            )
        return "\n".join(parts)

    def wait_until(self, predicate: Callable[[], Any], what: str, timeout: float = LIMIT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}\n{self.report()}")
            time.sleep(0.02)

    def wait_exit(self, label: str, timeout: float = LIMIT) -> int:
        proc = self.procs[label]
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{label} did not exit within {timeout} s\n{self.report()}"
            ) from None

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def write_lock_free(self) -> bool:
        """True if no process holds SQLite's write lock right now."""
        conn = sqlite3.connect(self.db_path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()

    def freeze(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGSTOP `proc` at a moment it holds no write lock (its heartbeat may be writing).

        A process frozen inside a write transaction would block every other process.
        """
        for _ in range(50):
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.05)
            if self.write_lock_free():
                return
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        raise AssertionError(f"could not freeze pid {proc.pid} outside a write transaction")

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
        for log in self._logs:
            log.close()


@pytest.fixture
def cluster(tmp_path: Path, db_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, db_url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def app(make_durably: Callable[..., Durably]) -> Durably:
    """A migrated Durably in the test process with the `steps` job registered (no worker)."""
    d = make_durably()
    d.register({"steps": worker_app.steps_job})
    return d


def _starts_and_dones(markers: list[Marker], run_id: str) -> tuple[Counter[str], Counter[str]]:
    starts = Counter(m.step for m in markers if m.kind == "start" and m.run_id == run_id)
    dones = Counter(m.step for m in markers if m.kind == "done" and m.run_id == run_id)
    return starts, dones


def _generation(cluster: Cluster, run_id: str) -> int:
    return int(cluster.sql("SELECT lease_generation FROM durably_runs WHERE id = ?", run_id)[0][0])


def _step_rows(cluster: Cluster, run_id: str) -> list[tuple[str, str, str]]:
    return [
        (name, status, output)
        for name, status, output in cluster.sql(
            "SELECT name, status, output FROM durably_steps WHERE run_id = ? ORDER BY name",
            run_id,
        )
    ]


STEP_NAMES = [f"step-{i}" for i in range(1, 6)]
FULL_OUTPUT_SUM = sum(i * 10 for i in range(1, 6))


def test_sigkilled_worker_run_resumes_elsewhere_without_rerunning_completed_steps(
    cluster: Cluster, app: Durably
) -> None:
    run = app.jobs.steps.trigger({"steps": 5})
    killed = cluster.spawn("a", "--mode", "start", "--block", "step-3", "--fsync")
    cluster.wait_until(lambda: cluster.has("start", "step-3", "a"), "a starts step-3")
    assert cluster.has("done", "step-2", "a")

    killed.send_signal(signal.SIGKILL)
    cluster.wait_exit("a")
    assert app.get_run(run.id).status == "running"  # type: ignore[union-attr]

    resumer = cluster.spawn("b", "--mode", "loop", "--fsync", "--stale", "1.5")
    assert cluster.wait_exit("b") == 0, cluster.report()

    final = app.get_run(run.id)
    assert final is not None and final.status == "completed", cluster.report()
    assert final.output == {"sum": FULL_OUTPUT_SUM, "pid": resumer.pid}
    starts, dones = _starts_and_dones(cluster.markers(), run.id)
    assert dones == Counter(STEP_NAMES), cluster.report()
    assert starts == Counter({**Counter(STEP_NAMES), "step-3": 2}), cluster.report()
    by_pid = {m.step: m.pid for m in cluster.markers() if m.kind == "done"}
    assert by_pid == {
        "step-1": killed.pid,
        "step-2": killed.pid,
        "step-3": resumer.pid,
        "step-4": resumer.pid,
        "step-5": resumer.pid,
    }
    rows = _step_rows(cluster, run.id)
    assert [(name, status) for name, status, _ in rows] == [(n, "completed") for n in STEP_NAMES]
    assert _generation(cluster, run.id) == 2
    # the replayed steps were not re-emitted by the resumer
    assert not any(
        m.kind == "event:step:complete" and m.step in ("step-1", "step-2")
        for m in cluster.markers("b")
    )


def test_sigstopped_worker_is_fenced_after_another_worker_reclaims_its_run(
    cluster: Cluster, app: Durably
) -> None:
    release = cluster.dir / "release-a"
    run = app.jobs.steps.trigger({"steps": 5})
    frozen = cluster.spawn(
        "a", "--mode", "one", "--block", "step-3", "--release-file", str(release)
    )
    cluster.wait_until(lambda: cluster.has("start", "step-3", "a"), "a starts step-3")
    generation_a = _generation(cluster, run.id)
    assert generation_a == 1

    cluster.freeze(frozen)

    try:
        reclaimer = cluster.spawn("b", "--mode", "loop", "--stale", "1.5")
        assert cluster.wait_exit("b") == 0, cluster.report()
        after_b = app.get_run(run.id)
        assert after_b is not None and after_b.status == "completed", cluster.report()
        assert after_b.output == {"sum": FULL_OUTPUT_SUM, "pid": reclaimer.pid}
        rows_after_b = _step_rows(cluster, run.id)
        run_row_after_b = cluster.sql("SELECT * FROM durably_runs WHERE id = ?", run.id)
    finally:
        release.touch()
        frozen.send_signal(signal.SIGCONT)

    # A's step body finishes, its write is fenced, and process_one returns
    assert cluster.wait_exit("a") == 0, cluster.report()
    assert cluster.has("done", "step-3", "a")
    assert cluster.has("process_one-returned-True", label="a"), cluster.report()

    assert cluster.sql("SELECT * FROM durably_runs WHERE id = ?", run.id) == run_row_after_b
    rows = _step_rows(cluster, run.id)
    assert rows == rows_after_b
    assert [(name, status) for name, status, _ in rows] == [(n, "completed") for n in STEP_NAMES]
    step3_output = next(output for name, _, output in rows if name == "step-3")
    assert f'"pid":{reclaimer.pid}' in step3_output
    assert _generation(cluster, run.id) > generation_a
    a_events = [m.kind for m in cluster.markers("a") if m.kind.startswith("event:")]
    assert "event:run:complete" not in a_events
    assert "event:run:fail" not in a_events
    assert not any(
        m.kind == "event:step:complete" and m.step == "step-3" for m in cluster.markers("a")
    )
    final = app.get_run(run.id)
    assert final is not None and final.status == "completed"
    assert final.output == {"sum": FULL_OUTPUT_SUM, "pid": reclaimer.pid}


def test_four_processes_drain_hundreds_of_runs_each_step_exactly_once(
    cluster: Cluster, app: Durably
) -> None:
    n_runs = 320
    runs = app.jobs.steps.batch_trigger([{"steps": 3} for _ in range(n_runs)])
    run_ids = {r.id for r in runs}
    go = cluster.dir / "go"
    common = ("--go-file", str(go), "--stale", "20", "--heartbeat", "0.5")
    cluster.spawn("w1", "--mode", "start", "--max-concurrent", "2", *common)
    cluster.spawn("w2", "--mode", "start", "--max-concurrent", "1", *common)
    cluster.spawn("w3", "--mode", "loop", *common)
    cluster.spawn("w4", "--mode", "loop", *common)
    cluster.wait_until(
        lambda: sum(m.kind == "ready" for m in cluster.markers()) == 4, "all workers ready"
    )
    go.touch()
    for label in ("w1", "w2", "w3", "w4"):
        assert cluster.wait_exit(label, timeout=60) == 0, cluster.report()

    statuses = Counter(status for (status,) in cluster.sql("SELECT status FROM durably_runs"))
    assert statuses == Counter({"completed": n_runs}), statuses
    markers = cluster.markers()
    assert not [m for m in markers if m.kind in ("event:run:fail", "event:worker:error")]

    starts = Counter((m.run_id, m.step) for m in markers if m.kind == "start")
    dones = Counter((m.run_id, m.step) for m in markers if m.kind == "done")
    expected = Counter({(rid, f"step-{i}"): 1 for rid in run_ids for i in (1, 2, 3)})
    assert starts == expected
    assert dones == expected

    run_starts = Counter(m.run_id for m in markers if m.kind == "event:run:start")
    assert run_starts == Counter({rid: 1 for rid in run_ids})
    pids_of_run: dict[str, set[int]] = defaultdict(set)
    for m in markers:
        if m.run_id in run_ids:
            pids_of_run[m.run_id].add(m.pid)
    assert all(len(pids) == 1 for pids in pids_of_run.values())

    generations = Counter(g for (g,) in cluster.sql("SELECT lease_generation FROM durably_runs"))
    assert generations == Counter({1: n_runs}), "a run was claimed more than once"
    step_rows = cluster.sql("SELECT run_id, name, COUNT(*) FROM durably_steps GROUP BY 1, 2")
    assert len(step_rows) == 3 * n_runs
    assert {count for _, _, count in step_rows} == {1}

    runs_per_pid = Counter(m.pid for m in markers if m.kind == "event:run:start")
    assert len(runs_per_pid) > 1, f"one process did all the work: {runs_per_pid}"


def test_sigint_during_process_one_releases_the_run_to_pending(
    cluster: Cluster, app: Durably
) -> None:
    run = app.jobs.steps.trigger({"steps": 5})
    interrupted = cluster.spawn("a", "--mode", "one", "--block", "step-3")
    cluster.wait_until(lambda: cluster.has("start", "step-3", "a"), "a starts step-3")
    interrupted.send_signal(signal.SIGINT)
    assert cluster.wait_exit("a") == worker_app.EXIT_INTERRUPTED, cluster.report()
    assert cluster.has("interrupted", label="a")

    released = app.get_run(run.id)
    assert released is not None
    assert released.status == "pending", cluster.report()
    assert released.error is None
    steps = app.get_steps(run.id)
    assert [(s.name, s.status) for s in steps] == [("step-1", "completed"), ("step-2", "completed")]
    assert not any(m.kind == "event:run:fail" for m in cluster.markers("a"))

    # no stale wait: a released run is claimable at once (a long stale threshold proves it)
    resumer = cluster.spawn("b", "--mode", "loop", "--stale", "60", "--heartbeat", "0.5")
    assert cluster.wait_exit("b") == 0, cluster.report()
    final = app.get_run(run.id)
    assert final is not None and final.status == "completed", cluster.report()
    assert final.output == {"sum": FULL_OUTPUT_SUM, "pid": resumer.pid}
    starts, dones = _starts_and_dones(cluster.markers(), run.id)
    assert dones == Counter(STEP_NAMES)
    assert starts == Counter({**Counter(STEP_NAMES), "step-3": 2})
    assert not any(
        m.kind == "done" and m.step in ("step-1", "step-2") for m in cluster.markers("b")
    )


def test_sigint_in_trigger_and_wait_then_stop_with_timeout_releases_at_next_step_boundary(
    cluster: Cluster, app: Durably
) -> None:
    demo = cluster.spawn("demo", "--mode", "demo", "--steps", "5", "--block", "step-3")
    cluster.wait_until(lambda: cluster.has("start", "step-3", "demo"), "demo starts step-3")
    demo.send_signal(signal.SIGINT)
    assert cluster.wait_exit("demo") == worker_app.EXIT_INTERRUPTED, cluster.report()
    assert cluster.has("stopped", label="demo"), cluster.report()

    (run,) = app.get_runs()
    assert run.status == "pending", cluster.report()
    # the step in flight finished and was kept; the next one never started
    assert [(s.name, s.status) for s in app.get_steps(run.id)] == [
        ("step-1", "completed"),
        ("step-2", "completed"),
        ("step-3", "completed"),
    ]
    assert not cluster.has("start", "step-4", "demo")

    resumer = cluster.spawn("b", "--mode", "loop", "--stale", "60", "--heartbeat", "0.5")
    assert cluster.wait_exit("b") == 0, cluster.report()
    final = app.get_run(run.id)
    assert final is not None and final.status == "completed", cluster.report()
    assert final.output == {"sum": FULL_OUTPUT_SUM, "pid": resumer.pid}
    starts, dones = _starts_and_dones(cluster.markers(), run.id)
    assert starts == Counter(STEP_NAMES)
    assert dones == Counter(STEP_NAMES)


def test_concurrency_key_is_held_by_one_run_at_a_time_across_processes(
    cluster: Cluster, app: Durably
) -> None:
    keys = ["k0", "k1", "k2"]
    items = [worker_app.StepsInput(steps=2, key=keys[i % 3], sleep=0.02) for i in range(30)]
    runs = app.jobs.steps.batch_trigger(
        [BatchItem(item, concurrency_key=item.key) for item in items]
    )
    go = cluster.dir / "go"
    for label in ("w1", "w2", "w3"):
        mode = "start" if label == "w1" else "loop"
        cluster.spawn(
            label,
            "--mode",
            mode,
            "--max-concurrent",
            "2",
            "--go-file",
            str(go),
            "--stale",
            "20",
            "--heartbeat",
            "0.5",
        )
    cluster.wait_until(
        lambda: sum(m.kind == "ready" for m in cluster.markers()) == 3, "all workers ready"
    )
    go.touch()
    for label in ("w1", "w2", "w3"):
        assert cluster.wait_exit(label) == 0, cluster.report()

    assert all(app.get_run(r.id).status == "completed" for r in runs)  # type: ignore[union-attr]
    markers = cluster.markers()
    spans: dict[str, list[float]] = {}
    for m in markers:
        if m.kind in ("start", "done"):
            span = spans.setdefault(m.run_id, [m.at, m.at])
            span[0], span[1] = min(span[0], m.at), max(span[1], m.at)
    order = [r.id for r in runs]
    for key in keys:
        ids = [r.id for r in runs if r.concurrency_key == key]
        by_start = sorted(ids, key=lambda rid: spans[rid][0])
        for earlier, later in itertools.pairwise(by_start):
            assert spans[earlier][1] <= spans[later][0], (
                f"runs {earlier} and {later} with key {key} overlapped: "
                f"{spans[earlier]} / {spans[later]}"
            )
        # the others stay pending, in order
        assert by_start == sorted(ids, key=order.index)


def test_long_step_of_a_live_worker_is_not_reclaimed_by_another_process(
    cluster: Cluster, app: Durably
) -> None:
    stale = 1.5
    release = cluster.dir / "release-a"
    run = app.jobs.steps.trigger({"steps": 5})
    owner = cluster.spawn("a", "--mode", "one", "--block", "step-3", "--release-file", str(release))
    cluster.wait_until(lambda: cluster.has("start", "step-3", "a"), "a starts step-3")
    cluster.spawn("b", "--mode", "loop", "--stale", str(stale))
    cluster.wait_until(lambda: cluster.has("ready", label="b"), "b ready")

    def started_at() -> datetime:
        started = app.get_run(run.id).started_at  # type: ignore[union-attr]
        assert started is not None
        return started

    # the step has now lasted three stale thresholds, measured on the database's clock
    cluster.wait_until(
        lambda: (
            app.get_run(run.id).updated_at  # type: ignore[union-attr]
            > started_at() + timedelta(seconds=3 * stale)
        ),
        "the run's heartbeat advances past three stale thresholds",
    )
    assert app.get_run(run.id).status == "running"  # type: ignore[union-attr]
    assert _generation(cluster, run.id) == 1
    assert not [m for m in cluster.markers("b") if m.kind == "start"]

    release.touch()
    assert cluster.wait_exit("a") == 0, cluster.report()
    assert cluster.wait_exit("b") == 0, cluster.report()
    final = app.get_run(run.id)
    assert final is not None and final.status == "completed"
    assert final.output == {"sum": FULL_OUTPUT_SUM, "pid": owner.pid}
    starts, dones = _starts_and_dones(cluster.markers(), run.id)
    assert starts == Counter(STEP_NAMES)
    assert dones == Counter(STEP_NAMES)


def test_sigstopped_worker_resumed_while_another_holds_the_run_cannot_write(
    cluster: Cluster, app: Durably
) -> None:
    """The old owner wakes up while the new owner is mid-run: only the generation fences it."""
    release_a = cluster.dir / "release-a"
    release_b = cluster.dir / "release-b"
    run = app.jobs.steps.trigger({"steps": 5})
    frozen = cluster.spawn(
        "a", "--mode", "one", "--block", "step-3", "--release-file", str(release_a)
    )
    cluster.wait_until(lambda: cluster.has("start", "step-3", "a"), "a starts step-3")
    cluster.freeze(frozen)
    try:
        reclaimer = cluster.spawn(
            "b",
            "--mode",
            "loop",
            "--stale",
            "1.5",
            "--block",
            "step-4",
            "--release-file",
            str(release_b),
        )
        cluster.wait_until(lambda: cluster.has("start", "step-4", "b"), "b starts step-4")
    finally:
        release_a.touch()
        frozen.send_signal(signal.SIGCONT)

    assert cluster.wait_exit("a") == 0, cluster.report()
    assert cluster.has("done", "step-3", "a")
    running = app.get_run(run.id)
    assert running is not None and running.status == "running"
    assert running.current_step_index == 3
    rows = _step_rows(cluster, run.id)
    assert [name for name, _, _ in rows] == ["step-1", "step-2", "step-3"]
    assert f'"pid":{reclaimer.pid}' in rows[2][2]
    assert not cluster.has("start", "step-4", "a")
    assert not any(
        m.kind == "event:step:complete" and m.step not in ("step-1", "step-2")
        for m in cluster.markers("a")
    )

    release_b.touch()
    assert cluster.wait_exit("b") == 0, cluster.report()
    final = app.get_run(run.id)
    assert final is not None and final.status == "completed", cluster.report()
    assert final.output == {"sum": FULL_OUTPUT_SUM, "pid": reclaimer.pid}
    rows = _step_rows(cluster, run.id)
    assert [(name, status) for name, status, _ in rows] == [(n, "completed") for n in STEP_NAMES]
    assert _generation(cluster, run.id) == 2
