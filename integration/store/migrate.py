"""Schema migrations through Alembic, callable from the CLI and the tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from integration.store.session import engine_for

#: ``alembic.ini`` and the revisions in ``migrations/`` are package data beside this module, so a plain
#: wheel install (the container image) migrates as well as a source checkout.
ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"


class SchemaOutOfDate(RuntimeError):
    """The database schema is not at the code's head revision."""


def alembic_config(database_url: str) -> Config:
    """Return an Alembic config bound to a database URL.

    Raises
    ------
    FileNotFoundError
        When ``alembic.ini`` is missing (the installation is incomplete).
    """
    if not ALEMBIC_INI.is_file():
        raise FileNotFoundError(f"alembic.ini not found at {ALEMBIC_INI}: the pacs-vlm installation is incomplete")
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``base`` drops every table)."""
    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    """Return the schema revision the database is at (None when unversioned)."""
    with engine_for(database_url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """Return the newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def ensure_schema(database_url: str) -> None:
    """Bring an embedded (SQLite) database to head; require head elsewhere.

    Raises
    ------
    SchemaOutOfDate
        A server database is not at head (run ``pacs-vlm db upgrade``).
    """
    if make_url(database_url).get_backend_name() == "sqlite":
        upgrade(database_url)
        return
    current, head = current_revision(database_url), head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing'}, the code needs {head}: run 'pacs-vlm db upgrade'"
        )
