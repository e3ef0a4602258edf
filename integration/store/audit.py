"""The audit trail: who did what, when and from where."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from integration.store.tables import AuditEvent, utcnow


def record_event(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str | None = None,
    object_id: str | None = None,
    source: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit event and commit.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    actor : str
        Who acted: a user name, or ``ae:<AE title>`` for a DICOM peer.
    action : str
        What happened, dotted (``dicom.association``, ``study.queued``).
    object_type, object_id : str, optional
        What it happened to (``study`` and its UID, say).
    source : str, optional
        Where from (``host:port``).
    detail : dict, optional
        Counts and reasons; never patient data.
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
    session.commit()
