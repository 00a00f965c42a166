"""Which databases the suite runs on, and how a test gets a clean one.

Shared by `conftest.py` (the `backend`/`backend_url` fixtures) and tests that need more
than a clean database, such as the crash tests that drop durably's schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from durably import create_durably
from durably._migrate import VERSION_TABLE
from durably._schema import TABLE_NAMES

SERVER_URLS = {
    "postgres": os.environ.get(
        "DURABLY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("DURABLY_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
ALL_BACKENDS = ("sqlite", "postgres", "mysql", "libsql")
DURABLY_TABLES = ("durably_logs", "durably_steps", "durably_payloads", "durably_runs")


def selected_backends() -> list[str]:
    """The backends of `DURABLY_TEST_BACKENDS` (default: all of them)."""
    raw = os.environ.get("DURABLY_TEST_BACKENDS", ",".join(ALL_BACKENDS))
    names = [b.strip() for b in raw.split(",") if b.strip()]
    unknown = set(names) - set(ALL_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"unknown DURABLY_TEST_BACKENDS {sorted(unknown)}")
    return names


def file_url(backend: str, path: Path) -> str:
    """The URL of the SQLite file `path` through the `sqlite` or the `libsql` backend."""
    return f"sqlite:///{path}" if backend == "sqlite" else f"libsql+file:{path}"


def unusable(problem: str) -> None:
    """Fail under CI=true, where every backend must be there; skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem} (CI=true: a missing server is a failure)")
    pytest.skip(problem)


_server_state: dict[str, str | None] = {}


def prepare_server(name: str) -> None:
    """Reach the server once per session and migrate it; fail (CI) or skip if it is down."""
    if name not in _server_state:
        url = SERVER_URLS[name]
        try:
            with create_durably(url) as d:
                d.migrate()
            _server_state[name] = None
        except Exception as exc:  # unreachable server, missing driver, ...
            _server_state[name] = f"{name} at {url} is not usable: {exc}"
    problem = _server_state[name]
    if problem is not None:
        unusable(problem)


def sqlalchemy_url(url: str) -> str:
    """`url` as SQLAlchemy opens it: a `libsql+file:` database is a SQLite file."""
    if url.startswith("libsql+file:"):
        return "sqlite:///" + url.removeprefix("libsql+file:").split("?", 1)[0]
    return url


def execute_all(url: str, statements: list[str]) -> None:
    """Run `statements` in one transaction through SQLAlchemy (libSQL files as SQLite)."""
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def empty_tables(url: str) -> None:
    """Delete every row of durably's tables (the schema stays)."""
    execute_all(url, [f"DELETE FROM {table}" for table in DURABLY_TABLES])


def drop_schema(url: str) -> None:
    """Drop durably's tables and its alembic version table: a database never migrated."""
    execute_all(url, [f"DROP TABLE IF EXISTS {t}" for t in (*DURABLY_TABLES, VERSION_TABLE)])


def schema_of(url: str) -> dict[str, Any]:
    """durably's tables (columns, keys, indexes) and version rows, as the inspector sees them."""
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        inspector = sa.inspect(engine)
        schema: dict[str, Any] = {}
        for table in sorted(TABLE_NAMES | {VERSION_TABLE}):
            if not inspector.has_table(table):
                continue
            schema[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in inspector.get_columns(table)
                ],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in inspector.get_indexes(table)
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"]))
                    for u in inspector.get_unique_constraints(table)
                ),
            }
        if VERSION_TABLE in schema:
            with engine.connect() as conn:
                schema["version rows"] = conn.exec_driver_sql(
                    f"SELECT version_num FROM {VERSION_TABLE}"
                ).all()
        return schema
    finally:
        engine.dispose()
