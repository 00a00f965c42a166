"""`durably worker`, `durably serve` and `durably demo` as real processes.

Each test starts `python -m durably.cli ...` in tmp_path with a small app module written
there, drives it through the SQLite file (and HTTP for `serve`), then stops it with a
signal and checks that it exits as documented: 0 after SIGTERM/SIGINT for the
long-running commands, 130 for an interrupted demo.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from conftest import wait_until

from durably import Durably, create_durably

pytestmark = pytest.mark.slow

APP = """
import time
from pathlib import Path

from pydantic import BaseModel
from durably import StepContext, define_job


class CountIn(BaseModel):
    n: int = 3


def _count(step, i):
    def work():
        step.log.info(f"counted {i}", {"i": i})
        return i
    return work


@define_job(name="count", input=CountIn)
def count(step: StepContext, payload: CountIn) -> dict:
    for i in range(payload.n):
        step.run(f"step-{i}", _count(step, i))
        step.progress(i + 1, payload.n)
    return {"total": payload.n}


class SlowIn(BaseModel):
    steps: int = 200
    seconds: float = 0.05


@define_job(name="slow", input=SlowIn)
def slow(step: StepContext, payload: SlowIn) -> int:
    for i in range(payload.steps):
        step.run(f"tick-{i}", lambda: time.sleep(payload.seconds) or i)
    return payload.steps


jobs = {"count": count, "slow": slow}
"""

# short intervals keep the tests fast; the limits of the waits stay generous
FAST = ["--polling-interval", "0.05", "--heartbeat-interval", "0.2", "--stale-threshold", "5"]
START_TIMEOUT = 60.0
EXIT_TIMEOUT = 60.0


class Process:
    """A `durably` subprocess whose stdout and stderr are read line by line in threads."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "durably.cli", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _read(self, stream: IO[str], into: list[str], is_stdout: bool) -> None:
        for line in stream:
            into.append(line)
            if is_stdout:
                self.lines.put(line)

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first stdout line not yet consumed that matches `pattern`."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                try:
                    line = self.lines.get(timeout=0.05)
                except queue.Empty:
                    if self.proc.poll() is not None and self.lines.empty():
                        break
                    continue
                match = re.search(pattern, line)
                if match:
                    return match
        finally:
            timer.cancel()
        raise AssertionError(
            f"no line matching {pattern!r}; exit status {self.proc.poll()}\n{self.output()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = EXIT_TIMEOUT) -> int:
        """Send `sig` and wait for the exit status."""
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        status = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def output(self) -> str:
        return "stdout:\n" + "".join(self.out) + "\nstderr:\n" + "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(APP))
    return tmp_path


@pytest.fixture
def url(app_dir: Path) -> str:
    return f"sqlite:///{app_dir / 'durably.db'}"


@pytest.fixture
def client(url: str, app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Durably]:
    """The test's own instance on the same file: it triggers and reads, it runs nothing."""
    monkeypatch.syspath_prepend(str(app_dir))
    import cliapp

    durably = create_durably(url)
    durably.migrate()
    durably.register(cliapp.jobs)
    yield durably
    durably.close()
    sys.modules.pop("cliapp", None)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def start(processes: list[Process], cwd: Path, *args: str) -> Process:
    process = Process(list(args), cwd)
    processes.append(process)
    return process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def statuses(durably: Durably, ids: list[str]) -> list[str]:
    return [durably.get_run(run_id).status for run_id in ids]  # type: ignore[union-attr]


# -- worker -----------------------------------------------------------------------------


def test_worker_runs_triggered_jobs_and_exits_0_on_sigterm(
    app_dir: Path, url: str, client: Durably, processes: list[Process]
) -> None:
    worker = start(processes, app_dir, "worker", url, "--app", "cliapp:jobs", *FAST)
    worker.wait_for_line(r"^durably worker on .*: jobs count, slow;")
    ids = [client.jobs.count.trigger({"n": n}).id for n in (1, 2, 3)]
    wait_until(lambda: statuses(client, ids) == ["completed"] * 3, timeout=60)

    for n, run_id in zip((1, 2, 3), ids, strict=True):
        run = client.get_run(run_id)
        assert run is not None
        assert run.output == {"total": n}
        assert [s.name for s in client.get_steps(run_id)] == [f"step-{i}" for i in range(n)]
        # `durably worker` persists step.log lines by default
        assert [log.message for log in client.get_logs(run_id)] == [
            f"counted {i}" for i in range(n)
        ]
    worker.wait_for_line(rf"^run {ids[-1]} count: completed in ")

    assert worker.stop(signal.SIGTERM) == 0, worker.output()
    out = "".join(worker.out)
    assert "stopping: waiting up to 30 s for runs in flight" in out
    assert out.rstrip().endswith("stopped")
    assert worker.err == [], worker.output()


def test_worker_on_sigint_with_no_grace_releases_the_run_in_flight_to_pending(
    app_dir: Path, url: str, client: Durably, processes: list[Process]
) -> None:
    worker = start(processes, app_dir, "worker", url, "--app", "cliapp:jobs", "--grace", "0", *FAST)
    worker.wait_for_line(r"^durably worker on ")
    # 2.4 s of steps: the SIGINT lands while the run is surely still in flight
    run_id = client.jobs.slow.trigger({"steps": 60, "seconds": 0.04}).id
    wait_until(lambda: len(client.get_steps(run_id)) >= 2, timeout=60)

    assert worker.stop(signal.SIGINT) == 0, worker.output()
    run = client.get_run(run_id)
    assert run is not None
    assert run.status == "pending"
    done = len(client.get_steps(run_id))
    assert 2 <= done < 60
    assert worker.out[-1] == (
        f"stopped; released 1 run back to pending (another worker resumes it): {run_id}\n"
    )

    # a second worker resumes it from where the first stopped and completes it
    worker = start(processes, app_dir, "worker", url, "--app", "cliapp:jobs", *FAST)
    wait_until(lambda: statuses(client, [run_id]) == ["completed"], timeout=120)
    steps = client.get_steps(run_id)
    assert [s.index for s in steps] == list(range(60))
    assert worker.stop(signal.SIGTERM) == 0, worker.output()


def test_worker_waits_for_the_run_in_flight_within_its_grace(
    app_dir: Path, url: str, client: Durably, processes: list[Process]
) -> None:
    worker = start(processes, app_dir, "worker", url, "--app", "cliapp:jobs", *FAST)
    worker.wait_for_line(r"^durably worker on ")
    run_id = client.jobs.slow.trigger({"steps": 20, "seconds": 0.05}).id
    wait_until(lambda: len(client.get_steps(run_id)) >= 1, timeout=60)

    assert worker.stop(signal.SIGTERM) == 0, worker.output()
    assert statuses(client, [run_id]) == ["completed"]


def test_worker_with_an_unknown_module_exits_1_with_an_error_line(
    app_dir: Path, url: str, processes: list[Process]
) -> None:
    worker = start(processes, app_dir, "worker", url, "--app", "nosuchmodule:jobs")
    assert worker.wait() == 1
    assert "".join(worker.err).startswith("error: cannot import 'nosuchmodule'")


# -- serve ------------------------------------------------------------------------------


def test_serve_answers_the_api_runs_the_worker_and_exits_0_on_sigterm(
    app_dir: Path, url: str, client: Durably, processes: list[Process]
) -> None:
    port = free_port()
    server = start(
        processes,
        app_dir,
        "serve",
        url,
        "--app",
        "cliapp:jobs",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *FAST,
    )
    server.wait_for_line(rf"dashboard and API at http://127\.0\.0\.1:{port}/api/")
    base = f"http://127.0.0.1:{port}"

    def answers() -> Any:
        try:
            return httpx.get(f"{base}/api/runs", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, timeout=START_TIMEOUT, interval=0.05)

    # a run triggered through the database and one through the API both complete
    first = client.jobs.count.trigger({"n": 2}).id
    answer = httpx.post(
        f"{base}/api/trigger", json={"jobName": "count", "input": {"n": 1}}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    second = answer.json()["runId"]
    wait_until(lambda: statuses(client, [first, second]) == ["completed"] * 2, timeout=60)

    with urllib.request.urlopen(f"{base}/api/runs?jobName=count", timeout=10) as response:
        assert response.status == 200
        runs = json.loads(response.read())
    assert [(r["id"], r["status"], r["stepCount"]) for r in runs] == [
        (second, "completed", 1),
        (first, "completed", 2),
    ]
    assert runs[0]["output"] == {"total": 1}

    root = httpx.get(f"{base}/", timeout=10)
    assert root.status_code == 307
    assert root.headers["location"] == "/api/"

    assert server.stop(signal.SIGTERM) == 0, server.output()
    assert "".join(server.out).rstrip().endswith("stopped")


def test_serve_on_a_port_in_use_exits_1(app_dir: Path, url: str, processes: list[Process]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start(
            processes, app_dir, "serve", url, "--app", "cliapp:jobs", "--port", str(port)
        )
        assert server.wait() == 1, server.output()
    assert f"error: could not serve on 127.0.0.1:{port}" in "".join(server.err)


# -- demo -------------------------------------------------------------------------------


def test_demo_interrupted_after_a_step_resumes_and_skips_completed_steps(
    tmp_path: Path, processes: list[Process]
) -> None:
    # steps of 1 s: the Ctrl-C below lands before the last batch even when this test reads
    # the line seconds late on a loaded machine
    first = start(processes, tmp_path, "demo", "--batches", "6", "--step-seconds", "1")
    run_id = first.wait_for_line(r"^starting run (\w+) of 'import-orders': 6 steps").group(1)
    first.wait_for_line(r"^    batch-1: \d+ orders in ")
    assert first.stop(signal.SIGINT) == 130, first.output()
    interrupted = first.wait_for_line(r"^interrupted; run again to resume from step (\d+)")
    done_before = int(interrupted.group(1)) - 1
    assert 1 <= done_before < 6

    second = start(processes, tmp_path, "demo", "--step-seconds", "0.01")
    assert second.wait() == 0, second.output()
    out = "".join(second.out)
    resumed = re.search(r"^resuming run (\w+): (\d+) of 6 steps already done", out, re.M)
    assert resumed, out
    assert resumed.group(1) == run_id
    already = int(resumed.group(2))
    assert already == done_before
    # the steps done before the interrupt are skipped, every other step runs once
    assert out.count("(done in an earlier run: skipped)") == already
    ran = re.findall(r"^    batch-(\d+): \d+ orders in ", out, re.M)
    assert ran == [str(i) for i in range(already + 1, 7)]
    assert re.search(rf"^run {run_id} completed in .*in 6 batches$", out, re.M)
    assert (tmp_path / "durably-demo.db").exists()


# -- stopping twice, three times ----------------------------------------------------------


def test_a_second_sigint_releases_the_run_at_once_instead_of_waiting_out_the_grace(
    app_dir: Path, url: str, client: Durably, processes: list[Process]
) -> None:
    worker = start(
        processes, app_dir, "worker", url, "--app", "cliapp:jobs", "--grace", "600", *FAST
    )
    worker.wait_for_line(r"^durably worker on ")
    # 10 minutes of short steps: neither the run nor the grace ends during this test
    run_id = client.jobs.slow.trigger({"steps": 12000, "seconds": 0.05}).id
    wait_until(lambda: len(client.get_steps(run_id)) >= 2, timeout=60)

    worker.proc.send_signal(signal.SIGINT)
    worker.wait_for_line(r"^stopping: waiting up to 600 s for runs in flight")
    assert worker.stop(signal.SIGINT, timeout=120) == 0, worker.output()

    run = client.get_run(run_id)
    assert run is not None
    assert run.status == "pending"
    assert 2 <= len(client.get_steps(run_id)) < 12000
    out = "".join(worker.out)
    assert "releasing the runs in flight" in out
    assert out.rstrip().splitlines()[-1] == (
        f"stopped; released 1 run back to pending (another worker resumes it): {run_id}"
    )


def test_serve_on_a_second_sigint_releases_the_run_at_once(
    app_dir: Path, url: str, client: Durably, processes: list[Process]
) -> None:
    port = free_port()
    server = start(
        processes, app_dir, "serve", url, "--app", "cliapp:jobs", "--port", str(port),
        "--grace", "600", "--log-level", "warning", *FAST,
    )  # fmt: skip
    server.wait_for_line(r"^durably serve on ")
    run_id = client.jobs.slow.trigger({"steps": 12000, "seconds": 0.05}).id
    wait_until(lambda: len(client.get_steps(run_id)) >= 2, timeout=60)

    server.proc.send_signal(signal.SIGINT)
    server.wait_for_line(r"^stopping: waiting up to 600 s for runs in flight")
    assert server.stop(signal.SIGINT, timeout=120) == 0, server.output()
    assert statuses(client, [run_id]) == ["pending"]
    assert server.out[-1].startswith("stopped; released 1 run back to pending")
    assert server.out[-1].rstrip().endswith(run_id)


LONG_STEP_APP = """
import time
from pathlib import Path
from durably import define_job


def sleep():
    Path("in-step").touch()  # the test waits for this: the step is in flight
    time.sleep(600)


@define_job(name="long")
def long(step, payload):
    step.run("sleep", sleep)
    return "slept"


jobs = {"long": long}
"""


def _long_job_stub() -> Any:
    from durably import define_job

    return define_job(name="long", run=lambda step, payload: None)


def test_a_third_sigint_exits_at_once_leaving_the_step_to_stale_recovery(
    app_dir: Path, url: str, processes: list[Process]
) -> None:
    (app_dir / "longapp.py").write_text(textwrap.dedent(LONG_STEP_APP))
    worker = start(processes, app_dir, "worker", url, "--app", "longapp:jobs", *FAST)
    worker.wait_for_line(r"^durably worker on ")
    with create_durably(url) as client:
        client.register({"long": _long_job_stub()})
        run_id = client.jobs.long.trigger({}).id
        wait_until(lambda: (app_dir / "in-step").exists(), timeout=60)
        worker.proc.send_signal(signal.SIGINT)
        worker.wait_for_line(r"^stopping: ")
        worker.proc.send_signal(signal.SIGINT)
        worker.wait_for_line(r"^releasing the runs in flight")
        # the step sleeps 10 minutes: exiting within this bound means it was not waited for
        assert worker.stop(signal.SIGINT, timeout=30) == 130, worker.output()
        assert "exiting now" in "".join(worker.err)
        run = client.get_run(run_id)
        assert run is not None
        assert run.status == "running"  # until its heartbeat is stale


# -- --no-migrate on a database without durably's tables ----------------------------------


def test_worker_with_no_migrate_on_a_database_without_tables_exits_1_with_one_error(
    app_dir: Path, processes: list[Process]
) -> None:
    path = app_dir / "empty.db"
    path.touch()
    url = f"sqlite:///{path}"
    worker = start(processes, app_dir, "worker", url, "--app", "cliapp:jobs", "--no-migrate")
    assert worker.wait() == 1, worker.output()
    assert worker.err == [
        f"error: durably's tables are not in {url}: run `durably migrate {url}` first\n"
    ]
    assert worker.out == []


def test_worker_with_no_migrate_keeps_retrying_a_database_that_does_not_answer(
    app_dir: Path, processes: list[Process]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql+psycopg://durably@127.0.0.1:{port}/nowhere"
    worker = start(processes, app_dir, "worker", url, "--app", "cliapp:jobs", "--no-migrate", *FAST)
    worker.wait_for_line(r"^durably worker on ")
    wait_until(lambda: any("worker error in claim" in line for line in worker.err), timeout=60)
    assert worker.proc.poll() is None, worker.output()
    assert worker.stop(signal.SIGTERM) == 0, worker.output()


# -- a reader that has read enough ----------------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_output_into_a_pipe_closed_early_exits_0_quietly(
    app_dir: Path, url: str, client: Durably, as_json: bool
) -> None:
    # far more than a pipe buffers (64 KiB), so the writer is still writing when it closes
    client.jobs.count.batch_trigger([{"n": i} for i in range(2000)])
    argv = ["runs", url, "--limit", "2000", *(["--json"] if as_json else [])]
    read, write = os.pipe()
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "durably.cli", *argv],
        cwd=app_dir,
        env=env,
        stdout=write,
        stderr=subprocess.PIPE,
    )
    os.close(write)
    with os.fdopen(read, "rb") as reader:  # like `| head -1`: one line, then gone
        assert reader.readline()
    _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    assert proc.returncode == 0, err
    assert err == b""


def test_demo_keeps_its_completed_run_and_the_next_demo_starts_a_new_one(
    tmp_path: Path, processes: list[Process]
) -> None:
    first = start(processes, tmp_path, "demo", "--batches", "2", "--step-seconds", "0.01")
    assert first.wait() == 0, first.output()
    out = "".join(first.out)
    first_id = re.search(r"^starting run (\w+) of 'import-orders': 2 steps$", out, re.M)
    assert first_id, out
    assert f"durably run sqlite:///durably-demo.db {first_id.group(1)}" in out
    assert "durably serve sqlite:///durably-demo.db --app durably.cli.demo:jobs" in out

    second = start(processes, tmp_path, "demo", "--batches", "3", "--step-seconds", "0.01")
    assert second.wait() == 0, second.output()
    out = "".join(second.out)
    second_id = re.search(r"^starting run (\w+) of 'import-orders': 3 steps$", out, re.M)
    assert second_id, out
    assert second_id.group(1) != first_id.group(1)
    assert "skipped" not in out

    with create_durably(f"sqlite:///{tmp_path / 'durably-demo.db'}") as d:
        runs = d.get_runs()
        assert [(r.id, r.status) for r in runs] == [
            (second_id.group(1), "completed"),
            (first_id.group(1), "completed"),
        ]
        assert [s.name for s in d.get_steps(first_id.group(1))] == ["batch-1", "batch-2"]
        # the demo stores its step.log lines, so that `durably run` has them to show
        assert [log.message for log in d.get_logs(first_id.group(1))] == [
            "imported batch 1",
            "imported batch 2",
        ]


def test_a_completed_demo_run_is_what_serve_shows_with_the_demo_jobs(
    tmp_path: Path, processes: list[Process]
) -> None:
    demo = start(processes, tmp_path, "demo", "--batches", "1", "--step-seconds", "0.01")
    assert demo.wait() == 0, demo.output()
    port = free_port()
    server = start(
        processes, tmp_path, "serve", "durably-demo.db", "--app", "durably.cli.demo:jobs",
        "--port", str(port), "--log-level", "warning", *FAST,
    )  # fmt: skip
    server.wait_for_line(r"^durably serve on sqlite:///durably-demo\.db: job import_orders;")
    base = f"http://127.0.0.1:{port}/api"

    def listed() -> Any:
        try:
            return httpx.get(f"{base}/runs", timeout=5).json()
        except httpx.TransportError:
            return None

    runs = wait_until(listed, timeout=START_TIMEOUT, interval=0.05)
    assert [(r["jobName"], r["status"], r["stepCount"]) for r in runs] == [
        ("import-orders", "completed", 1)
    ]
    assert server.stop(signal.SIGTERM) == 0, server.output()


# -- trigger ------------------------------------------------------------------------------


def test_trigger_wait_prints_what_a_worker_process_returned(
    app_dir: Path, url: str, client: Durably, processes: list[Process]
) -> None:
    worker = start(processes, app_dir, "worker", url, "--app", "cliapp:jobs", *FAST)
    worker.wait_for_line(r"^durably worker on ")
    trigger = start(
        processes, app_dir, "trigger", url, "count", "--app", "cliapp:jobs",
        "--input", '{"n": 2}', "--wait",
    )  # fmt: skip
    assert trigger.wait() == 0, trigger.output()
    assert json.loads("".join(trigger.out)) == {"total": 2}
    (run,) = client.get_runs()
    assert run.status == "completed"
    worker.wait_for_line(rf"^run {run.id} count: completed in ")

    bad = start(
        processes, app_dir, "trigger", url, "count", "--app", "cliapp:jobs", "--input", '{"n": "x"}'
    )
    assert bad.wait() == 1, bad.output()
    assert len(bad.err) == 1 and bad.err[0].startswith("error: invalid --input for job 'count'")
    assert len(client.get_runs()) == 1
    assert worker.stop(signal.SIGTERM) == 0, worker.output()
