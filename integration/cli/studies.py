"""``pacs-vlm studies``: the studies received and their states."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from integration.cli import fail, load_settings

studies_app = typer.Typer(help="Studies received and their states.", no_args_is_help=True)


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


@studies_app.command("release")
def studies_release(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID of the held study.")],
) -> None:
    """Release a study held because its procedure step (MPPS) was discontinued: it is completed at once."""
    import getpass

    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.mpps import release_study
    from integration.store.session import session_scope
    from integration.store.tables import utcnow

    settings = load_settings()
    try:
        actor = f"cli:{getpass.getuser()}"[:128]
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME/USER
        actor = "cli"
    try:
        with session_scope(settings.database_url) as session:
            released = release_study(session, study_uid, actor=actor, now=utcnow())
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    if not released:
        raise fail(f"no held study {escape(study_uid)}: see 'pacs-vlm studies list'", 1)
    Console().print(f"study {escape(study_uid)} released: it is completed on the next assembly pass")
