"""A run's payload lives in durably_payloads, apart from the columns a running run updates.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09

SQLite rewrites a whole row, its overflow pages included, whenever an UPDATE changes the
size of the record. durably_runs held the payload next to the columns every claim,
heartbeat, progress update and step rewrites (status, lease, heartbeat_at, progress,
current_step_index, updated_at), so each progress message of a new length wrote the
payload again: 20 progress updates of a run with a 20 MB payload wrote 360 MB. Here the
payloads move to durably_payloads(run_id, payload), written once with the run, and the
column is dropped. Every backend gets the same schema, so the store has one code path.

MySQL commits each CREATE TABLE and ALTER TABLE on its own, so a killed upgrade can leave
the new table (empty, or filled) next to the old column, or the column dropped, with the
version table at 0002. Each step is guarded by what exists, so running this again
finishes it: the table is created if missing, the payloads of runs that have none there
yet are copied (while the column exists), then the column is dropped. The new table is
created in the collation of durably_runs (0002's NO PAD binary one), which its columns
inherit, so its ids compare byte for byte like the others.

On SQLite the column goes by batch mode (durably_runs is copied to a new table, then
renamed), from the table as 0001 made it rather than by reflection: alembic renders the
same statements offline for libSQL, and SQLite before 3.35 has no DROP COLUMN.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

from durably import MigrationError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Timestamp = sa.String(32)
Key = sa.String(255)

PAYLOADS = "durably_payloads"

COPY_PAYLOADS = (
    f"INSERT INTO {PAYLOADS} (run_id, payload) "
    "SELECT id, payload FROM durably_runs WHERE NOT EXISTS "
    f"(SELECT 1 FROM {PAYLOADS} WHERE {PAYLOADS}.run_id = durably_runs.id)"
)
# a run without a payload row (none is ever written so) reads as a null payload
RESTORE_PAYLOADS = (
    "UPDATE durably_runs SET payload = COALESCE("
    f"(SELECT payload FROM {PAYLOADS} WHERE {PAYLOADS}.run_id = durably_runs.id), 'null') "
    "WHERE payload IS NULL"
)


def runs_with_payload(*, nullable: bool = False) -> sa.Table:
    """durably_runs as 0001 made it (0002 changed only collations): what batch mode copies."""
    return sa.Table(
        "durably_runs",
        sa.MetaData(),
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("job_name", Key, nullable=False),
        sa.Column("payload", LongText, nullable=nullable),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("idempotency_key", Key, nullable=True),
        sa.Column("concurrency_key", Key, nullable=True),
        sa.Column("active_concurrency_key", Key, nullable=True),
        sa.Column("current_step_index", sa.Integer, nullable=False, server_default="0"),
        sa.Column("progress", sa.Text, nullable=True),
        sa.Column("output", LongText, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("failed_step_name", Key, nullable=True),
        sa.Column("lease_generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", Timestamp, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("completed_at", Timestamp, nullable=True),
        sa.UniqueConstraint("job_name", "idempotency_key", name="uq_durably_runs_idempotency"),
        sa.UniqueConstraint("active_concurrency_key", name="uq_durably_runs_active_concurrency"),
        sa.Index("ix_durably_runs_claim", "status", "created_at", "id"),
        sa.Index("ix_durably_runs_job_created", "job_name", "created_at", "id"),
        sa.Index("ix_durably_runs_created", "created_at", "id"),
        sa.Index("ix_durably_runs_concurrency", "concurrency_key", "status", "created_at"),
    )


def _bind() -> sa.Connection | None:
    """The connection to inspect: None offline, where nothing is half applied (libSQL
    renders the whole upgrade from 0002 and runs it in one transaction)."""
    is_mysql = op.get_context().dialect.name in ("mysql", "mariadb")
    if not context.is_offline_mode():
        return op.get_bind()
    if is_mysql:
        raise MigrationError(
            "revision 0003 asks a MySQL/MariaDB server for the collation of durably_runs, "
            "so it cannot be rendered as SQL offline; run it through durably's migrate()"
        )
    return None


def _has_payload_column(bind: sa.Connection | None, *, offline: bool) -> bool:
    """Whether durably_runs still has its payload column (offline: what the caller knows)."""
    if bind is None:
        return offline
    return "payload" in {c["name"] for c in sa.inspect(bind).get_columns("durably_runs")}


def _table_options(bind: sa.Connection | None) -> dict[str, str]:
    """On MySQL/MariaDB: the character set and collation of durably_runs, as the new
    table's default (CREATE TABLE would otherwise take the database's)."""
    if bind is None or bind.dialect.name not in ("mysql", "mariadb"):
        return {}
    charset, collation = bind.execute(
        sa.text(
            "SELECT c.CHARACTER_SET_NAME, t.TABLE_COLLATION FROM information_schema.TABLES t "
            "JOIN information_schema.COLLATIONS c ON c.COLLATION_NAME = t.TABLE_COLLATION "
            "WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME = 'durably_runs'"
        )
    ).one()
    return {"mysql_charset": charset, "mysql_collate": collation}


def upgrade() -> None:
    bind = _bind()
    if bind is None or not sa.inspect(bind).has_table(PAYLOADS):
        op.create_table(
            PAYLOADS,
            sa.Column("run_id", sa.String(26), primary_key=True),
            sa.Column("payload", LongText, nullable=False),
            **_table_options(bind),
        )
    if _has_payload_column(bind, offline=True):
        op.execute(COPY_PAYLOADS)
        with op.batch_alter_table("durably_runs", copy_from=runs_with_payload()) as batch:
            batch.drop_column("payload")


def downgrade() -> None:
    """Payloads back into durably_runs (as its last column outside SQLite)."""
    bind = _bind()
    if not _has_payload_column(bind, offline=False):
        op.add_column("durably_runs", sa.Column("payload", LongText, nullable=True))
    op.execute(RESTORE_PAYLOADS)
    with op.batch_alter_table("durably_runs", copy_from=runs_with_payload(nullable=True)) as batch:
        batch.alter_column("payload", existing_type=LongText, nullable=False)
    if bind is None or sa.inspect(bind).has_table(PAYLOADS):
        op.drop_table(PAYLOADS)
