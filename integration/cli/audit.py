"""``pacs-vlm audit``: read the audit trail (who did what, when, from where) from the command line."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from integration.cli import console, fail, load_settings
from integration.store.audit import DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT

audit_app = typer.Typer(
    help="The audit trail: sign-ins, reviews, signatures, exports, DICOM peers.", no_args_is_help=True
)

#: A time relative to now: a number and a unit (minutes, hours, days, weeks).
_RELATIVE = re.compile(r"^(\d{1,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, now: datetime) -> datetime:
    """Read a time given on the command line as an aware time.

    ISO 8601 (``2025-03-01``, ``2025-03-01T08:00``, ``2025-03-01T08:00+01:00``; no zone means UTC) or a
    time before ``now`` (aware) such as ``15m``, ``2h``, ``7d``, ``1w``.

    Raises
    ------
    ValueError
        When it is neither.
    """
    relative = _RELATIVE.match(value.strip())
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"cannot read {value!r} as a time: use ISO 8601 (2025-03-01T08:00) or 15m, 2h, 7d") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_object(value: str) -> tuple[str, str | None]:
    """Read ``--object``: ``TYPE`` or ``TYPE:ID`` (``study:1.2.840...``, ``report:42``) as the type and the id or None.

    Raises
    ------
    ValueError
        When the type is empty.
    """
    kind, _, ident = value.partition(":")
    if not kind.strip():
        raise ValueError(f"cannot read --object {value!r}: use TYPE or TYPE:ID, e.g. study:1.2.840.1 or report:42")
    return kind.strip(), ident.strip() or None


def _compact(detail: dict[str, Any] | None) -> str:
    """An event's detail as ``key=value`` pairs for a table cell (nested values as JSON)."""
    if not detail:
        return ""
    return " ".join(
        f"{key}={value if isinstance(value, str | int | float) else json.dumps(value)}"
        for key, value in sorted(detail.items())
    )


@audit_app.command("list")
def list_command(
    actor: Annotated[str | None, typer.Option(help="Only this actor (a username, ae:TITLE, system).")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action (report.sign), or a prefix ending in a dot (report.).")
    ] = None,
    object_: Annotated[
        str | None, typer.Option("--object", help="Only this object: TYPE or TYPE:ID (study:1.2.840.1, report:42).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="At or after: ISO 8601 (UTC unless zoned) or 15m, 2h, 7d.")] = None,
    until: Annotated[str | None, typer.Option(help="Before: ISO 8601 (UTC unless zoned) or 15m, 2h, 7d.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_QUERY_LIMIT, help="Rows to show.")] = DEFAULT_QUERY_LIMIT,
    before_id: Annotated[int | None, typer.Option(min=1, help="Only events older than this id (paging).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per line instead of a table.")] = False,
) -> None:
    """List audit events, newest first."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.audit import event_as_json, query_events
    from integration.store.session import session_scope
    from integration.store.tables import utcnow

    now = utcnow()
    try:
        start = parse_time(since, now) if since is not None else None
        end = parse_time(until, now) if until is not None else None
        object_type, object_id = parse_object(object_) if object_ is not None else (None, None)
    except ValueError as exc:
        raise fail(escape(str(exc)), 2) from None
    if start is not None and end is not None and start >= end:
        raise fail("--since must be before --until", 2)
    settings = load_settings()
    try:
        with session_scope(settings.database_url) as session:
            rows = [
                event_as_json(event)
                for event in query_events(
                    session,
                    actor=actor,
                    action=action,
                    object_type=object_type,
                    object_id=object_id,
                    since=start,
                    until=end,
                    limit=limit,
                    before_id=before_id,
                )
            ]
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    table = Table()
    for column in ("id", "at (UTC)", "actor", "action"):
        table.add_column(column, no_wrap=True)  # the columns a reader scans and greps stay whole
    for column in ("object", "source", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        subject = f"{row['object_type']}:{row['object_id']}" if row["object_type"] else ""
        table.add_row(
            str(row["id"]),
            row["at"][:19].replace("T", " "),
            Text(row["actor"]),  # stored text (a typed username, a peer's AE title): never markup
            Text(row["action"]),
            Text(subject),
            Text(row["source"] or ""),
            Text(_compact(row["detail"])),
        )
    Console().print(table)
    if len(rows) == limit:
        console.print(f"more rows: add --before-id {rows[-1]['id']}", markup=False)
