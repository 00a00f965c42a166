"""The `durably` command line in-process: every command on a real SQLite file.

Runs are made with the public API (a worker in this process), then read and changed with
`durably.cli.main([...])`; `--json` output is parsed and compared with the database.
`worker`, `serve` and `demo` run as real processes in tests/integration/test_cli_processes.py.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from rich.console import Console

from durably import Durably, StepContext, create_durably, define_job
from durably._errors import DurablyError, StoreError
from durably.cli import main
from durably.cli.appload import load_jobs
from durably.cli.demo import Display
from durably.cli.output import iso, record_json, to_json
from durably.plugins import with_log_persistence

UNKNOWN_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


class CountIn(BaseModel):
    n: int = 2


def _count(step: StepContext, i: int) -> Callable[[], int]:
    def work() -> int:
        step.log.info(f"counted {i}", {"i": i})
        return i * 10

    return work


@define_job(name="count", input=CountIn)
def count_job(step: StepContext, payload: CountIn) -> dict[str, int]:
    for i in range(payload.n):
        step.run(f"step-{i}", _count(step, i))
    step.progress(payload.n, payload.n, "counted")
    return {"total": payload.n}


FLAKY = {"failing": True, "first_calls": 0}


def _first() -> int:
    FLAKY["first_calls"] += 1
    return 1


def _second() -> int:
    if FLAKY["failing"]:
        raise RuntimeError("the second step broke")
    return 2


@define_job(name="flaky")
def flaky_job(step: StepContext, payload: Any) -> int:
    a: int = step.run("first", _first)
    b: int = step.run("second", _second)
    step.log.warn("flaky finished")
    return a + b


GATE = {"entered": threading.Event(), "open": threading.Event()}


def _wait_at_gate() -> str:
    GATE["entered"].set()
    if not GATE["open"].wait(20):
        raise AssertionError("the test never opened the gate")
    return "through"


@define_job(name="gated")
def gated_job(step: StepContext, payload: Any) -> str:
    step.run("gate", _wait_at_gate)
    step.run("after-gate", lambda: "should not run after a cancel")
    return "done"


JOBS = {"count": count_job, "flaky": flaky_job, "gated": gated_job}


@dataclass
class Seeded:
    """A database with runs in known states: 3 completed, 1 failed, 2 pending."""

    url: str
    path: Path
    durably: Durably
    completed: list[str]
    failed: str
    pending: list[str]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`durably ARGV...` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status, out, err = run_cli(capsys, *argv, "--json")
    assert status == 0, err
    return json.loads(out)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def seeded(tmp_path: Path, url: str) -> Iterator[Seeded]:
    FLAKY.update(failing=True, first_calls=0)
    durably = create_durably(url, polling_interval=0.05, heartbeat_interval=0.2)
    durably.migrate()
    durably.use(with_log_persistence())
    handles = durably.register(JOBS)
    completed = [handles["count"].trigger({"n": n}).id for n in (1, 2, 3)]
    failed = handles["flaky"].trigger({}).id
    assert durably.process_until_idle() == 4
    pending = [handles["count"].trigger({"n": 5}).id, handles["flaky"].trigger({}).id]
    try:
        yield Seeded(url, tmp_path / "cli.db", durably, completed, failed, pending)
    finally:
        GATE["open"].set()
        durably.close()


# -- exit status and errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["runs"],
        ["runs", "sqlite:///x.db", "--status", "finished"],
        ["runs", "sqlite:///x.db", "--limit", "0"],
        ["runs", "sqlite:///x.db", "--limit", "many"],
        ["run", "sqlite:///x.db"],
        ["retry", "sqlite:///x.db"],
        ["worker", "sqlite:///x.db"],
        ["worker", "sqlite:///x.db", "--app", "m:jobs", "--concurrency", "0"],
        ["serve", "sqlite:///x.db", "--app", "m:jobs", "--port", "70000"],
        ["demo", "--batches", "0"],
    ],
)
def test_usage_errors_exit_2_with_argparse_message(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert "usage: durably" in err
    assert "error:" in err


def test_help_exits_0_and_documents_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0
    for name in ("demo", "migrate", "worker", "serve", "runs", "run", "retry", "cancel"):
        assert name in out
    assert "exit status" in out


def test_missing_sqlite_file_is_an_error_and_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "missing.db"
    for argv in (["runs"], ["run", UNKNOWN_ID], ["retry", UNKNOWN_ID], ["delete", UNKNOWN_ID]):
        command, *rest = argv
        status, out, err = run_cli(capsys, command, f"sqlite:///{path}", *rest)
        assert status == 1
        assert err.startswith("error: no database at")
        assert "durably migrate" in err
        assert out == ""
    assert not path.exists()


def test_unmigrated_database_error_suggests_migrate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    status, _, err = run_cli(capsys, "runs", f"sqlite:///{path}")
    assert status == 1
    assert err.startswith("error: ")
    assert f"durably migrate sqlite:///{path}" in err


def test_traceback_option_lets_a_database_error_propagate_with_its_cause(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(StoreError, match=r"migrate\(\)") as info:
        main(["--traceback", "runs", f"sqlite:///{path}"])
    cause = info.value.__cause__
    assert cause is not None and not isinstance(cause, DurablyError)
    assert "durably_runs" in str(cause)


def test_unknown_url_scheme_is_an_error_naming_the_scheme(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, _, err = run_cli(capsys, "runs", "nosuchdb://host/db")
    assert status == 1
    assert err.startswith("error: ")
    assert "'nosuchdb'" in err


# -- migrate ----------------------------------------------------------------------------


def test_migrate_creates_the_tables_and_is_idempotent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str
) -> None:
    assert run_cli(capsys, "migrate", url)[0] == 0
    status, out, _ = run_cli(capsys, "migrate", url)
    assert status == 0
    assert "migrated" in out
    with create_durably(url) as durably:
        durably.register(JOBS)
        run = durably.jobs.count.trigger({"n": 1})
        assert durably.get_run(run.id) is not None
    assert run_json(capsys, "runs", url)[0]["id"] == run.id


def test_migrate_into_a_missing_directory_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, _, err = run_cli(capsys, "migrate", f"sqlite:///{tmp_path / 'nodir' / 'x.db'}")
    assert status == 1
    assert err.startswith("error: ")


# -- runs -------------------------------------------------------------------------------


def test_runs_json_lists_every_run_newest_first_as_in_the_database(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    listed = run_json(capsys, "runs", seeded.url)
    expected = seeded.durably.get_runs()
    assert [r["id"] for r in listed] == [r.id for r in expected]
    assert len(listed) == 6
    by_id = {r["id"]: r for r in listed}
    failed = by_id[seeded.failed]
    assert failed["status"] == "failed"
    assert failed["job_name"] == "flaky"
    assert failed["error"] == "RuntimeError: the second step broke"
    assert failed["failed_step_name"] == "second"
    done = by_id[seeded.completed[2]]
    assert done["output"] == {"total": 3}
    assert done["payload"] == {"n": 3}
    assert done["progress"] == {"current": 3, "total": 3, "message": "counted"}
    assert done["completed_at"].endswith("Z")
    assert done == record_json(seeded.durably.get_run(done["id"]))  # type: ignore[arg-type]


def test_runs_filters_by_job_status_and_limit(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    def ids(*options: str) -> list[str]:
        return [r["id"] for r in run_json(capsys, "runs", seeded.url, *options)]

    count_runs = [r.id for r in seeded.durably.get_runs(job_name="count")]
    assert ids("--job", "count") == count_runs
    assert len(count_runs) == 4
    assert ids("--status", "completed") == seeded.completed[::-1]
    assert ids("--status", "pending") == seeded.pending[::-1]
    assert ids("--status", "failed", "--status", "pending") == [
        r.id for r in seeded.durably.get_runs(status=["failed", "pending"])
    ]
    assert ids("--job", "flaky", "--status", "failed") == [seeded.failed]
    assert ids("--job", "count", "--job", "flaky") == ids()
    assert ids("--job", "no-such-job") == []
    newest_first = ids()
    assert ids("--limit", "2") == newest_first[:2]
    assert ids("--limit", "2", "--offset", "2") == newest_first[2:4]
    assert ids("--status", "completed", "--limit", "1") == [seeded.completed[-1]]


def test_runs_table_shows_ids_jobs_and_statuses(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    status, out, _ = run_cli(capsys, "runs", seeded.url)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "job", "status", "progress", "step", "created", "updated"]
    for run in seeded.durably.get_runs():
        (line,) = [line for line in lines if line.startswith(run.id)]
        assert run.job_name in line
        assert run.status in line
    completed_line = next(line for line in lines if line.startswith(seeded.completed[0]))
    assert "100%" in completed_line


def test_runs_with_limit_says_how_to_see_more(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    _, out, _ = run_cli(capsys, "runs", seeded.url, "--limit", "2")
    assert "--offset 2 for the next ones" in out


def test_runs_on_an_empty_database_says_so(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert run_cli(capsys, "migrate", url)[0] == 0
    assert run_cli(capsys, "runs", url)[1].strip() == "no runs"
    assert run_cli(capsys, "runs", url, "--job", "x")[1].strip() == "no runs match"
    assert run_json(capsys, "runs", url) == []


# -- run ID -----------------------------------------------------------------------------


def test_run_json_has_the_run_its_steps_and_its_logs(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    run_id = seeded.completed[1]
    shown = run_json(capsys, "run", seeded.url, run_id)
    assert shown["run"]["id"] == run_id
    assert shown["run"]["status"] == "completed"
    assert [(s["name"], s["index"], s["status"], s["output"]) for s in shown["steps"]] == [
        ("step-0", 0, "completed", 0),
        ("step-1", 1, "completed", 10),
    ]
    assert shown["steps"] == [record_json(s) for s in seeded.durably.get_steps(run_id)]
    assert [(log["level"], log["message"], log["data"]) for log in shown["logs"]] == [
        ("info", "counted 0", {"i": 0}),
        ("info", "counted 1", {"i": 1}),
    ]
    assert [log["step_name"] for log in shown["logs"]] == ["step-0", "step-1"]


def test_run_shows_steps_logs_and_the_error_of_a_failed_run(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    status, out, _ = run_cli(capsys, "run", seeded.url, seeded.failed)
    assert status == 0
    assert seeded.failed in out
    assert "failed" in out
    assert re.search(r"^failed step +second", out, re.MULTILINE)
    step_lines = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [line[:3] for line in step_lines] == [
        ["0", "first", "completed"],
        ["1", "second", "failed"],
    ]
    assert "error: RuntimeError: the second step broke" in out

    status, out, _ = run_cli(capsys, "run", seeded.url, seeded.completed[0])
    assert "counted 0" in out
    assert "step-0" in out


def test_run_of_an_unknown_id_exits_1(capsys: pytest.CaptureFixture[str], seeded: Seeded) -> None:
    for argv in (["run", seeded.url, UNKNOWN_ID], ["run", seeded.url, UNKNOWN_ID, "--json"]):
        status, out, err = run_cli(capsys, *argv)
        assert status == 1
        assert out == ""
        assert err == f"error: run '{UNKNOWN_ID}' not found\n"


# -- retry / cancel / delete ------------------------------------------------------------


def test_retry_makes_a_failed_run_pending_and_keeps_its_completed_steps(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    status, out, _ = run_cli(capsys, "retry", seeded.url, seeded.failed)
    assert status == 0
    assert "its 1 completed step will be skipped" in out
    assert seeded.durably.get_run(seeded.failed).status == "pending"  # type: ignore[union-attr]

    FLAKY["failing"] = False
    # pending runs are claimed oldest first: the retried one comes before the two new ones
    seeded.durably.process_until_idle()
    run = seeded.durably.get_run(seeded.failed)
    assert run is not None
    assert run.status == "completed"
    assert run.output == 3
    # "first" ran once for the original run and once for the newer pending flaky run
    assert FLAKY["first_calls"] == 2


def test_retry_json_prints_the_pending_run(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    shown = run_json(capsys, "retry", seeded.url, seeded.failed)
    assert shown["id"] == seeded.failed
    assert shown["status"] == "pending"
    assert shown["error"] is None
    assert shown == record_json(seeded.durably.get_run(seeded.failed))  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["completed", "pending"])
def test_retry_of_a_run_in_the_wrong_state_exits_1_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], seeded: Seeded, which: str
) -> None:
    run_id = seeded.completed[0] if which == "completed" else seeded.pending[0]
    status, out, err = run_cli(capsys, "retry", seeded.url, run_id)
    assert status == 1
    assert out == ""
    assert err.startswith(f"error: cannot retry run '{run_id}': it is {which}")
    assert seeded.durably.get_run(run_id).status == which  # type: ignore[union-attr]


def test_cancel_makes_a_pending_run_cancelled_and_a_second_cancel_fails(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    run_id = seeded.pending[0]
    shown = run_json(capsys, "cancel", seeded.url, run_id)
    assert shown["status"] == "cancelled"
    assert seeded.durably.get_run(run_id).status == "cancelled"  # type: ignore[union-attr]
    status, _, err = run_cli(capsys, "cancel", seeded.url, run_id)
    assert status == 1
    assert err.startswith("error: ") and "cancelled" in err
    # a cancelled run can be retried from the command line too
    assert run_json(capsys, "retry", seeded.url, run_id)["status"] == "pending"


def test_cancel_of_a_running_run_stops_it_at_its_next_step_boundary(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    GATE["entered"].clear()
    GATE["open"].clear()
    for run_id in seeded.pending:  # only the gated run is left for the worker to claim
        seeded.durably.cancel(run_id)
    run_id = seeded.durably.jobs.gated.trigger({}).id
    seeded.durably.start()
    assert GATE["entered"].wait(20)
    assert seeded.durably.get_run(run_id).status == "running"  # type: ignore[union-attr]

    status, out, _ = run_cli(capsys, "cancel", seeded.url, run_id)
    assert status == 0
    assert "it stops at its next step boundary" in out
    GATE["open"].set()
    seeded.durably.stop(timeout=20)
    run = seeded.durably.get_run(run_id)
    assert run is not None
    assert run.status == "cancelled"
    # the step in flight was fenced out by the cancel; the next step never started
    assert "after-gate" not in [s.name for s in seeded.durably.get_steps(run_id)]


def test_delete_removes_a_terminal_run_with_its_steps_and_logs(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    run_id = seeded.completed[1]
    assert seeded.durably.get_logs(run_id)
    assert run_json(capsys, "delete", seeded.url, run_id) == {"id": run_id, "deleted": True}
    assert seeded.durably.get_run(run_id) is None
    assert seeded.durably.get_steps(run_id) == []
    assert seeded.durably.get_logs(run_id) == []
    assert run_id not in [r["id"] for r in run_json(capsys, "runs", seeded.url)]

    status, out, _ = run_cli(capsys, "delete", seeded.url, seeded.failed)
    assert status == 0
    assert f"deleted run {seeded.failed}" in out
    assert seeded.durably.get_run(seeded.failed) is None


def test_delete_of_a_pending_run_exits_1_and_keeps_it(
    capsys: pytest.CaptureFixture[str], seeded: Seeded
) -> None:
    run_id = seeded.pending[0]
    status, out, err = run_cli(capsys, "delete", seeded.url, run_id)
    assert status == 1
    assert out == ""
    assert err.startswith("error: ") and "pending" in err
    assert seeded.durably.get_run(run_id).status == "pending"  # type: ignore[union-attr]


@pytest.mark.parametrize("command", ["retry", "cancel", "delete"])
def test_state_commands_on_an_unknown_id_exit_1(
    capsys: pytest.CaptureFixture[str], seeded: Seeded, command: str
) -> None:
    status, out, err = run_cli(capsys, command, seeded.url, UNKNOWN_ID)
    assert status == 1
    assert out == ""
    assert err == f"error: run '{UNKNOWN_ID}' not found\n"
    assert len(seeded.durably.get_runs()) == 6


# -- dialects ---------------------------------------------------------------------------


def test_dialects_json_lists_the_installed_url_schemes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    listed = run_json(capsys, "dialects")
    for scheme in ("sqlite", "postgresql+psycopg", "mysql+pymysql", "libsql", "libsql+file"):
        assert scheme in listed["schemes"]
    by_name = {p["name"]: p for p in listed["installed"]}
    assert "sqlite" in by_name["sqlite3"]["schemes"]
    assert "postgresql+psycopg" in by_name["sqlalchemy"]["schemes"]
    assert "libsql" in by_name["libsql"]["schemes"]
    # with every extra of the dev environment installed, nothing is left to install
    assert listed["missing"] == []
    assert listed["failed"] == []


def test_dialects_table_names_plugins_and_schemes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "dialects")
    assert status == 0
    assert "installed dialects" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert "sqlite" in lines["sqlite3"]
    assert "postgresql+psycopg" in lines["sqlalchemy"]
    assert "mysql+pymysql" in lines["sqlalchemy"]
    assert "libsql+wss" in lines["libsql"]


# -- --app loading ----------------------------------------------------------------------

APP_MODULE = """
from durably import create_durably, define_job

@define_job(name="hello")
def hello(step, payload):
    return step.run("greet", lambda: "hi")

@define_job(name="bye")
def bye(step, payload):
    return "bye"

jobs = {"hello_handle": hello, "bye": bye}
job_list = [hello, bye]
empty = {}
not_jobs = {"x": 1}
number = 42

def make_jobs():
    return [hello]

def make_number():
    return 42

class Settings:
    pass

instance = create_durably("sqlite://")
instance.register({"hi": hello})

class Holder:
    jobs = {"bye": bye}
"""


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module written to tmp_path and importable from the current directory."""
    name = f"cli_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    module = sys.modules.pop(name, None)
    if module is not None:
        module.instance.close()


def test_load_jobs_accepts_a_mapping_a_list_a_definition_a_factory_and_an_instance(
    app_module: str,
) -> None:
    jobs = load_jobs(f"{app_module}:jobs")
    assert sorted(jobs) == ["bye", "hello_handle"]
    assert jobs["hello_handle"].name == "hello"
    assert sorted(load_jobs(f"{app_module}:job_list")) == ["bye", "hello"]
    assert list(load_jobs(f"{app_module}:hello")) == ["hello"]
    assert list(load_jobs(f"{app_module}:make_jobs")) == ["hello"]
    # an instance gives its registered definitions, by job name
    assert list(load_jobs(f"{app_module}:instance")) == ["hello"]
    assert list(load_jobs(f"{app_module}:Holder.jobs")) == ["bye"]


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        (":jobs", "--app must look like module:attribute"),
        ("no_such_module_for_cli:jobs", "cannot import 'no_such_module_for_cli'"),
        ("{mod}", "--app must look like module:attribute"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:empty", "holds no jobs"),
        ("{mod}:not_jobs", "not job definitions (made with define_job): 'x' (an int)"),
        ("{mod}:number", "is an int; expected a Durably instance"),
        ("{mod}:make_number", "returns an int; expected"),
        ("{mod}:Settings", "is the class Settings"),
    ],
)
def test_load_jobs_rejects_what_is_not_jobs_with_a_clear_error(
    app_module: str, attr: str, message: str
) -> None:
    with pytest.raises(DurablyError) as info:
        load_jobs(attr.format(mod=app_module))
    assert message in str(info.value)


def test_worker_with_a_bad_app_exits_1_before_touching_the_database(
    capsys: pytest.CaptureFixture[str], app_module: str, tmp_path: Path
) -> None:
    db = tmp_path / "never.db"
    for spec in (f"{app_module}:missing", "no_such_module_for_cli:jobs", f"{app_module}:number"):
        for command in ("worker", "serve"):
            status, out, err = run_cli(capsys, command, f"sqlite:///{db}", "--app", spec)
            assert status == 1
            assert out == ""
            assert err.startswith("error: ")
            assert "--app" in err
    assert not db.exists()


# -- output helpers ---------------------------------------------------------------------


def test_json_output_has_no_nan_and_times_end_in_z() -> None:
    assert json.loads(to_json({"a": float("nan"), "b": [float("inf"), 1.5]})) == {
        "a": None,
        "b": [None, 1.5],
    }
    from datetime import datetime, timedelta, timezone

    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert iso(moment) == "2024-05-06T05:08:09.123456Z"
    assert iso(None) is None


def test_job_data_with_brackets_is_printed_as_it_is(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    @define_job(name="[bold]tricky[/bold]")
    def tricky(step: StepContext, payload: Any) -> None:
        step.log.info("[red]not markup[/red]")

    with create_durably(url) as durably:
        durably.migrate()
        durably.use(with_log_persistence())
        durably.register({"tricky": tricky})
        run_id = durably.jobs.tricky.trigger({}).id
        durably.process_until_idle()
    assert "[bold]tricky[/bold]" in run_cli(capsys, "runs", url)[1]
    assert "[red]not markup[/red]" in run_cli(capsys, "run", url, run_id)[1]


def test_demo_display_draws_a_progress_bar_on_a_terminal() -> None:
    screen = StringIO()
    display = Display(Console(file=screen, force_terminal=True, width=100))
    display.start(total=4, done=1)
    display.progress(1, 4, "imported batch 1 of 4", skipped=True)
    display.say("    batch-2: 124 orders in 0.10 s")
    display.progress(2, 4, "imported batch 2 of 4", skipped=False)
    display.stop()
    display.stop()
    text = screen.getvalue()
    assert "2/4" in text
    assert "━" in text
    assert "batch-2: 124 orders" in text
    assert "(done in an earlier run: skipped)" in text


def test_demo_display_prints_plain_lines_without_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    display = Display(None)
    display.start(total=4, done=0)
    display.progress(2, 4, "imported batch 2 of 4", skipped=False)
    display.stop()
    assert capsys.readouterr().out == "  [########........] 2/4 imported batch 2 of 4\n"
