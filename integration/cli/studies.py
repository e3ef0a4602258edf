"""``pacs-vlm studies``: the studies received and their states."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from integration.cli import load_settings

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
