"""durably's alembic revisions on a libSQL database, which has no SQLAlchemy engine.

alembic renders the upgrade from the database's current revision to head as SQL for
SQLite (offline mode, the same revisions as every other backend); the statements then
run through the driver in ONE transaction together with the version table's update, so
the schema and `durably_alembic_version` never disagree. Concurrent `migrate()` calls
are safe: the loser's transaction fails (its `CREATE TABLE` finds the table, or its
version guard finds another revision), and it reads the version again.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from typing import Any

from alembic import command
from alembic.script import ScriptDirectory

from durably import MigrationError
from durably.migrate import VERSION_TABLE, alembic_config

from ._common import LibsqlDatabaseError

# alembic's offline mode runs through module-level proxies: one rendering at a time
_render_lock = threading.Lock()

# SQLite has no RAISE outside triggers; abs() of the smallest integer fails with
# "integer overflow", which aborts the transaction when the version is not the expected one
_GUARD = (
    "SELECT abs(-9223372036854775808) WHERE NOT EXISTS "
    f"(SELECT 1 FROM {VERSION_TABLE} WHERE version_num = ?)"
)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("durably's alembic scripts have no head revision")
    return head


def upgrade_statements(current: str | None) -> list[str]:
    """The SQL statements that take the database from `current` (None: empty) to head."""
    config = alembic_config()
    buffer = io.StringIO()
    config.output_buffer = buffer
    config.set_main_option("dialect_name", "sqlite")
    with _render_lock:
        command.upgrade(config, "head" if current is None else f"{current}:head", sql=True)
    return split_sql(buffer.getvalue())


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


def current_revision(dialect: Any) -> str | None:
    """The revision recorded in the version table, or None when there is none yet."""
    with dialect.read() as conn:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
        ).fetchone()
        if exists is None:
            return None
        rows = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}", ()).fetchall()
    if len(rows) > 1:
        raise MigrationError(f"{VERSION_TABLE} holds several revisions: {rows!r}")
    return str(rows[0][0]) if rows else None


def migrate(dialect: Any, attempts: int = 10) -> None:
    """Upgrade durably's tables to head through `dialect`'s own transactions."""
    head = head_revision()
    for _ in range(attempts):
        current = current_revision(dialect)
        if current == head:
            return
        statements = upgrade_statements(current)
        try:
            with dialect.transaction() as conn:
                if current is not None:
                    conn.execute(_GUARD, (current,))
                for sql in statements:
                    conn.execute(sql, ())
            return
        except LibsqlDatabaseError as exc:
            if current_revision(dialect) == current:
                raise MigrationError(
                    f"migrating durably's tables from {current or 'an empty database'} "
                    f"to {head} failed: {exc}"
                ) from exc
            # another process migrated in between: start again from its revision
    raise MigrationError(f"durably's tables did not reach {head} after {attempts} attempts")
