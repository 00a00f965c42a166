"""durably's alembic environment: run by `durably._migrate`, on the connection it passes."""

from __future__ import annotations

from alembic import context

from durably._migrate import VERSION_TABLE
from durably._schema import TABLE_NAMES, metadata

config = context.config


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # durably may share a database with the application's own tables
    if type_ == "table":
        return name in TABLE_NAMES
    return True


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "durably's migrations run through durably.migrate(), which passes a connection"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=_include_name,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        dialect_name=config.get_main_option("dialect_name") or None,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        include_name=_include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
