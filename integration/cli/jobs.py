"""``pacs-vlm jobs``: analysis jobs by state, to find failed work without reading tables.

Also what the studies commands share with it: the ``--since`` date.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from integration.cli import fail, load_settings
from integration.config import Settings

jobs_app = typer.Typer(help="Analysis jobs and their states (failed work).", no_args_is_help=True)

#: The ``--since`` option of the list commands.
SinceOption = Annotated[
    str | None,
    typer.Option(help="Only rows since this date or time (2026-05-01, 2026-05-01T08:00; the hospital's zone)."),
]
#: The ``--site`` option of the list commands.
SiteOption = Annotated[str | None, typer.Option(help="Only this site (its code).")]


def parse_since(settings: Settings, value: str | None) -> datetime | None:
    """Read ``--since``: an ISO date or time, in the hospital's zone (``timezone``) unless it names one.

    Raises
    ------
    typer.Exit
        Not a date (exit 2).
    """
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail(f"--since {value[:40]!r} is not a date: use 2026-05-01 or 2026-05-01T08:00", 2) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(settings.timezone)) if settings.timezone else moment.astimezone()
    return moment


def shown(moment: datetime | None) -> str:
    """A stored time as the lists print it (UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


@jobs_app.command("list")
def jobs_list(
    state: Annotated[
        str | None, typer.Option(help="Only this state: queued, running, done, failed, superseded, cancelled.")
    ] = None,
    site: SiteOption = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Rows to show.")] = 50,
) -> None:
    """List analysis jobs, newest first: study, model, prompt, attempts and the last error (times in UTC)."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.session import session_scope
    from integration.store.tables import JobState
    from integration.store.work import WorkFilter, list_jobs

    settings = load_settings()
    try:
        wanted = JobState(state) if state is not None else None
    except ValueError:
        raise fail(f"unknown state {state!r}: use {', '.join(s.value for s in JobState)}", 2) from None
    where = WorkFilter(site, parse_since(settings, since), limit)
    try:
        with session_scope(settings.database_url) as session:
            rows = list_jobs(session, wanted, where)
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    table = Table("job", "study UID", "site", "state", "purpose", "model", "prompt", "attempts", "created", "error")
    for row in rows:
        table.add_row(
            str(row.job_id),
            row.study_uid,
            Text(row.site or "-"),
            row.state,
            row.purpose,
            Text(row.model or "(default)"),
            Text(row.prompt or "(by modality)"),
            str(row.attempts),
            shown(row.created_at),
            Text(row.error or ""),  # a job error may quote a peer or the model: never markup
        )
    Console().print(table)
