"""The tables of durably: the one source for the store's statements and for alembic.

Timestamps are fixed-width ISO-8601 UTC strings (see `clock.to_db`), so they sort and
compare correctly as text on every backend. JSON values are stored as text that the
store encodes itself: no driver-specific JSON or datetime handling is involved.
Strings compare byte for byte on every backend: on MySQL/MariaDB revision 0002 gives the
tables a NO PAD binary collation, chosen from what the server has (0003 creates its table
in the collation of durably_runs); the metadata does not name it, because no table is
created from it and its queries need not know.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

# MySQL's TEXT holds 64 KiB; step outputs and payloads may be larger.
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Timestamp = sa.String(32)
Key = sa.String(255)

runs = sa.Table(
    "durably_runs",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("job_name", Key, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("idempotency_key", Key, nullable=True),
    sa.Column("concurrency_key", Key, nullable=True),
    # equals concurrency_key only while the run is running: a plain UNIQUE constraint
    # then forbids two running runs with one key on every backend (NULLs never clash)
    sa.Column("active_concurrency_key", Key, nullable=True),
    sa.Column("current_step_index", sa.Integer, nullable=False, server_default="0"),
    sa.Column("progress", sa.Text, nullable=True),
    sa.Column("output", LongText, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("failed_step_name", Key, nullable=True),
    # fencing token: bumped by every claim, checked by every write the worker makes
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

# A run's payload, apart from the columns a running run updates all the time (status,
# heartbeat, progress, step index): SQLite rewrites a whole row, overflow pages included,
# whenever an UPDATE changes its size, so a payload in the run's row was written again by
# every progress message (revision 0003). Written once with the run, deleted with it.
payloads = sa.Table(
    "durably_payloads",
    metadata,
    sa.Column("run_id", sa.String(26), primary_key=True),
    sa.Column("payload", LongText, nullable=False),
)

steps = sa.Table(
    "durably_steps",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("name", Key, nullable=False),
    sa.Column("index", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("output", LongText, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("completed_at", Timestamp, nullable=True),
    sa.Index("ix_durably_steps_run_index", "run_id", "index"),
)

logs = sa.Table(
    "durably_logs",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("step_name", Key, nullable=True),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", LongText, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_durably_logs_run", "run_id", "id"),
)

TABLE_NAMES: frozenset[str] = frozenset(metadata.tables)
