"""Ids, names and keys compare byte for byte on MySQL/MariaDB, as on the other backends.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

0001 made durably's tables in the server's default collation, which on MySQL/MariaDB
ignores case and accents (`utf8mb4_general_ci`, `utf8mb4_0900_ai_ci`), and on MariaDB
trailing spaces too: idempotency key "order-1" found the run of "Order-1" (the trigger
was dropped), `get_run` found a run by its id in lower case, and concurrency keys "K"
and "k" excluded each other. Here every character column of the three tables, and each
table's default (which a column added by a later revision inherits), gets a NO PAD
binary collation. Not `utf8mb4_bin`: it is PAD SPACE, so 'a' = 'a ' holds there and a
UNIQUE index treats them as one value. PostgreSQL's default collations are
deterministic and SQLite's is BINARY: they already compare byte for byte.

MySQL commits each ALTER TABLE on its own, so a killed upgrade can leave some tables
converted and the version table at 0001: a converted table is skipped when this runs
again. Converting only makes values more distinct, so no UNIQUE constraint can fail.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from durably import MigrationError

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("durably_runs", "durably_steps", "durably_logs")
# utf8mb4's NO PAD binary collations, the first the server has wins: MariaDB's
# (10.2 and later), MySQL's (8.0.17 and later)
NO_PAD_BINARY = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")


def _mysql_bind() -> sa.Connection | None:
    """The connection to convert on: None unless the database is MySQL/MariaDB."""
    if op.get_context().dialect.name not in ("mysql", "mariadb"):
        return None
    if context.is_offline_mode():
        raise MigrationError(
            "revision 0002 asks a MySQL/MariaDB server which collations it has, so it "
            "cannot be rendered as SQL offline; run it through durably's migrate()"
        )
    return op.get_bind()


def _collations(bind: sa.Connection, table: str) -> set[str]:
    """The default collation of `table` and those of its character columns."""
    query = sa.text(
        "SELECT TABLE_COLLATION FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table "
        "UNION SELECT COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table AND COLLATION_NAME IS NOT NULL"
    )
    return set(bind.execute(query, {"table": table}).scalars())


def _convert(bind: sa.Connection, charset: str, collation: str) -> None:
    for table in TABLES:
        if _collations(bind, table) != {collation}:
            op.execute(
                f"ALTER TABLE {table} CONVERT TO CHARACTER SET {charset} COLLATE {collation}"
            )


def upgrade() -> None:
    bind = _mysql_bind()
    if bind is None:
        return
    query = sa.text(
        "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN :names"
    ).bindparams(sa.bindparam("names", expanding=True))
    available = set(bind.execute(query, {"names": list(NO_PAD_BINARY)}).scalars())
    collation = next((name for name in NO_PAD_BINARY if name in available), None)
    if collation is None:
        raise MigrationError(
            f"this MySQL/MariaDB server has none of the collations {', '.join(NO_PAD_BINARY)} "
            "that make durably's ids, names and keys compare byte for byte (MariaDB 10.2 and "
            "later and MySQL 8.0.17 and later have one); upgrade the server, then migrate again"
        )
    _convert(bind, "utf8mb4", collation)


def downgrade() -> None:
    """Back to what 0001 made: the database's default character set and collation.

    Fails on a duplicate key when the tables hold values that only the byte-for-byte
    comparison tells apart (e.g. idempotency keys "a" and "A" of one job).
    """
    bind = _mysql_bind()
    if bind is None:
        return
    charset, collation = bind.execute(
        sa.text(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
            "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()"
        )
    ).one()
    _convert(bind, charset, collation)
