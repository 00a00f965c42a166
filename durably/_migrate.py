"""Running alembic from inside the library: no alembic.ini needed at run time.

A killed `migrate()` must never wedge a database. On SQLite, libSQL and PostgreSQL an
upgrade runs in one transaction with its version-table update, so a kill leaves the
revision before. MySQL/MariaDB commit every CREATE, ALTER and DROP on its own, so a kill
can leave a revision half applied, with `durably_alembic_version` still naming the
revision before it (before 0001: empty, or missing). Hence two rules:

- Revision 0001 is released and never edited; `plan_initial_repair` recognises what of
  it exists when no revision is recorded: complete, it is stamped; partial and empty, it
  is dropped and run again; partial and holding rows, `MigrationError` (never drop data).
- Every later revision must finish when run again from any prefix of its own
  operations: guard each operation by what already exists, and make data changes
  idempotent. Online, inspect the bind; offline (libSQL) the whole upgrade is one
  transaction from the revision before, so nothing is half applied there::

      def upgrade() -> None:
          existing = set()
          if not context.is_offline_mode():
              existing = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("durably_runs")}
          if "ix_durably_runs_new" not in existing:
              op.create_index("ix_durably_runs_new", "durably_runs", ["status"])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from ._errors import MigrationError

VERSION_TABLE = "durably_alembic_version"
INITIAL_REVISION = "0001"


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# What revision 0001 creates (it never changes): each table's columns and indexes. Its
# UNIQUE constraints are part of their CREATE TABLE, so a table that exists has them.
INITIAL_SCHEMA: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "durably_runs": (
        _names(
            "id job_name payload status idempotency_key concurrency_key "
            "active_concurrency_key current_step_index progress output error "
            "failed_step_name lease_generation lease_owner heartbeat_at created_at "
            "updated_at started_at completed_at"
        ),
        _names(
            "ix_durably_runs_claim ix_durably_runs_job_created ix_durably_runs_created "
            "ix_durably_runs_concurrency"
        ),
    ),
    "durably_steps": (
        _names("id run_id name index status output error started_at completed_at"),
        _names("ix_durably_steps_run_index"),
    ),
    "durably_logs": (
        _names("id run_id step_name level message data created_at"),
        _names("ix_durably_logs_run"),
    ),
}

# table -> (its columns, its index names), for those of INITIAL_SCHEMA that exist
Found = Mapping[str, tuple[Set[str], Set[str]]]
InitialRepair = Literal["upgrade", "stamp", "rebuild"]


def plan_initial_repair(found: Found, count_rows: Callable[[str], int]) -> InitialRepair:
    """What to do with a database whose version table records no revision.

    "upgrade": none of 0001's tables exists, run the revisions from the start. "stamp":
    0001 is complete (rows or not), record it. "rebuild": 0001 is partial and its tables
    hold no rows, so drop every table in `found` and run it again. A partial 0001 that
    holds rows raises `MigrationError` saying what exists and what to do.
    """
    if not found:
        return "upgrade"
    gaps = []
    for table, (columns, indexes) in INITIAL_SCHEMA.items():
        if table not in found:
            gaps.append(f"{table} is missing")
            continue
        missing_columns = sorted(columns - found[table][0])
        missing_indexes = sorted(indexes - found[table][1])
        if missing_columns:
            gaps.append(f"{table} lacks columns {', '.join(missing_columns)}")
        if missing_indexes:
            gaps.append(f"{table} lacks indexes {', '.join(missing_indexes)}")
    if not gaps:
        return "stamp"
    rows = {table: count_rows(table) for table in found}
    if not any(rows.values()):
        return "rebuild"
    held = ", ".join(f"{table}: {n} row{'s' if n != 1 else ''}" for table, n in rows.items() if n)
    raise MigrationError(
        f"durably's tables are incomplete ({'; '.join(gaps)}) and {VERSION_TABLE} records "
        f"no revision, as a first migration interrupted on MySQL/MariaDB leaves them, but "
        f"they hold rows ({held}), so durably will not drop them. Save those rows elsewhere "
        f"and drop {', '.join(sorted(found))}, or create what is missing as revision "
        f"{INITIAL_REVISION} does; then run migrate again"
    )


def script_location() -> Path:
    """Where durably's alembic environment lives: inside the wheel, or in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_alembic", here.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationError(
        f"durably's alembic scripts are missing (looked in {here / '_alembic'} and "
        f"{here.parent / 'alembic'}); reinstall durably"
    )


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An alembic Config pointing into the installed package, carrying `connection`."""
    config = Config()
    # '%' is configparser interpolation syntax; escape it in paths
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    config.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class AlembicMigrator:
    """Upgrades durably's tables to head on a SQLAlchemy connection a dialect provides."""

    def upgrade(self, connection: sa.Connection) -> None:
        try:
            repair_initial(connection)
            command.upgrade(alembic_config(connection), "head")
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(f"migrating durably's tables failed: {exc}") from exc

    def head(self) -> str:
        """The newest revision id."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        if head is None:
            raise MigrationError("durably's alembic scripts have no head revision")
        return head


def repair_initial(connection: sa.Connection) -> None:
    """Finish what a killed first migration left, before alembic upgrades (see the module).

    Runs under the dialect's migration lock, so no other `migrate()` changes the schema
    between this inspection and the upgrade.
    """
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    if context.get_current_heads():
        return
    inspector = sa.inspect(connection)
    found = {
        table: (
            {column["name"] for column in inspector.get_columns(table)},
            {index["name"] for index in inspector.get_indexes(table) if index["name"]},
        )
        for table in INITIAL_SCHEMA
        if inspector.has_table(table)
    }

    def count_rows(table: str) -> int:
        query = sa.select(sa.func.count()).select_from(sa.table(table))
        return int(connection.execute(query).scalar_one())

    plan = plan_initial_repair(found, count_rows)
    if plan == "stamp":
        command.stamp(alembic_config(connection), INITIAL_REVISION)
    elif plan == "rebuild":
        for table in found:
            connection.execute(sa.schema.DropTable(sa.Table(table, sa.MetaData())))
