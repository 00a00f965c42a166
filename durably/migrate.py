"""Running alembic from inside the library: no alembic.ini needed at run time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config

from .errors import MigrationError

if TYPE_CHECKING:
    import sqlalchemy as sa

VERSION_TABLE = "durably_alembic_version"


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
