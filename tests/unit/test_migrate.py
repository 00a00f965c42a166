"""migrate(): idempotent, its own version table, schema identical to durably._schema."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from typing import Any

import sqlalchemy as sa
from _api_helpers import sqlite_path
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from durably import Durably, StepContext, create_durably, define_job
from durably._migrate import INITIAL_REVISION, INITIAL_SCHEMA, VERSION_TABLE, alembic_config
from durably._schema import metadata

DURABLY_TABLES = {"durably_runs", "durably_payloads", "durably_steps", "durably_logs"}


@define_job(name="noop")
def noop(step: StepContext, payload: Any) -> str:
    return step.run("one", lambda: "ok")


def _tables(db_url: str) -> set[str]:
    with closing(sqlite3.connect(sqlite_path(db_url))) as raw:
        rows = raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def _rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(sqlite_path(db_url))) as raw:
        return list(raw.execute(sql).fetchall())


def test_migrate_creates_durablys_tables_and_its_own_version_table(db_url: str) -> None:
    with create_durably(db_url) as d:
        d.migrate()
    tables = _tables(db_url)
    assert tables >= DURABLY_TABLES | {"durably_alembic_version"}
    assert "alembic_version" not in tables
    [(version,)] = _rows(db_url, "SELECT version_num FROM durably_alembic_version")
    assert isinstance(version, str) and version


def test_migrate_is_idempotent(durably: Durably, db_url: str) -> None:
    handle = durably.register({"noop": noop})["noop"]
    run = handle.trigger({})
    assert durably.process_one()
    before = _rows(db_url, "SELECT version_num FROM durably_alembic_version")
    durably.migrate()
    durably.migrate()
    with create_durably(db_url) as other:
        other.migrate()
    assert _rows(db_url, "SELECT version_num FROM durably_alembic_version") == before
    # data survives repeated migrations
    assert durably.get_run(run.id).output == "ok"  # type: ignore[union-attr]
    assert len(durably.get_steps(run.id)) == 1


def test_migrate_leaves_an_applications_own_alembic_version_table_untouched(
    db_url: str,
) -> None:
    with closing(sqlite3.connect(sqlite_path(db_url))) as raw:
        raw.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        raw.execute("INSERT INTO alembic_version VALUES ('app_rev_42')")
        raw.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        raw.execute("INSERT INTO users (name) VALUES ('ada')")
        raw.commit()
    with create_durably(db_url) as d:
        d.migrate()
        d.migrate()
    assert _rows(db_url, "SELECT version_num FROM alembic_version") == [("app_rev_42",)]
    assert _rows(db_url, "SELECT id, name FROM users") == [(1, "ada")]
    assert _tables(db_url) >= DURABLY_TABLES | {"durably_alembic_version", "users"}


def test_migrated_schema_matches_durably_schema_metadata(durably: Durably, db_url: str) -> None:
    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or name in DURABLY_TABLES

    # the comparison really sees the tables: a column the database lacks is reported
    altered = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(altered)
    sa.Table("durably_runs", altered, sa.Column("bogus", sa.Integer), extend_existing=True)

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_name": include_name}
            )
            diffs = compare_metadata(context, metadata)
            altered_diffs = compare_metadata(context, altered)
    finally:
        engine.dispose()
    assert diffs == []
    assert set(metadata.tables) == DURABLY_TABLES
    assert [d[0] for d in altered_diffs] == ["add_column"]


def test_initial_schema_is_exactly_what_revision_0001_creates(db_url: str) -> None:
    # migrate() recognises a partial first migration by INITIAL_SCHEMA: it must not drift
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), INITIAL_REVISION)
            inspector = sa.inspect(conn)
            created = {
                table: (
                    {column["name"] for column in inspector.get_columns(table)},
                    {index["name"] for index in inspector.get_indexes(table)},
                )
                for table in inspector.get_table_names()
                if table != VERSION_TABLE
            }
    finally:
        engine.dispose()
    assert created == INITIAL_SCHEMA


def test_concurrent_migrate_calls_on_a_fresh_database_all_succeed(
    make_durably: Callable[..., Durably], db_url: str
) -> None:
    instances = [create_durably(db_url) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(instances), timeout=10)

    def migrate(d: Durably) -> None:
        try:
            start.wait()
            d.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(d,)) for d in instances]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for d in instances:
        d.close()
    assert errors == []
    assert len(_rows(db_url, "SELECT version_num FROM durably_alembic_version")) == 1
    d = make_durably()
    run = d.register({"noop": noop})["noop"].trigger({})
    assert d.process_one()
    assert d.get_run(run.id).status == "completed"  # type: ignore[union-attr]


def test_an_in_memory_database_works_end_to_end() -> None:
    with create_durably("sqlite://", polling_interval=0.05) as d:
        d.migrate()
        handle = d.register({"noop": noop})["noop"]
        d.start()
        result = handle.trigger_and_wait({}, timeout=20)
        assert result.output == "ok"
        assert [s.name for s in d.get_steps(result.id)] == ["one"]
