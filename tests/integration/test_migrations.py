"""`migrate()` on real SQLite files: concurrent processes, a shared database, failures.

The schema-versus-metadata comparison lives in test_packaging.py, run on the built wheel.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from durably import DurablyError, MigrationError, create_durably
from durably.migrate import VERSION_TABLE, AlembicMigrator
from durably.schema import TABLE_NAMES

MIGRATE_AT_SIGNAL = """
import pathlib, sys, time
from durably import create_durably

url, ready, go = sys.argv[1:4]
d = create_durably(url)
pathlib.Path(ready).touch()
deadline = time.monotonic() + 60
while not pathlib.Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("never got the signal to start")
    time.sleep(0.001)
d.migrate()
d.close()
print("migrated")
"""


def version_rows(db_file: Path, table: str = VERSION_TABLE) -> list[tuple[str]]:
    with sqlite3.connect(db_file) as conn:
        return conn.execute(f"SELECT version_num FROM {table}").fetchall()


def table_names(db_file: Path) -> set[str]:
    with sqlite3.connect(db_file) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def migrate_in_processes_at_once(db_file: Path, workdir: Path, count: int) -> None:
    """Start `count` processes, hold them at a barrier, release all, wait for all."""
    workdir.mkdir()
    go = workdir / "go"
    procs = []
    for i in range(count):
        ready = workdir / f"ready-{i}"
        procs.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", MIGRATE_AT_SIGNAL, f"sqlite:///{db_file}", ready, go],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    try:
        deadline = time.monotonic() + 60
        for ready, proc in procs:
            while not ready.exists():
                if proc.poll() is not None:
                    pytest.fail(f"a migrating process died before the barrier: {proc.stderr}")
                if time.monotonic() > deadline:
                    pytest.fail("migrating processes did not reach the barrier within 60 s")
                time.sleep(0.005)
        go.touch()
        for _, proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert out.strip() == "migrated", (out, err)
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("attempt", range(3))
def test_four_processes_migrating_a_fresh_file_at_once_all_succeed_and_reach_head_once(
    attempt: int, tmp_path: Path
) -> None:
    db_file = tmp_path / "shared.db"
    migrate_in_processes_at_once(db_file, tmp_path / "barrier", count=4)
    assert version_rows(db_file) == [(AlembicMigrator().head(),)]
    assert TABLE_NAMES | {VERSION_TABLE} <= table_names(db_file)


def test_four_processes_migrating_an_empty_wal_file_at_once_all_succeed_and_reach_head_once(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "shared.db"
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.close()
    migrate_in_processes_at_once(db_file, tmp_path / "barrier", count=4)
    assert version_rows(db_file) == [(AlembicMigrator().head(),)]
    assert TABLE_NAMES | {VERSION_TABLE} <= table_names(db_file)


def test_migrate_waits_for_another_writer_when_switching_a_file_to_wal(tmp_path: Path) -> None:
    db_file = tmp_path / "busy.db"
    # the application's own connection, mid-transaction on a rollback-journal database
    other = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE app_data (value INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO app_data VALUES (1)")
    release = threading.Timer(0.5, other.execute, ("COMMIT",))
    release.start()
    try:
        with create_durably(f"sqlite:///{db_file}?timeout=30") as d:
            d.migrate()
    finally:
        release.join()
        other.close()
    assert version_rows(db_file) == [(AlembicMigrator().head(),)]
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT value FROM app_data").fetchall() == [(1,)]
    conn.close()


def test_migrate_twice_in_one_process_is_a_no_op(tmp_path: Path) -> None:
    db_file = tmp_path / "twice.db"
    with create_durably(f"sqlite:///{db_file}") as d:
        d.migrate()
        d.migrate()
    with create_durably(f"sqlite:///{db_file}") as d:
        d.migrate()
    assert version_rows(db_file) == [(AlembicMigrator().head(),)]


def test_migrate_leaves_the_applications_own_alembic_version_and_tables_alone(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "app.db"
    with sqlite3.connect(db_file) as conn:
        conn.executescript(
            """
            CREATE TABLE alembic_version (
                version_num VARCHAR(32) NOT NULL PRIMARY KEY
            );
            INSERT INTO alembic_version VALUES ('user_rev');
            CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL);
            CREATE INDEX ix_orders_item ON orders (item);
            INSERT INTO orders (item) VALUES ('tea'), ('cake');
            """
        )
    with sqlite3.connect(db_file) as conn:
        app_schema_before = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name IN "
            "('alembic_version', 'orders') ORDER BY name"
        ).fetchall()
    conn.close()

    with create_durably(f"sqlite:///{db_file}") as d:
        d.migrate()
        d.migrate()

    assert version_rows(db_file, "alembic_version") == [("user_rev",)]
    assert version_rows(db_file) == [(AlembicMigrator().head(),)]
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT id, item FROM orders ORDER BY id").fetchall() == [
            (1, "tea"),
            (2, "cake"),
        ]
        assert (
            conn.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE tbl_name IN "
                "('alembic_version', 'orders') ORDER BY name"
            ).fetchall()
            == app_schema_before
        )
    conn.close()
    assert table_names(db_file) >= TABLE_NAMES


def test_database_in_a_missing_directory_gives_an_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises((ValueError, DurablyError)) as info:
        d = create_durably(f"sqlite:///{missing / 'app.db'}")
        d.migrate()
    assert str(missing) in str(info.value)
    assert not missing.exists(), "durably must not create directories behind the user's back"


def test_database_path_that_is_a_directory_gives_a_migration_error_naming_it(
    tmp_path: Path,
) -> None:
    target = tmp_path / "actually-a-directory.db"
    target.mkdir()
    with create_durably(f"sqlite:///{target}") as d, pytest.raises(MigrationError) as info:
        d.migrate()
    assert str(target) in str(info.value)


def test_unknown_revision_in_durablys_version_table_raises_migration_error_naming_it(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "future.db"
    with create_durably(f"sqlite:///{db_file}") as d:
        d.migrate()
    with sqlite3.connect(db_file) as conn:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version_num = 'zzzz'")
    conn.close()

    with create_durably(f"sqlite:///{db_file}") as d, pytest.raises(MigrationError) as info:
        d.migrate()
    assert isinstance(info.value, DurablyError)
    assert "zzzz" in str(info.value)
    assert info.value.__cause__ is not None, "the alembic error should be chained"
    assert version_rows(db_file) == [("zzzz",)], "a failed migration must change nothing"


def test_fresh_database_file_is_created_by_migrate(tmp_path: Path) -> None:
    db_file = tmp_path / "new.db"
    assert not db_file.exists()
    with create_durably(f"sqlite:///{db_file}") as d:
        d.migrate()
    assert db_file.is_file()
    assert table_names(db_file) >= TABLE_NAMES
