"""Worker processes on libSQL: SIGKILLed mid-step and resumed, or draining runs side by side.

Each transport of the adapter: WebSocket through libsql-client, Hrana 3 HTTP through
`libsql` and HTTP API v1 batches through libsql-client (against the Hrana test server),
local files through both drivers, and `LIBSQL_TEST_URL` when set. Worker processes are
`tests/libsql_server/worker.py`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from _libsql_helpers import CASES, case_url
from conftest import wait_until

from durably import Durably, create_durably, define_job
from durably_dialects.libsql import LibsqlDialect

WORKER = Path(__file__).resolve().parents[1] / "libsql_server" / "worker.py"
STEPS = 5
STALE = 1.5


pytestmark = pytest.mark.crash


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def libsql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A libSQL URL of each transport: a fresh file, a fresh test server, or LIBSQL_TEST_URL."""
    with case_url(*request.param, tmp_path) as url:
        yield url


def _markers(path: Path) -> list[tuple[str, str, str, int]]:
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(kind, run_id, step, int(pid)) for kind, run_id, step, pid in lines]


def _spawn(url: str, job: str, run_id: str, markers: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, job, run_id, str(markers), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _unused(*args: object) -> None:
    raise AssertionError("the test process never executes a step")


def test_a_sigkilled_worker_is_resumed_after_stale_threshold_without_rerunning_steps(
    libsql_url: str, tmp_path: Path
) -> None:
    job = f"kill_{uuid.uuid4().hex[:10]}"
    app: Durably = create_durably(libsql_url)
    killed: subprocess.Popen[str] | None = None
    try:
        app.migrate()
        handle = app.register({job: define_job(name=job, run=_unused)})[job]
        run = handle.trigger({"steps": STEPS})
        markers_a, markers_b = tmp_path / "a.markers", tmp_path / "b.markers"

        killed = _spawn(libsql_url, job, run.id, markers_a, "--block", "step-3")
        wait_until(
            lambda: ("start", run.id, "step-3", killed.pid) in _markers(markers_a), timeout=60
        )
        # what the killed worker persisted before it died: two completed steps
        assert [(s.name, s.status) for s in app.get_steps(run.id)] == [
            ("step-1", "completed"),
            ("step-2", "completed"),
        ]
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        still = app.get_run(run.id)
        assert still is not None and still.status == "running"

        resumer = _spawn(libsql_url, job, run.id, markers_b, "--stale", str(STALE))
        _, err = resumer.communicate(timeout=180)
        assert resumer.returncode == 0, err

        final = app.get_run(run.id)
        assert final is not None and final.status == "completed", err
        assert final.output == {"sum": sum(10 * i for i in range(1, STEPS + 1)), "pid": resumer.pid}
        names = [f"step-{i}" for i in range(1, STEPS + 1)]
        assert [(s.name, s.status) for s in app.get_steps(run.id)] == [
            (n, "completed") for n in names
        ]
        a, b = _markers(markers_a), _markers(markers_b)
        done_by = {step: pid for kind, _, step, pid in a + b if kind == "done"}
        assert done_by == {
            "step-1": killed.pid,
            "step-2": killed.pid,
            "step-3": resumer.pid,
            "step-4": resumer.pid,
            "step-5": resumer.pid,
        }
        # the resumer replayed step-1 and step-2 from the database: their bodies did not
        # run again and it emitted no step:complete for them
        assert Counter(step for kind, _, step, _ in b if kind == "start") == Counter(names[2:])
        assert {step for kind, _, step, _ in b if kind == "event:step:complete"} == set(names[2:])
        # one claim by the killed worker, one by the resumer after stale recovery
        dialect = app.dialect
        assert isinstance(dialect, LibsqlDialect)
        with dialect.read() as conn:
            row = conn.execute(
                "SELECT lease_generation FROM durably_runs WHERE id = ?", (run.id,)
            ).fetchone()
        assert row == (2,)
    finally:
        if killed is not None and killed.poll() is None:
            killed.kill()
            killed.wait(timeout=30)
        if killed is not None:
            killed.communicate()
        app.close()


def test_two_worker_processes_drain_the_runs_running_each_step_exactly_once(
    libsql_url: str, tmp_path: Path
) -> None:
    job = f"drain_{uuid.uuid4().hex[:10]}"
    with create_durably(libsql_url) as app:
        app.migrate()
        handle = app.register({job: define_job(name=job, run=_unused)})[job]
        runs = handle.batch_trigger([{"steps": 3} for _ in range(12)])
        markers = [tmp_path / f"{label}.markers" for label in ("a", "b")]
        workers = [
            _spawn(libsql_url, job, "all", mine, "--peer", str(peer))
            for mine, peer in zip(markers, reversed(markers), strict=True)
        ]
        for worker in workers:
            _, err = worker.communicate(timeout=180)
            assert worker.returncode == 0, err

        final = [app.get_run(run.id) for run in runs]
        assert [r.status if r else None for r in final] == ["completed"] * len(runs)
        lines = [line for m in markers for line in _markers(m)]
        expected = Counter((run.id, f"step-{i}") for run in runs for i in (1, 2, 3))
        # claims are atomic on every transport: no step body ran twice, none was skipped
        assert Counter((r, s) for kind, r, s, _ in lines if kind == "start") == expected
        assert Counter((r, s) for kind, r, s, _ in lines if kind == "done") == expected
        # each waited in its first step for the other to start one: both held a run at once
        assert {pid for _, _, _, pid in lines} == {w.pid for w in workers}
