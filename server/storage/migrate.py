"""Bring a database to the current schema with Alembic (server/storage/migrations/).

- an empty database: every table is created from the table definitions and stamped with
  the newest revision (tests/server/storage/test_migrations.py checks that the migrations build the same
  schema);
- a database created before Alembic (tables, no ``alembic_version``): stamped with the
  first revision, the schema of that time, then upgraded;
- otherwise: upgraded from its revision.

Start-up (``create_schema``) and ``scribbleflow db upgrade`` call ``upgrade_schema``. A new schema change needs a new file in migrations/versions/.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from server.storage import tables  # noqa: F401  (registers the tables on Base)
from server.storage.db import Base

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The revision of a database that was created before migrations existed.
BASELINE_REVISION = "0001"
VERSION_TABLE = "alembic_version"


def alembic_config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_schema(engine: Engine, revision: str = "head") -> str:
    """Migrate the database of ``engine`` to ``revision`` (default: the newest); returns it."""
    with engine.begin() as connection:
        tables = set(inspect(connection).get_table_names())
        config = alembic_config(connection)
        if not tables - {VERSION_TABLE} and revision == "head":
            Base.metadata.create_all(connection)
            command.stamp(config, "head")
        else:
            if VERSION_TABLE not in tables and tables:
                command.stamp(config, BASELINE_REVISION)
            command.upgrade(config, revision)
        return MigrationContext.configure(connection).get_current_revision()


def create_schema(engine: Engine) -> None:
    """Create the schema of an empty database, or migrate an older one to the current
    schema keeping its data. Idempotent."""
    upgrade_schema(engine)
