"""`migrate()` on real SQLite files (concurrent processes, a shared database, failures),
and on every backend from the partial schemas a killed first migration leaves.

The schema-versus-metadata comparison lives in test_packaging.py, run on the built wheel.
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _backends import (
    SERVER_URLS,
    drop_schema,
    execute_all,
    file_url,
    prepare_server,
    schema_of,
    sqlalchemy_url,
)
from alembic import command
from alembic.script import ScriptDirectory

from durably import Durably, DurablyError, MigrationError, StepContext, create_durably, define_job
from durably import _schema as schema
from durably._migrate import VERSION_TABLE, AlembicMigrator, alembic_config
from durably._schema import TABLE_NAMES
from durably.plugins import with_log_persistence
from durably_dialects.libsql._migrate import split_sql

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


def migrate_in_processes_at_once(url: str, workdir: Path, count: int) -> None:
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
                    [sys.executable, "-c", MIGRATE_AT_SIGNAL, url, ready, go],
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
    migrate_in_processes_at_once(f"sqlite:///{db_file}", tmp_path / "barrier", count=4)
    assert version_rows(db_file) == [(AlembicMigrator().head(),)]
    assert TABLE_NAMES | {VERSION_TABLE} <= table_names(db_file)


def test_four_processes_migrating_an_empty_wal_file_at_once_all_succeed_and_reach_head_once(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "shared.db"
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.close()
    migrate_in_processes_at_once(f"sqlite:///{db_file}", tmp_path / "barrier", count=4)
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


# -- finishing from a partial schema, on every backend ---------------------------------
#
# MySQL/MariaDB commit each CREATE TABLE / CREATE INDEX on its own, so a first migrate()
# killed midway leaves a prefix of revision 0001's statements and no version row. The
# states below are built with those very statements (alembic's offline SQL for the
# backend), plus a few a person could have made by hand.

RUN_ROW = (
    "INSERT INTO durably_runs (id, job_name, payload, status, created_at, updated_at) "
    "VALUES ('01JABCDEFGHJKMNPQRSTVWXYZ0', 'kept', '{}', 'pending', "
    "'2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')"
)
_SQL_DIALECT = {"sqlite": "sqlite", "libsql": "sqlite", "postgres": "postgresql", "mysql": "mysql"}


def initial_script(backend: str) -> list[str]:
    """Revision 0001 as the SQL statements alembic runs on `backend`, in order, without
    the final INSERT of the version row (and without PostgreSQL's BEGIN/COMMIT)."""
    config = alembic_config()
    buffer = io.StringIO()
    config.output_buffer = buffer
    config.set_main_option("dialect_name", _SQL_DIALECT[backend])
    command.upgrade(config, "0001", sql=True)
    statements = [s for s in split_sql(buffer.getvalue()) if s not in ("BEGIN", "COMMIT")]
    assert statements[-1].startswith(f"INSERT INTO {VERSION_TABLE}"), statements[-1]
    return statements[:-1]


def pick(script: list[str], *starts: str) -> list[str]:
    """The statements of `script` that begin with one of `starts`, in script order."""
    return [s for s in script if s.startswith(starts)]


CRASH_POINTS = range(1, len(initial_script("sqlite")) + 1)
HAND_MADE: dict[str, Callable[[list[str]], list[str]]] = {
    "only-runs": lambda s: pick(s, "CREATE TABLE durably_runs"),
    "runs-and-steps-without-indexes": lambda s: pick(
        s, "CREATE TABLE durably_runs", "CREATE TABLE durably_steps"
    ),
    "all-tables-and-indexes-no-version-table": lambda s: s[1:],
    "runs-of-another-shape": lambda s: ["CREATE TABLE durably_runs (id VARCHAR(26) PRIMARY KEY)"],
}


def run_ids(url: str) -> list[str]:
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.exec_driver_sql("SELECT id FROM durably_runs").scalars())
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    with create_durably(url) as d:
        d.migrate()


_head_schemas: dict[str, dict[str, Any]] = {}
_servers_left_bare: set[str] = set()


@pytest.fixture(scope="module", autouse=True)
def _servers_migrated_after_this_module() -> Iterator[None]:
    """Leave the servers' databases migrated, as the rest of the session expects them."""
    yield
    for backend in _servers_left_bare:
        drop_schema(SERVER_URLS[backend])
        migrate(SERVER_URLS[backend])


@pytest.fixture
def bare_url(backend: str, tmp_path: Path) -> str:
    """This test's database without durably's schema: a fresh file, or a server's emptied."""
    if backend not in SERVER_URLS:
        return file_url(backend, tmp_path / "durably.db")
    prepare_server(backend)
    _servers_left_bare.add(backend)
    drop_schema(SERVER_URLS[backend])
    return SERVER_URLS[backend]


@pytest.fixture
def head_schema(backend: str, bare_url: str, tmp_path: Path) -> dict[str, Any]:
    """What a fresh migrate() makes on this backend (leaves `bare_url` bare)."""
    if backend not in _head_schemas:
        url = bare_url if backend in SERVER_URLS else file_url(backend, tmp_path / "head.db")
        migrate(url)
        _head_schemas[backend] = schema_of(url)
        drop_schema(url)
    return _head_schemas[backend]


@pytest.mark.parametrize("statements_run", CRASH_POINTS)
def test_migrate_finishes_a_first_migration_killed_after_any_of_its_statements(
    backend: str, bare_url: str, head_schema: dict[str, Any], statements_run: int
) -> None:
    execute_all(bare_url, initial_script(backend)[:statements_run])
    migrate(bare_url)
    assert schema_of(bare_url) == head_schema


@pytest.mark.parametrize("state", list(HAND_MADE))
def test_migrate_rebuilds_a_partial_schema_without_a_version_table_when_it_holds_no_rows(
    backend: str, bare_url: str, head_schema: dict[str, Any], state: str
) -> None:
    execute_all(bare_url, HAND_MADE[state](initial_script(backend)))
    assert VERSION_TABLE not in schema_of(bare_url)
    migrate(bare_url)
    assert schema_of(bare_url) == head_schema


def test_complete_schema_without_a_version_row_is_stamped_and_keeps_its_rows(
    backend: str, bare_url: str, head_schema: dict[str, Any]
) -> None:
    execute_all(bare_url, [*initial_script(backend), RUN_ROW])
    migrate(bare_url)
    assert schema_of(bare_url) == head_schema
    assert run_ids(bare_url) == ["01JABCDEFGHJKMNPQRSTVWXYZ0"]


def test_partial_schema_holding_rows_raises_migration_error_and_drops_nothing(
    backend: str, bare_url: str
) -> None:
    script = initial_script(backend)
    # the version table and durably_runs without one of its indexes, holding a run
    execute_all(bare_url, [*script[:5], RUN_ROW])
    before = schema_of(bare_url)

    with pytest.raises(MigrationError) as info:
        migrate(bare_url)
    message = str(info.value)
    for expected in ("durably_runs", "1 row", "durably_steps", "ix_durably_runs_concurrency"):
        assert expected in message, message
    assert schema_of(bare_url) == before
    assert run_ids(bare_url) == ["01JABCDEFGHJKMNPQRSTVWXYZ0"]


def test_four_processes_finishing_a_partial_schema_at_once_all_succeed(
    backend: str, bare_url: str, head_schema: dict[str, Any], tmp_path: Path
) -> None:
    execute_all(bare_url, initial_script(backend)[:3])
    migrate_in_processes_at_once(bare_url, tmp_path / "barrier", count=4)
    assert schema_of(bare_url) == head_schema


# -- upgrading a populated database from every earlier revision ------------------------
#
# A database that lived at 0001 holds runs, steps and logs whose keys MySQL/MariaDB
# compared ignoring case, accents and trailing spaces (0002 makes them compare byte for
# byte); one that lived at 0001 or 0002 holds each run's payload in durably_runs (0003
# moves them to durably_payloads). The upgrade keeps every row, and from then on
# "order-1" is not "Order-1" there either.

VERSION_0001_ROW = f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('0001')"
EARLIER_REVISIONS = ("0001", "0002")


def at_revision(backend: str, url: str, revision: str) -> None:
    """Make `url` a database that `revision` migrated, as a durably of that time left it."""
    execute_all(url, [*initial_script(backend), VERSION_0001_ROW])
    if revision != "0001":
        alembic_on(url, command.upgrade, revision)


def alembic_on(url: str, run: Callable[..., None], revision: str) -> None:
    """Run alembic's `command.upgrade` or `command.downgrade` to `revision` on `url`."""
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            run(alembic_config(conn), revision)
            conn.commit()
    finally:
        engine.dispose()


@define_job(name="order")
def order_job(step: StepContext, payload: Any) -> Any:
    fetched = step.run("Fetch", lambda: payload)
    step.log.info("fetched", {"payload": fetched})
    if payload.get("fail"):
        step.run("Save", lambda: 1 / 0)
    return step.run("save", lambda: {"saved": fetched})


def populate(url: str) -> list[Any]:
    """Runs with keys (completed, failed, pending), their steps and logs, through durably
    itself on a migrated database; returns what it reads back."""
    with create_durably(url) as d:
        d.use(with_log_persistence())
        handle = d.register({"order": order_job})["order"]
        handle.trigger({"n": 1}, idempotency_key="Order-1", concurrency_key="K")
        handle.trigger({"n": 2, "fail": True}, idempotency_key="Order-2")
        assert d.process_until_idle() == 2
        handle.trigger({"n": 3}, idempotency_key="Order-3", concurrency_key="K")
        return everything(d)


def everything(d: Durably) -> list[Any]:
    return [(run, d.get_steps(run.id), d.get_logs(run.id)) for run in d.get_runs()]


def populated_at(backend: str, url: str, revision: str) -> list[Any]:
    """Make `url` a database at `revision` holding what `populate` writes, each row as
    that revision stored it (the payloads in durably_runs); returns what durably read.

    The rows are written by durably at head, then copied into the older tables: the
    durably of that time wrote the same values, only the payload's place differs.
    """
    drop_schema(url)
    migrate(url)
    before = populate(url)
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            query = sa.select(*schema.runs.c, schema.payloads.c.payload).join(
                schema.payloads, schema.payloads.c.run_id == schema.runs.c.id
            )
            tables = {
                "durably_runs": (query, list(query.selected_columns.keys())),
                "durably_steps": (sa.select(schema.steps), list(schema.steps.c.keys())),
                "durably_logs": (sa.select(schema.logs), list(schema.logs.c.keys())),
            }
            rows = {
                table: (columns, [dict(row._mapping) for row in conn.execute(select)])
                for table, (select, columns) in tables.items()
            }
    finally:
        engine.dispose()
    assert len(rows["durably_runs"][1]) == len(before) == 3
    drop_schema(url)
    at_revision(backend, url, revision)
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            for table, (columns, values) in rows.items():
                conn.execute(sa.table(table, *map(sa.column, columns)).insert(), values)
    finally:
        engine.dispose()
    return before


def upgrade_populated(
    backend: str,
    url: str,
    head_schema: dict[str, Any],
    *,
    start: str,
    interrupt: Callable[[str], None] | None = None,
) -> None:
    """Populate `url` at revision `start`, let `interrupt` leave what a killed upgrade
    leaves, then migrate: every row is kept and ids, names and keys compare byte for byte."""
    before = populated_at(backend, url, start)
    completed, failed, pending = (run for run, _, _ in reversed(before))
    assert [r.status for r in (completed, failed, pending)] == ["completed", "failed", "pending"]
    assert failed.failed_step_name == "Save"
    assert schema_of(url)["version rows"] == [(start,)]
    if interrupt is not None:
        interrupt(url)

    migrate(url)
    assert schema_of(url) == head_schema
    with create_durably(url) as d:
        assert everything(d) == before
        assert [run.payload for run, _, _ in reversed(before)] == [
            {"n": 1},
            {"n": 2, "fail": True},
            {"n": 3},
        ]
        handle = d.register({"order": order_job})["order"]
        assert handle.trigger({"n": 0}, idempotency_key="Order-1").id == completed.id
        lookalikes = ["order-1", "ORDER-1", "Order-1 ", "Ordér-1"]
        new = [handle.trigger({"n": 0}, idempotency_key=key) for key in lookalikes]
        assert len({run.id for run in new} | {completed.id}) == 5
        assert d.get_run(completed.id.lower()) is None
        assert d.get_steps(completed.id.lower()) == []
        assert d.get_runs(job_name="ORDER") == []
        handle.trigger({"n": 4}, concurrency_key="k")
        # the run left pending before the upgrade (its payload read by the claim) and
        # every new one
        assert d.process_until_idle() == 6
        resumed = d.get_run(pending.id)
        assert resumed is not None and resumed.status == "completed"
        assert resumed.output == {"saved": {"n": 3}}


@pytest.mark.parametrize("start", EARLIER_REVISIONS)
def test_database_populated_at_an_earlier_revision_upgrades_keeping_its_rows(
    backend: str, bare_url: str, head_schema: dict[str, Any], start: str
) -> None:
    upgrade_populated(backend, bare_url, head_schema, start=start)


@pytest.mark.backends("mysql")
@pytest.mark.parametrize("converted", [1, 2, 3])
def test_upgrade_to_0002_killed_after_converting_some_tables_finishes_keeping_the_rows(
    backend: str, bare_url: str, head_schema: dict[str, Any], converted: int
) -> None:
    # MySQL commits each ALTER TABLE on its own: the version table still says 0001
    upgrade_populated(
        backend,
        bare_url,
        head_schema,
        start="0001",
        interrupt=lambda url: execute_all(url, revision_0002_statements(url)[:converted]),
    )


def revision_0002_statements(url: str) -> list[str]:
    """The ALTER TABLE statements revision 0002 runs on this MySQL/MariaDB server."""
    module = ScriptDirectory.from_config(alembic_config()).get_revision("0002").module
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            available = set(
                conn.exec_driver_sql(
                    "SELECT COLLATION_NAME FROM information_schema.COLLATIONS"
                ).scalars()
            )
    finally:
        engine.dispose()
    collation = next(name for name in module.NO_PAD_BINARY if name in available)
    return [
        f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}"
        for table in module.TABLES
    ]


class Killed(Exception):
    """Raised in place of the statement a kill interrupted."""


# the writes of the upgrade from 0002: CREATE TABLE durably_payloads, the INSERT that
# copies the payloads, ALTER TABLE durably_runs DROP COLUMN payload, the version's UPDATE
WRITES_OF_0003 = 4


def killed_upgrade(url: str, writes: int) -> None:
    """Upgrade `url` as migrate() does, killed after its first `writes` write statements.

    What a kill leaves: on MySQL/MariaDB each DDL statement commits what came before it
    and then itself (it is atomic), so a kill in it keeps what came before; whatever was
    not committed is rolled back, as the server does when the connection dies.
    """
    engine = sa.create_engine(url)
    done = 0

    def before_execute(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        nonlocal done
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb not in ("CREATE", "INSERT", "ALTER", "UPDATE", "DROP"):
            return
        if done == writes:
            if conn.dialect.name in ("mysql", "mariadb") and verb in ("CREATE", "ALTER", "DROP"):
                cursor.execute("COMMIT")
            raise Killed(statement)
        done += 1

    sa.event.listen(engine, "before_cursor_execute", before_execute)
    try:
        with engine.connect() as conn, pytest.raises(MigrationError) as info:
            AlembicMigrator().upgrade(conn)
        assert isinstance(info.value.__cause__, Killed), info.value
    finally:
        engine.dispose()


@pytest.mark.backends("mysql", "postgres")
@pytest.mark.parametrize("writes", range(WRITES_OF_0003))
def test_upgrade_to_0003_killed_after_any_of_its_writes_finishes_keeping_the_rows(
    backend: str, bare_url: str, head_schema: dict[str, Any], writes: int
) -> None:
    # on MySQL the kills leave: nothing; an empty durably_payloads; durably_payloads
    # filled and the payload column still there; the column dropped (each with the
    # version table at 0002). PostgreSQL rolls every one of them back to 0002.
    upgrade_populated(
        backend,
        bare_url,
        head_schema,
        start="0002",
        interrupt=lambda url: killed_upgrade(url, writes),
    )


def test_downgrade_from_0002_gives_back_the_schema_of_0001(backend: str, bare_url: str) -> None:
    at_revision(backend, bare_url, "0001")
    at_0001 = schema_of(bare_url)
    alembic_on(bare_url, command.upgrade, "0002")
    alembic_on(bare_url, command.downgrade, "0001")
    assert schema_of(bare_url) == at_0001


def test_downgrade_from_0003_puts_the_payloads_back_into_durably_runs(
    backend: str, bare_url: str
) -> None:
    at_revision(backend, bare_url, "0002")
    at_0002 = schema_of(bare_url)
    drop_schema(bare_url)
    migrate(bare_url)
    before = populate(bare_url)

    alembic_on(bare_url, command.downgrade, "0002")
    # the column comes back last but on SQLite, whose table is copied anew
    assert in_any_order(schema_of(bare_url)) == in_any_order(at_0002)
    engine = sa.create_engine(sqlalchemy_url(bare_url))
    try:
        with engine.connect() as conn:
            stored = dict(conn.exec_driver_sql("SELECT id, payload FROM durably_runs").all())
    finally:
        engine.dispose()
    assert {run_id: json.loads(text) for run_id, text in stored.items()} == {
        run.id: run.payload for run, _, _ in before
    }
    migrate(bare_url)
    with create_durably(bare_url) as d:
        assert everything(d) == before


def in_any_order(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each table's columns sorted by name."""
    return {
        table: {**value, "columns": sorted(value["columns"])} if isinstance(value, dict) else value
        for table, value in schema.items()
    }
