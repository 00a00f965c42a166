"""durably's tables: runs, steps, logs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Timestamp = sa.String(32)
Key = sa.String(255)


def upgrade() -> None:
    op.create_table(
        "durably_runs",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("job_name", Key, nullable=False),
        sa.Column("payload", LongText, nullable=False),
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
    )
    op.create_index("ix_durably_runs_claim", "durably_runs", ["status", "created_at", "id"])
    op.create_index("ix_durably_runs_job_created", "durably_runs", ["job_name", "created_at", "id"])
    op.create_index("ix_durably_runs_created", "durably_runs", ["created_at", "id"])
    op.create_index(
        "ix_durably_runs_concurrency", "durably_runs", ["concurrency_key", "status", "created_at"]
    )

    op.create_table(
        "durably_steps",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("name", Key, nullable=False),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", LongText, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("completed_at", Timestamp, nullable=True),
    )
    op.create_index("ix_durably_steps_run_index", "durably_steps", ["run_id", "index"])

    op.create_table(
        "durably_logs",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("step_name", Key, nullable=True),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", LongText, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_durably_logs_run", "durably_logs", ["run_id", "id"])


def downgrade() -> None:
    op.drop_table("durably_logs")
    op.drop_table("durably_steps")
    op.drop_table("durably_runs")
