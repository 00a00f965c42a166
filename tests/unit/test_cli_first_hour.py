"""The command line's first impression (issue 12): `--version`, the messages of bad
arguments, counts in English, plain file paths for URLs, and what `durably dialects` says
about drivers. In-process with `durably.cli.main([...])` on real SQLite files.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import durably
from durably import create_durably, define_job
from durably.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@define_job(name="echo")
def echo(step: durably.StepContext, payload: Any) -> Any:
    return step.run("echo", lambda: payload)


def seed(url: str, runs: int, *, fail: bool = False) -> list[str]:
    """A migrated database with `runs` completed runs of `echo`; ids newest first."""
    with create_durably(url) as d:
        d.migrate()
        d.register({"echo": echo})
        ids = [d.jobs.echo.trigger({"i": i}).id for i in range(runs)]
        d.process_until_idle()
    return ids[::-1]


# -- 1. --version -----------------------------------------------------------------------


def test_version_prints_the_package_version_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run_cli(capsys, "--version")
    assert (status, out, err) == (0, f"durably {durably.__version__}\n", "")


# -- 5. counts ----------------------------------------------------------------------------


def test_one_run_shown_is_singular(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    seed(url, 2)
    _, out, _ = run_cli(capsys, "runs", url, "--limit", "1")
    assert "1 run shown, newest first; --offset 1 for the next ones" in out
    _, out, _ = run_cli(capsys, "runs", url, "--limit", "2")
    assert "2 runs shown, newest first; --offset 2 for the next ones" in out


# -- 6. names of argument types -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["runs", "x.db", "--limit", "abc"],
            "argument --limit: invalid positive integer value: 'abc'",
        ),
        (
            ["runs", "x.db", "--offset", "abc"],
            "argument --offset: invalid non-negative integer value: 'abc'",
        ),
        (
            ["worker", "x.db", "--app", "m:j", "--concurrency", "two"],
            "argument --concurrency: invalid positive integer value: 'two'",
        ),
        (
            ["worker", "x.db", "--app", "m:j", "--grace", "soon"],
            "argument --grace: invalid number of seconds value: 'soon'",
        ),
        (
            ["worker", "x.db", "--app", "m:j", "--polling-interval", "often"],
            "argument --polling-interval: invalid number of seconds value: 'often'",
        ),
        (
            ["serve", "x.db", "--app", "m:j", "--port", "http"],
            "argument --port: invalid port number value: 'http'",
        ),
        (["demo", "--batches", "many"], "argument --batches: invalid number of batches value"),
        (
            ["demo", "--step-seconds", "long"],
            "argument --step-seconds: invalid number of seconds value: 'long'",
        ),
    ],
)
def test_a_bad_value_is_named_in_english(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert message in err
    assert "_positive" not in err and "_non_negative" not in err


# -- 7. an option of another command ----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "usage", "unknown"),
    [
        (["runs", "x.db", "--concurrency", "3"], "usage: durably runs", "--concurrency 3"),
        (
            ["run", "x.db", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--app", "m:j"],
            "usage: durably run ",
            "--app m:j",
        ),
        (["migrate", "x.db", "--nope"], "usage: durably migrate", "--nope"),
    ],
)
def test_an_unknown_option_prints_the_usage_of_its_subcommand(
    capsys: pytest.CaptureFixture[str], argv: list[str], usage: str, unknown: str
) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.startswith(usage), err
    assert f"error: unrecognized arguments: {unknown}" in err


def test_traceback_is_accepted_after_the_command_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    seed(url, 1)
    status, out, err = run_cli(capsys, "runs", url, "--traceback", "--json")
    assert status == 0, err
    assert len(json.loads(out)) == 1


# -- 10. a plain file path where a URL is taken -------------------------------------------


def test_a_plain_relative_path_is_a_sqlite_file_in_the_working_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(capsys, "migrate", "dash.db")
    assert status == 0, err
    assert out == "migrated sqlite:///dash.db\n"
    assert (tmp_path / "dash.db").exists()
    (run_id,) = seed("sqlite:///dash.db", 1)
    status, out, err = run_cli(capsys, "runs", "dash.db", "--json")
    assert status == 0, err
    assert [r["id"] for r in json.loads(out)] == [run_id]
    status, out, err = run_cli(capsys, "run", "dash.db", run_id, "--json")
    assert status == 0, err
    assert json.loads(out)["run"]["status"] == "completed"


def test_a_plain_absolute_path_is_that_sqlite_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "sub" / "abs.db"
    path.parent.mkdir()
    (run_id,) = seed(f"sqlite:///{path}", 1)
    status, out, err = run_cli(capsys, "runs", str(path), "--json")
    assert status == 0, err
    assert [r["id"] for r in json.loads(out)] == [run_id]
    assert run_cli(capsys, "delete", str(path), run_id)[0] == 0
    status, out, _ = run_cli(capsys, "runs", str(path), "--json")
    assert json.loads(out) == []


def test_a_missing_plain_path_is_an_error_and_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "missing.db"
    status, _, err = run_cli(capsys, "runs", str(path))
    assert status == 1
    assert err.startswith("error: no database at")
    assert not path.exists()


# -- 12. dialects and their drivers -------------------------------------------------------


def test_dialects_names_the_importable_libsql_drivers(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "dialects", "--json")
    assert status == 0, err
    listed = json.loads(out)
    (libsql,) = [p for p in listed["installed"] if p["name"] == "libsql"]
    assert libsql["drivers"] == {"libsql": True, "libsql-client": True}
    assert "libsql" in listed["schemes"]
    status, out, _ = run_cli(capsys, "dialects")
    (line,) = [line for line in out.splitlines() if "durably_dialects.libsql " in line]
    assert "libsql, libsql-client" in line


def test_dialects_marks_libsql_when_neither_driver_imports(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes an import fail as if the package were not installed
    monkeypatch.setitem(sys.modules, "libsql", None)
    monkeypatch.setitem(sys.modules, "libsql_client", None)
    status, out, err = run_cli(capsys, "dialects", "--json")
    assert status == 0, err
    listed = json.loads(out)
    (libsql,) = [p for p in listed["installed"] if p["name"] == "libsql"]
    assert libsql["drivers"] == {"libsql": False, "libsql-client": False}
    assert not [s for s in listed["schemes"] if s.startswith("libsql")]
    missing = {m["scheme"]: m["install"] for m in listed["missing"]}
    assert missing["libsql"] == "pip install 'durably[libsql]'"
    assert "sqlite" in listed["schemes"]

    status, out, _ = run_cli(capsys, "dialects")
    (line,) = [line for line in out.splitlines() if "durably_dialects.libsql " in line]
    assert "driver missing: pip install 'durably[libsql]'" in line


def test_dialects_names_the_one_libsql_driver_that_imports(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "libsql", None)
    listed = json.loads(run_cli(capsys, "dialects", "--json")[1])
    (libsql,) = [p for p in listed["installed"] if p["name"] == "libsql"]
    assert libsql["drivers"] == {"libsql": False, "libsql-client": True}
    assert "libsql+wss" in listed["schemes"]


# -- 13. the psycopg2 hint ----------------------------------------------------------------


def test_a_missing_postgres_extra_lists_psycopg2_with_its_own_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    listed = json.loads(run_cli(capsys, "dialects", "--json")[1])
    missing = {m["scheme"]: m["install"] for m in listed["missing"]}
    assert missing["postgresql+psycopg"] == "pip install 'durably[postgres]'"
    hint = missing["postgresql+psycopg2"]
    assert "psycopg 3" in hint and "postgresql+psycopg://" in hint and "psycopg2" in hint


@pytest.mark.skipif(
    importlib.util.find_spec("psycopg2") is not None, reason="psycopg2 is installed here"
)
def test_a_psycopg2_url_without_psycopg2_says_the_postgres_extra_is_psycopg_3() -> None:
    with pytest.raises(durably.DialectNotFoundError) as info:
        durably.resolve_dialect("postgresql+psycopg2://app:s3cret@db.example/app")
    message = str(info.value)
    assert "psycopg 3" in message
    assert "postgresql+psycopg://" in message
    assert "install psycopg2 yourself" in message
    assert "s3cret" not in message
