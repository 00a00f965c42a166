"""`durably trigger URL JOB --app module:attr --input JSON`: a run from the command line.

In-process with `durably.cli.main([...])` on a real SQLite file; the `--wait` tests run a
worker on another instance (as a worker process elsewhere would): `trigger` itself never
executes a run.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import Durably, create_durably
from durably.cli import main
from durably.cli.output import record_json

APP = """
import threading
from pydantic import BaseModel
from durably import StepContext, define_job

RELEASE = threading.Event()


class AddIn(BaseModel):
    a: int
    b: int = 0


@define_job(name="add", input=AddIn)
def add(step: StepContext, payload: AddIn) -> dict:
    total = step.run("add", lambda: payload.a + payload.b)
    return {"sum": total}


@define_job(name="boom")
def boom(step: StepContext, payload: dict) -> None:
    step.run("explode", lambda: 1 / 0)


@define_job(name="held")
def held(step: StepContext, payload: dict) -> str:
    step.run("wait", lambda: RELEASE.wait(30) and "released")
    return "done"


jobs = {"add_numbers": add, "boom": boom, "held": held}
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`--app` for the jobs above, importable from the current directory."""
    name = f"trigger_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield f"{name}:jobs"
    module = sys.modules.pop(name, None)
    if module is not None:
        module.RELEASE.set()


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'trigger.db'}"
    with create_durably(url) as d:
        d.migrate()
    return url


@pytest.fixture
def reader(url: str) -> Iterator[Durably]:
    """An instance on the same file that only reads."""
    with create_durably(url) as d:
        yield d


@pytest.fixture
def worker(url: str, app: str) -> Iterator[Durably]:
    """A worker elsewhere: another instance, started, with the same jobs."""
    from durably.cli.appload import load_jobs

    with create_durably(url, polling_interval=0.05, heartbeat_interval=0.2) as d:
        d.register(load_jobs(app))
        d.start()
        yield d


def test_trigger_prints_the_id_of_a_pending_run_with_the_validated_input(
    capsys: pytest.CaptureFixture[str], url: str, app: str, reader: Durably
) -> None:
    status, out, err = run_cli(capsys, "trigger", url, "add", "--app", app, "--input", '{"a": 2}')
    assert (status, err) == (0, "")
    run = reader.get_run(out.strip())
    assert run is not None
    assert (run.job_name, run.status, run.payload) == ("add", "pending", {"a": 2, "b": 0})
    assert out == f"{run.id}\n"


def test_trigger_json_prints_the_run_as_runs_json_does(
    capsys: pytest.CaptureFixture[str], url: str, app: str, reader: Durably
) -> None:
    status, out, err = run_cli(
        capsys,
        "trigger",
        url,
        "add",
        "--app",
        app,
        "--input",
        '{"a": 1, "b": 2}',
        "--idempotency-key",
        "once",
        "--concurrency-key",
        "adder",
        "--json",
    )
    assert status == 0, err
    shown = json.loads(out)
    assert (shown["idempotency_key"], shown["concurrency_key"]) == ("once", "adder")
    run = reader.get_run(shown["id"])
    assert run is not None
    assert shown == record_json(run)

    # the same idempotency key gives the same run, and writes nothing
    again = json.loads(
        run_cli(capsys, "trigger", url, "add", "--app", app, "--input", '{"a": 9}',
                "--idempotency-key", "once", "--json")[1]
    )  # fmt: skip
    assert again["id"] == shown["id"]
    assert again["payload"] == {"a": 1, "b": 2}
    assert len(reader.get_runs()) == 1


def test_trigger_accepts_the_registration_key_and_a_plain_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, app: str, reader: Durably
) -> None:
    status, out, err = run_cli(
        capsys, "trigger", "trigger.db", "add_numbers", "--app", app, "--input", '{"a": 1}'
    )
    assert status == 0, err
    run = reader.get_run(out.strip())
    assert run is not None and run.job_name == "add"


@pytest.mark.parametrize(
    ("input_text", "message"),
    [
        ('{"a": "x"}', "error: invalid --input for job 'add': a: Input should be a valid integer"),
        ("{}", "error: invalid --input for job 'add': a: Field required"),
        ("[1, 2]", "error: invalid --input for job 'add': Input should be a valid dictionary"),
    ],
)
def test_input_that_fails_validation_is_one_error_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    url: str,
    app: str,
    reader: Durably,
    input_text: str,
    message: str,
) -> None:
    status, out, err = run_cli(capsys, "trigger", url, "add", "--app", app, "--input", input_text)
    assert status == 1
    assert out == ""
    assert err.startswith(message), err
    assert err.count("\n") == 1, err
    assert reader.get_runs() == []


@pytest.mark.parametrize("input_text", ["{a: 1}", "", "NaN", '{"a": 1'])
def test_input_that_is_not_json_is_a_usage_error_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], url: str, app: str, reader: Durably, input_text: str
) -> None:
    status, out, err = run_cli(capsys, "trigger", url, "add", "--app", app, "--input", input_text)
    assert status == 2
    assert out == ""
    assert "usage: durably trigger" in err
    assert "argument --input: not valid JSON" in err
    assert reader.get_runs() == []


def test_an_unknown_job_is_an_error_naming_the_jobs_there_are(
    capsys: pytest.CaptureFixture[str], url: str, app: str, reader: Durably
) -> None:
    status, out, err = run_cli(capsys, "trigger", url, "nope", "--app", app)
    assert status == 1
    assert out == ""
    assert err == f"error: no job 'nope' in --app {app!r}; its jobs: add, boom, held\n"
    assert reader.get_runs() == []


def test_a_missing_database_is_an_error_and_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, app: str
) -> None:
    path = tmp_path / "missing.db"
    status, _, err = run_cli(capsys, "trigger", str(path), "add", "--app", app, "--input", "{}")
    assert status == 1
    assert err.startswith("error: no database at")
    assert not path.exists()


def test_timeout_without_wait_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], url: str, app: str, reader: Durably
) -> None:
    status, _, err = run_cli(capsys, "trigger", url, "add", "--app", app, "--timeout", "5")
    assert status == 2
    assert "usage: durably trigger" in err
    assert "--timeout needs --wait" in err
    assert reader.get_runs() == []


# -- --wait -------------------------------------------------------------------------------


def test_wait_prints_the_output_once_a_worker_elsewhere_completed_the_run(
    capsys: pytest.CaptureFixture[str], url: str, app: str, worker: Durably
) -> None:
    status, out, err = run_cli(
        capsys, "trigger", url, "add", "--app", app, "--input", '{"a": 2, "b": 3}', "--wait"
    )
    assert status == 0, err
    assert json.loads(out) == {"sum": 5}
    (run,) = worker.get_runs()
    assert run.status == "completed"
    assert f"triggered run {run.id}; waiting for a worker" in err


def test_wait_json_prints_the_final_run(
    capsys: pytest.CaptureFixture[str], url: str, app: str, worker: Durably
) -> None:
    status, out, err = run_cli(
        capsys, "trigger", url, "add", "--app", app, "--input", '{"a": 1}', "--wait", "--json"
    )
    assert status == 0, err
    shown = json.loads(out)
    assert (shown["status"], shown["output"]) == ("completed", {"sum": 1})
    assert shown == record_json(worker.get_run(shown["id"]))  # type: ignore[arg-type]


def test_wait_on_a_run_that_fails_exits_1_with_its_error(
    capsys: pytest.CaptureFixture[str], url: str, app: str, worker: Durably
) -> None:
    status, out, err = run_cli(capsys, "trigger", url, "boom", "--app", app, "--wait")
    assert status == 1
    assert out == ""
    (run,) = worker.get_runs()
    assert err.splitlines()[-1] == (
        f"error: run {run.id} failed at step 'explode': ZeroDivisionError: division by zero"
    )


def test_wait_runs_nothing_itself_and_times_out_leaving_the_run_pending(
    capsys: pytest.CaptureFixture[str], url: str, app: str, reader: Durably
) -> None:
    status, out, err = run_cli(
        capsys, "trigger", url, "add", "--app", app, "--input", '{"a": 1}', "--wait",
        "--timeout", "0.5",
    )  # fmt: skip
    assert status == 1
    assert out == ""
    (run,) = reader.get_runs()
    assert run.status == "pending"
    assert err.splitlines()[-1].startswith(f"error: run {run.id} did not end within 0.5 s")
    assert "it stays pending" in err


def test_wait_on_a_run_cancelled_meanwhile_exits_1(
    capsys: pytest.CaptureFixture[str], url: str, app: str, worker: Durably
) -> None:
    def cancel_once_running() -> Any:
        for _ in range(400):
            runs = worker.get_runs(status="running")
            if runs:
                worker.cancel(runs[0].id)
                sys.modules[app.partition(":")[0]].RELEASE.set()
                return
            threading.Event().wait(0.05)

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    status, _, err = run_cli(capsys, "trigger", url, "held", "--app", app, "--wait")
    canceller.join()
    assert status == 1
    (run,) = worker.get_runs()
    assert err.splitlines()[-1] == f"error: run {run.id} was cancelled"
