"""The audit log for administrators: ``GET /api/audit``.

Filters are validated query parameters bound into one SQLAlchemy query (no SQL is built from strings);
pages follow each other by key (``before_id`` = the previous page's ``next_before_id``), newest first.
``format=csv`` answers the same page as a CSV download whose cells cannot start a spreadsheet formula.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse

from integration.store.audit import DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT, event_as_json, query_events
from integration.store.tables import UID_LENGTH
from integration.web.deps import Admin, DbSession
from integration.web.schemas import AuditPage

#: What an action filter may look like: dotted words, optionally ending in a dot for a prefix (``report.``).
ACTION_PATTERN = r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*\.?$"
#: The columns of the CSV export, in order.
CSV_COLUMNS = ("id", "at", "actor", "action", "object_type", "object_id", "source", "detail")
#: First characters that make a spreadsheet read a cell as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _aware(value: datetime | None) -> datetime | None:
    """Read a time without a zone as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def csv_cell(value: Any) -> str:
    """Return a value as a CSV cell that a spreadsheet shows as text, never evaluates.

    Parameters
    ----------
    value : Any
        ``None``, a number, a string or a JSON-able structure (written as JSON).

    Returns
    -------
    str
        The cell, prefixed with ``'`` when it would start a formula.
    """
    if value is None:
        return ""
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, sort_keys=True)
        if isinstance(value, dict)
        else str(value)
    )
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def events_csv(rows: list[dict[str, Any]]) -> str:
    """Write audit events (as from :func:`integration.store.audit.event_as_json`) as CSV with a header row.

    Parameters
    ----------
    rows : list of dict
        The events.

    Returns
    -------
    str
        The CSV text.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([csv_cell(row[column]) for column in CSV_COLUMNS])
    return buffer.getvalue()


#: Filter values without control characters (PostgreSQL refuses NUL in text; nothing audited holds them).
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def audit_router() -> APIRouter:
    """Build the router of ``GET /api/audit`` (administrators only).

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    router = APIRouter(prefix="/api", tags=["audit"])

    @router.get(
        "/audit",
        summary="Audit events, newest first (administrators only)",
        responses={
            200: {"model": AuditPage, "content": {"text/csv": {"schema": {"type": "string"}}}},
            403: {"description": "not an administrator"},
            422: {"description": "a filter is invalid"},
        },
    )
    def audit_events(
        session: DbSession,
        admin: Admin,
        actor: Annotated[
            str | None, Query(min_length=1, max_length=128, pattern=PRINTABLE, description="Exactly this actor.")
        ] = None,
        action: Annotated[
            str | None,
            Query(
                max_length=64,
                pattern=ACTION_PATTERN,
                description="Exactly this action, or a prefix ending in a dot (report.).",
            ),
        ] = None,
        object_type: Annotated[
            str | None, Query(min_length=1, max_length=32, pattern=PRINTABLE, description="study, report, ...")
        ] = None,
        object_id: Annotated[str | None, Query(min_length=1, max_length=UID_LENGTH, pattern=PRINTABLE)] = None,
        since: Annotated[datetime | None, Query(description="At or after (ISO 8601; no zone means UTC).")] = None,
        until: Annotated[datetime | None, Query(description="Before (ISO 8601; no zone means UTC).")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)] = DEFAULT_QUERY_LIMIT,
        before_id: Annotated[int | None, Query(ge=1, description="The previous page's next_before_id.")] = None,
        format: Annotated[Literal["json", "csv"], Query()] = "json",
    ) -> Response:
        """One page of audit events; ``next_before_id`` is null when the page is not full."""
        since, until = _aware(since), _aware(until)
        if since is not None and until is not None and since >= until:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since must be before until")
        events = query_events(
            session,
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            since=since,
            until=until,
            limit=limit,
            before_id=before_id,
        )
        rows = [event_as_json(event) for event in events]
        next_before_id = rows[-1]["id"] if len(rows) == limit else None
        headers = {"Cache-Control": "no-store"}
        if format == "csv":
            if next_before_id is not None:
                headers["X-Next-Before-Id"] = str(next_before_id)
            headers["Content-Disposition"] = 'attachment; filename="audit.csv"'
            return Response(events_csv(rows), media_type="text/csv; charset=utf-8", headers=headers)
        return JSONResponse({"events": rows, "next_before_id": next_before_id}, headers=headers)

    return router
