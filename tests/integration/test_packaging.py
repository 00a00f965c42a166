"""The built wheel: what it ships, and that it migrates and runs a job on its own.

The wheel is built from the checkout, unzipped, and imported by a fresh interpreter
whose working directory is elsewhere, so the checkout's `alembic/` cannot stand in for
the copy that must be inside the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("durably-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


@pytest.fixture(scope="module")
def unzipped(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def dist_info_file(names: set[str], filename: str) -> str:
    (name,) = [n for n in names if n.endswith(f".dist-info/{filename}") and n.count("/") == 1]
    return name


@pytest.mark.parametrize(
    "path",
    [
        "durably/__init__.py",
        "durably/py.typed",
        "durably/_alembic/env.py",
        "durably/_alembic/versions/0001_initial.py",
        "durably_dialects/__init__.py",
        "durably_dialects/sqlite3.py",
    ],
)
def test_wheel_ships_the_file(path: str, wheel_names: set[str]) -> None:
    assert path in wheel_names


def test_wheel_ships_every_alembic_revision_of_the_checkout(wheel_names: set[str]) -> None:
    revisions = sorted(p.name for p in (REPO / "alembic" / "versions").glob("*.py"))
    assert revisions
    for name in revisions:
        assert f"durably/_alembic/versions/{name}" in wheel_names


def test_wheel_does_not_ship_a_top_level_alembic_package_that_would_shadow_the_library(
    wheel_names: set[str],
) -> None:
    assert not [n for n in wheel_names if n.split("/", 1)[0] in ("alembic", "tests")]


def test_wheel_declares_the_sqlite3_adapter_in_the_dialects_entry_point_group(
    wheel: Path, wheel_names: set[str]
) -> None:
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(dist_info_file(wheel_names, "entry_points.txt")).decode()
    group = text.split("[durably.dialects]", 1)
    assert len(group) == 2, text
    section = group[1].split("[", 1)[0]
    assert "sqlite3 = durably_dialects.sqlite3:plugin" in section


WHEEL_SMOKE_SCRIPT = """
import importlib.metadata, json, sys
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import durably, durably_dialects.sqlite3
from durably import create_durably, define_job
from durably._migrate import VERSION_TABLE, AlembicMigrator, script_location
from durably._schema import TABLE_NAMES, metadata

db = sys.argv[1]

@define_job(name="one-step")
def one_step(step, payload):
    return {"doubled": step.run("double", lambda: payload["n"] * 2)}

with create_durably("sqlite:///" + db) as d:
    d.migrate()
    run = d.register({"one": one_step})["one"].trigger({"n": 21})
    d.process_until_idle()
    run = d.get_run(run.id)
    steps = [(s.name, s.status, s.output) for s in d.get_steps(run.id)]
    dialect_file = sys.modules[type(d.dialect).__module__].__file__

def only_durably(name, type_, parent_names):
    return type_ != "table" or name in TABLE_NAMES

engine = sa.create_engine("sqlite:///" + db)
with engine.connect() as conn:
    context = MigrationContext.configure(
        conn, opts={"include_name": only_durably, "compare_type": True}
    )
    diffs = compare_metadata(context, metadata)
    version = conn.exec_driver_sql("SELECT version_num FROM " + VERSION_TABLE).fetchall()
engine.dispose()

print(json.dumps({
    "durably_file": durably.__file__,
    "adapter_file": durably_dialects.sqlite3.__file__,
    "dialect_file": dialect_file,
    "script_location": str(script_location()),
    "distribution_root": str(importlib.metadata.distribution("durably").locate_file("")),
    "status": run.status,
    "output": run.output,
    "steps": steps,
    "diffs": [repr(diff) for diff in diffs],
    "version": [list(row) for row in version],
    "head": AlembicMigrator().head(),
}))
"""


def test_unzipped_wheel_migrates_a_fresh_file_and_runs_a_job_without_the_checkout(
    unzipped: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    db_file = tmp_path / "wheel.db"
    env = {**os.environ, "PYTHONPATH": str(unzipped)}
    proc = subprocess.run(
        [sys.executable, "-c", WHEEL_SMOKE_SCRIPT, str(db_file)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    # the unzipped copy, not the editable checkout, is what ran
    for key in ("durably_file", "adapter_file", "dialect_file", "script_location"):
        assert Path(result[key]).is_relative_to(unzipped), (key, result[key])
    assert Path(result["script_location"]) == unzipped / "durably" / "_alembic"
    assert Path(result["distribution_root"]) == unzipped

    assert result["status"] == "completed"
    assert result["output"] == {"doubled": 42}
    assert result["steps"] == [["double", "completed", 42]]
    assert result["version"] == [[result["head"]]]
    assert result["diffs"] == [], "the migrated schema differs from durably._schema.metadata"


def test_importing_the_server_without_its_extra_says_which_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if the server extra were not installed\n"
        "import durably\n"
        "try:\n"
        "    import durably.server\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'durably[server]'" in out.stdout
