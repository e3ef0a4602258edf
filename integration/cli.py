"""Commands of the hospital-facing edge: ``listen``, ``db`` and ``studies``.

The root command line (:mod:`worker.cli`) mounts these.
"""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.table import Table

from integration.config import Settings, get_settings

console = Console(stderr=True)

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
studies_app = typer.Typer(help="Studies received and their states.", no_args_is_help=True)


def load_settings() -> Settings:
    """Return validated settings or exit with a readable message (no traceback).

    Returns
    -------
    Settings
        The settings.
    """
    try:
        return get_settings()
    except SettingsError as exc:
        console.print(f"[red]invalid settings:[/red] {exc} (JSON values such as PACSVLM_CALLING_AES must be JSON)")
        raise typer.Exit(2) from None
    except ValidationError as exc:
        console.print("[red]invalid settings:[/red]")
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            console.print(f"  PACSVLM_{field.upper()}: {error['msg']}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error line and return the exit to raise.

    Parameters
    ----------
    message : str
        What went wrong and what to do.
    code : int
        Exit status.

    Returns
    -------
    typer.Exit
        Raise it.
    """
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def listen(
    port: Annotated[int | None, typer.Option(help="TCP port (overrides PACSVLM_LISTEN_PORT).")] = None,
    ae_title: Annotated[str | None, typer.Option(help="Our AE title (overrides PACSVLM_AE_TITLE).")] = None,
    tls_port: Annotated[
        int | None, typer.Option(help="DICOM TLS port beside the plain one (overrides PACSVLM_TLS_PORT).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level of pacs-vlm's own messages.")] = "INFO",
) -> None:
    """Run the DICOM listener (C-ECHO, C-STORE) and study assembly until stopped.

    DICOM TLS is served when PACSVLM_TLS_CERTIFICATE and PACSVLM_TLS_PRIVATE_KEY are set: on the listen
    port only, or on PACSVLM_TLS_PORT beside plain TCP on the listen port.
    """
    from integration.dicom.listener import Listener, ListenerConfigError
    from integration.logs import configure_logging
    from integration.store.migrate import SchemaOutOfDate, ensure_schema

    configure_logging(log_level)
    settings = load_settings()
    overrides = {
        k: v for k, v in {"listen_port": port, "ae_title": ae_title, "tls_port": tls_port}.items() if v is not None
    }
    if overrides:
        try:
            settings = Settings.model_validate({**settings.model_dump(), **overrides})
        except ValidationError as exc:
            raise fail(str(exc.errors()[0]["msg"]), 2) from None
    try:
        ensure_schema(settings.database_url)
        listener = Listener(settings)
        listener.start()
    except (ListenerConfigError, SchemaOutOfDate) as exc:
        raise fail(str(exc), 2) from None
    except OSError as exc:
        ports = ", ".join(str(p) for p in (settings.listen_port, settings.tls_port) if p is not None)
        raise fail(f"cannot listen on {settings.listen_host} port {ports}: {exc.strerror or exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if settings.plain_listener:
        console.print(f"listening as [bold]{settings.ae_title}[/bold] on {settings.listen_host}:{listener.port}")
    if listener.tls_port is not None:
        console.print(
            f"listening as [bold]{settings.ae_title}[/bold] on {settings.listen_host}:{listener.tls_port} (TLS)"
        )
    stop.wait()
    listener.stop()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Upgrade the database schema (default: to the newest revision)."""
    from integration.store.migrate import upgrade

    settings = load_settings()
    upgrade(settings.database_url, revision)
    console.print(f"schema upgraded to {revision}")


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


@studies_app.command("list")
def studies_list(
    limit: Annotated[int, typer.Option(help="Most recent studies to show.")] = 50,
) -> None:
    """List the most recently received studies with their state, version and counts."""
    from integration.store.queries import study_summaries
    from integration.store.session import session_scope

    settings = load_settings()
    with session_scope(settings.database_url) as session:
        rows = study_summaries(session, limit)
    table = Table("study UID", "state", "version", "series", "instances", "calling AE", "last received")
    for row in rows:
        table.add_row(
            row.study_uid,
            row.state,
            str(row.version),
            str(row.series),
            str(row.instances),
            row.calling_ae,
            row.last_received_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console().print(table)
