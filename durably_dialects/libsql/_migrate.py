"""durably's alembic revisions on a libSQL database, which has no SQLAlchemy engine.

alembic renders the upgrade from the database's current revision to head as SQL for
SQLite (offline mode, the same revisions as every other backend); the statements then
run through the driver in ONE transaction together with the version table's update, so
the schema and `durably_alembic_version` never disagree. A schema that does not match
its version row (made by hand, or by a first migration killed on another backend) is
repaired as `durably._migrate.plan_initial_repair` decides, in that same transaction.

Concurrent `migrate()` calls are safe without a lock (a batch transport cannot hold one):
the loser's transaction fails (its `CREATE TABLE` finds the table, or a guard finds a
version row, or rows in a table it meant to drop), and it reads the database again.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alembic import command
from alembic.script import ScriptDirectory

from durably import MigrationError
from durably._migrate import (
    INITIAL_REVISION,
    INITIAL_SCHEMA,
    VERSION_TABLE,
    Found,
    alembic_config,
    plan_initial_repair,
)

from ._common import LibsqlDatabaseError

# alembic's offline mode runs through module-level proxies: one rendering at a time
_render_lock = threading.Lock()

# SQLite has no RAISE outside triggers; abs() of the smallest integer fails with
# "integer overflow", which aborts the transaction when the condition holds
_FAIL_IF = "SELECT abs(-9223372036854775808) WHERE "
_GUARD = _FAIL_IF + f"NOT EXISTS (SELECT 1 FROM {VERSION_TABLE} WHERE version_num = ?)"


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("durably's alembic scripts have no head revision")
    return head


def _render(run: Callable[..., None], revision: str) -> list[str]:
    """The SQL statements of an alembic command (`upgrade`, `stamp`) rendered for SQLite."""
    config = alembic_config()
    buffer = io.StringIO()
    config.output_buffer = buffer
    config.set_main_option("dialect_name", "sqlite")
    with _render_lock:
        run(config, revision, sql=True)
    return split_sql(buffer.getvalue())


def upgrade_statements(current: str | None) -> list[str]:
    """The SQL statements that take the database from `current` (None: empty) to head."""
    return _render(command.upgrade, "head" if current is None else f"{current}:head")


def split_sql(script: str) -> list[str]:
    """Split a SQL script into statements (semicolons inside literals stay put)."""
    statements: list[str] = []
    pending: list[str] = []
    for line in script.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("--")):
            continue
        pending.append(line)
        text = "\n".join(pending)
        if sqlite3.complete_statement(text):
            statements.append(text.strip().rstrip(";").rstrip())
            pending = []
    if pending:
        raise MigrationError(f"alembic rendered an incomplete statement: {pending!r}")
    return statements


@dataclass(frozen=True)
class _State:
    """What `migrate` found: the version table, its revision, and 0001's tables."""

    version_table: bool
    current: str | None
    found: Found


def _read_state(dialect: Any) -> _State:
    with dialect.read() as conn:

        def names(sql: str, *params: str) -> frozenset[str]:
            return frozenset(str(row[0]) for row in conn.execute(sql, params).fetchall())

        tables = names("SELECT name FROM sqlite_master WHERE type = 'table'")
        rows = []
        if VERSION_TABLE in tables:
            rows = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}", ()).fetchall()
        if len(rows) > 1:
            raise MigrationError(f"{VERSION_TABLE} holds several revisions: {rows!r}")
        found = {
            table: (
                names("SELECT name FROM pragma_table_info(?)", table),
                names(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", table
                ),
            )
            for table in INITIAL_SCHEMA
            if table in tables and not rows
        }
    return _State(VERSION_TABLE in tables, str(rows[0][0]) if rows else None, found)


def _count_rows(dialect: Any, table: str) -> int:
    with dialect.read() as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}", ()).fetchall()[0][0])


def _statements(dialect: Any, state: _State) -> list[tuple[str, tuple[str, ...]]]:
    """The guarded statements that take the database from `state` to head, in one transaction.

    Without a version row, alembic's script starts by creating the version table, so an
    empty one is dropped first; so are the tables of a partial 0001 that is rebuilt. Each
    drop is guarded by the emptiness it was planned on.
    """
    if state.current is not None:
        return [(_GUARD, (state.current,)), *((s, ()) for s in upgrade_statements(state.current))]
    plan = plan_initial_repair(state.found, lambda table: _count_rows(dialect, table))
    drops = [VERSION_TABLE] if state.version_table else []
    if plan == "rebuild":
        drops += list(state.found)
    statements: list[tuple[str, tuple[str, ...]]] = []
    for table in drops:
        statements.append((_FAIL_IF + f"EXISTS (SELECT 1 FROM {table})", ()))
        statements.append((f"DROP TABLE {table}", ()))
    if plan == "stamp":
        script = _render(command.stamp, INITIAL_REVISION) + upgrade_statements(INITIAL_REVISION)
    else:
        script = upgrade_statements(None)
    return statements + [(s, ()) for s in script]


def migrate(dialect: Any, attempts: int = 10) -> None:
    """Upgrade durably's tables to head through `dialect`'s own transactions."""
    head = head_revision()
    for _ in range(attempts):
        state = _read_state(dialect)
        if state.current == head:
            return
        statements = _statements(dialect, state)
        try:
            with dialect.transaction() as conn:
                for sql, params in statements:
                    conn.execute(sql, params)
            return
        except LibsqlDatabaseError as exc:
            if _read_state(dialect) == state:
                raise MigrationError(
                    f"migrating durably's tables from {state.current or 'an empty database'} "
                    f"to {head} failed: {exc}"
                ) from exc
            # another process migrated in between: start again from what it left
    raise MigrationError(f"durably's tables did not reach {head} after {attempts} attempts")
