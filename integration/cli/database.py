"""``pacs-vlm db``: the database schema (Alembic migrations)."""

from __future__ import annotations

from typing import Annotated

import typer

from integration.cli import console, fail, load_settings
from integration.config import Settings

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Upgrade the database schema (default: to the newest revision)."""
    from integration.store.migrate import upgrade

    settings = load_settings()
    upgrade(settings.database_url, revision)
    console.print(f"schema upgraded to {revision}")
    if revision == "head":
        _seed(settings)


def _seed(settings: Settings) -> None:
    """Copy the environment's calling AEs, destinations, rules and models into a new database (once per kind)."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.app_config import ConfigRefused
    from integration.config_seed import seed_configuration
    from integration.store.session import session_scope

    try:
        with session_scope(settings.database_url) as session:
            done = seed_configuration(session, settings)
    except (ConfigRefused, SQLAlchemyError) as exc:
        raise fail(f"configuration not seeded from the environment: {exc}", 2) from None
    if done:
        console.print(
            f"configuration seeded from the environment: {', '.join(done)} (see 'pacs-vlm config list')", soft_wrap=True
        )


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision ('base' drops all tables).")]) -> None:
    """Downgrade the database schema to a revision."""
    from integration.store.migrate import downgrade

    settings = load_settings()
    downgrade(settings.database_url, revision)
    console.print(f"schema downgraded to {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and of the code."""
    from integration.store.migrate import current_revision, head_revision

    settings = load_settings()
    typer.echo(f"database: {current_revision(settings.database_url) or 'empty'}  code: {head_revision()}")
