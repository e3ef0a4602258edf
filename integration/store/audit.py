"""The audit trail: who did what, when and from where; appended by every part, read by administrators."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.store.tables import AuditEvent, utcnow

#: Rows of one page of :func:`query_events` unless asked otherwise.
DEFAULT_QUERY_LIMIT = 100
#: Most rows of one page of :func:`query_events`.
MAX_QUERY_LIMIT = 1000


def add_event(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str | None = None,
    object_id: str | None = None,
    source: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one audit event to the session's transaction without committing (it commits with the change it records).

    Parameters
    ----------
    actor : str
        Who acted: a user name, ``ae:<AE title>`` for a DICOM peer, ``system`` for the worker.
    action : str
        What happened, dotted (``dicom.association``, ``export.delivered``).
    object_type, object_id : str, optional
        What it happened to (``study`` and its UID, say).
    source : str, optional
        Where from (``host:port``; the host alone for sign-ins).
    detail : dict, optional
        Counts, ids and reasons; never patient data.
    """
    session.add(
        AuditEvent(
            at=utcnow(),
            actor=actor[:128],
            action=action,
            object_type=object_type,
            object_id=object_id,
            source=source,
            detail=detail,
        )
    )


def query_events(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_QUERY_LIMIT,
    before_id: int | None = None,
) -> list[AuditEvent]:
    """Return audit events matching every filter given, newest first (by id), one page at a time.

    Pages follow each other by key, not by offset: pass the last id of a page as ``before_id`` to get the
    next, which stays right while new events are appended.

    Parameters
    ----------
    action : str, optional
        Exactly this action, or, when it ends with a dot (``report.``), every action starting with it.
    since : datetime.datetime, optional
        Events at or after this aware time.
    until : datetime.datetime, optional
        Events before this aware time.
    limit : int
        Most rows returned; clamped to 1 ... :data:`MAX_QUERY_LIMIT`.
    before_id : int, optional
        Only events with a smaller id (the previous page's last id).
    """
    query = select(AuditEvent)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if action is not None:
        if action.endswith("."):
            query = query.where(AuditEvent.action.startswith(action, autoescape=True))
        else:
            query = query.where(AuditEvent.action == action)
    if object_type is not None:
        query = query.where(AuditEvent.object_type == object_type)
    if object_id is not None:
        query = query.where(AuditEvent.object_id == object_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    query = query.order_by(AuditEvent.id.desc()).limit(max(1, min(limit, MAX_QUERY_LIMIT)))
    return list(session.scalars(query))


def event_as_json(event: AuditEvent) -> dict[str, Any]:
    """Return one audit event as a JSON object.

    ``id``, ``at`` (ISO 8601, UTC), ``actor``, ``action``, ``object_type``, ``object_id``, ``source``
    and ``detail``.
    """
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "source": event.source,
        "detail": event.detail,
    }
