"""Critical-finding alerts: opened once per draft, notified, escalated, acknowledged (rows only; callers commit).

An alert is unique per report, so a draft recorded again (a redelivered task) opens nothing new; a
notification is unique per alert and escalation level, so a sweep run twice notifies nobody twice.  A
notification's attempt is counted with its row locked (:func:`start_notification`), like a delivery's; one
whose alert was acknowledged or closed meanwhile is cancelled instead of sent.  Acknowledging is audited
here (``alert.acknowledged``), in the caller's transaction, so the API and the command line record it alike;
acknowledging again changes nothing and adds no event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from integration.store.alert_tables import AlertNotification, AlertState, CriticalAlert, NotificationState
from integration.store.audit import add_event
from integration.store.priority import settle_priority_of
from integration.store.session import dialect_insert
from integration.store.tables import Report, ReportPurpose, ReportStatus, Site, Study, utcnow

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])
#: ``studies.critical_reason`` is at most this long.
REASON_LENGTH = 128


@dataclass(frozen=True)
class NotificationTarget:
    """One notification being attempted, with what its message may say.

    The patient's name, id and the accession number are for contacts inside the hospital only (the message
    builder decides); they are never logged and left out of ``repr``.

    Attributes
    ----------
    notification_id, alert_id, report_id : int
        The rows.
    contact, channel : str
        Who is told, and how (``webhook``, ``email``, ``hl7``).
    level : int
        The escalation step of this notification (0: the first contact).
    attempt : int
        This attempt's number (1 for the first).
    study_uid : str
        The study (its page's address is built from it).
    site : str or None
        The study's site code.
    codes, labels : tuple of str
        The critical categories.
    raised_at : datetime.datetime
        When the alert was opened.
    """

    notification_id: int
    alert_id: int
    report_id: int
    contact: str
    channel: str
    level: int
    attempt: int
    study_uid: str
    site: str | None
    codes: tuple[str, ...]
    labels: tuple[str, ...]
    raised_at: datetime
    patient_name: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    accession_number: str = field(default="", repr=False)
    study_description: str = field(default="", repr=False)


@dataclass(frozen=True)
class Acknowledgement:
    """What :func:`acknowledge_alert` found or did.

    Attributes
    ----------
    alert : CriticalAlert
        The alert (acknowledged now, or earlier: ``acknowledged_by`` and ``acknowledged_at`` say by whom).
    newly : bool
        True when this call acknowledged it; False when it was acknowledged already (nothing changed).
    """

    alert: CriticalAlert
    newly: bool


class AlertClosed(Exception):
    """The alert was closed without an acknowledgement (its draft was superseded or withdrawn)."""


def reason_of(labels: Sequence[str]) -> str:
    """Return ``studies.critical_reason`` for these category labels: ``Critical: A, B`` cut to 128 characters."""
    text = "Critical: " + ", ".join(dict.fromkeys(labels))
    return text if len(text) <= REASON_LENGTH else text[: REASON_LENGTH - 3] + "..."


def open_alert(
    session: Session, study: Study, report_id: int, codes: Sequence[str], labels: Sequence[str], now: datetime
) -> int | None:
    """Open the alert of one draft and make its study stat with the reason; None when the draft has one already.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session (the caller commits).
    study : Study
        The draft's study: its ``priority`` becomes ``stat`` and ``critical_reason`` names the labels.
    report_id : int
        The draft.
    codes, labels : sequence of str
        The matched categories, without repeats.
    now : datetime.datetime
        Aware UTC.

    Returns
    -------
    int or None
        The new alert's id.
    """
    created = session.execute(
        dialect_insert(session)(CriticalAlert)
        .values(
            report_id=report_id,
            study_id=study.id,
            site_id=study.site_id,
            codes=list(codes),
            labels=list(labels),
            state=AlertState.OPEN.value,
            level=0,
            raised_at=now,
            due_at=None,
        )
        .on_conflict_do_nothing()
        .returning(CriticalAlert.id)
    ).scalar_one_or_none()
    if created is None:
        return None
    study.priority = "stat"
    study.critical_reason = reason_of(labels)
    session.flush()
    return int(created)


def add_notification(
    session: Session, alert_id: int, level: int, contact: str, channel: str, now: datetime
) -> int | None:
    """Add the notification of one escalation level (pending, due now); None when that level has one already."""
    created = session.execute(
        dialect_insert(session)(AlertNotification)
        .values(
            alert_id=alert_id,
            contact=contact,
            channel=channel,
            level=level,
            state=NotificationState.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(AlertNotification.id)
    ).scalar_one_or_none()
    return None if created is None else int(created)


def set_due(session: Session, alert_id: int, level: int, due_at: datetime | None) -> None:
    """Record the alert's escalation level and when the next contact is due (None: nobody to escalate to)."""
    session.execute(update(CriticalAlert).where(CriticalAlert.id == alert_id).values(level=level, due_at=due_at))


def _locked(session: Session, query: _Query, of: Any = None) -> _Query:
    """The query locking its rows (of ``of``'s table only, beside outer joins) on PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(of=of)
    return query


def start_notification(
    session: Session, notification_id: int, now: datetime | None = None
) -> NotificationTarget | None:
    """Count an attempt of a pending notification (its row locked); return what to send.

    None when it is not pending (sent, dead letter, cancelled or unknown: a duplicate message changes
    nothing), or when its alert is no longer open: then it is cancelled, never sent.
    """
    now = now or utcnow()
    row = session.execute(
        _locked(
            session,
            select(AlertNotification, CriticalAlert, Study, Site.code)
            .join(CriticalAlert, CriticalAlert.id == AlertNotification.alert_id)
            .join(Study, Study.id == CriticalAlert.study_id)
            .outerjoin(Site, Site.id == Study.site_id)
            .where(AlertNotification.id == notification_id),
            of=AlertNotification,
        )
    ).one_or_none()
    if row is None or row[0].state != NotificationState.PENDING:
        return None
    notification, alert, study, site = row
    if alert.state != AlertState.OPEN:
        notification.state = NotificationState.CANCELLED
        notification.next_attempt_at = None
        return None
    notification.attempts += 1
    session.flush()
    return NotificationTarget(
        notification_id=notification.id,
        alert_id=alert.id,
        report_id=alert.report_id,
        contact=notification.contact,
        channel=notification.channel,
        level=notification.level,
        attempt=notification.attempts,
        study_uid=study.study_uid,
        site=site,
        codes=tuple(alert.codes or ()),
        labels=tuple(alert.labels or ()),
        raised_at=alert.raised_at,
        patient_name=study.patient_name or "",
        patient_id=study.patient_id or "",
        accession_number=study.accession_number or "",
        study_description=study.study_description or "",
    )


def mark_notification_sent(session: Session, notification_id: int, now: datetime) -> None:
    """Record a notification the contact's channel took."""
    session.execute(
        update(AlertNotification)
        .where(AlertNotification.id == notification_id)
        .values(state=NotificationState.SENT.value, sent_at=now, last_error=None, next_attempt_at=None)
    )


def mark_notification_failed(
    session: Session, notification_id: int, error: str, *, dead: bool, next_attempt_at: datetime | None
) -> None:
    """Record a failed attempt: ``dead_letter`` when none are left, else due again at ``next_attempt_at``.

    ``error`` says what went wrong (no patient data; capped at 2000 characters).
    """
    values: dict[str, object] = {"last_error": error[:2000], "next_attempt_at": None if dead else next_attempt_at}
    if dead:
        values["state"] = NotificationState.DEAD_LETTER.value
    session.execute(update(AlertNotification).where(AlertNotification.id == notification_id).values(**values))


def acknowledge_alert(
    session: Session, alert_id: int, by: str, now: datetime, *, source: str | None = None, via: str = "api"
) -> Acknowledgement | None:
    """Acknowledge an alert: who and when, audited; its pending notifications are cancelled.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session (the caller commits; the audit event commits with the change).
    alert_id : int
        The alert.
    by : str
        Who acknowledged it (a user name, or the name given on the command line).
    now : datetime.datetime
        Aware UTC.
    source : str, optional
        Where from (``host:port``).
    via : str
        ``api``, ``page`` or ``cli``, for the audit detail.

    Returns
    -------
    Acknowledgement or None
        None when there is no such alert.

    Raises
    ------
    AlertClosed
        The alert was closed without an acknowledgement.
    """
    alert = session.scalars(_locked(session, select(CriticalAlert).where(CriticalAlert.id == alert_id))).one_or_none()
    if alert is None:
        return None
    if alert.state == AlertState.ACKNOWLEDGED:
        return Acknowledgement(alert, newly=False)
    if alert.state == AlertState.CLOSED:
        raise AlertClosed(f"alert {alert_id} was closed ({alert.closed_reason or 'no reason'}): nothing to acknowledge")
    alert.state = AlertState.ACKNOWLEDGED
    alert.acknowledged_by = by[:128]
    alert.acknowledged_at = now
    alert.due_at = None
    session.execute(
        update(AlertNotification)
        .where(AlertNotification.alert_id == alert_id, AlertNotification.state == NotificationState.PENDING)
        .values(state=NotificationState.CANCELLED.value, next_attempt_at=None)
    )
    add_event(
        session,
        actor=by,
        action="alert.acknowledged",
        object_type="alert",
        object_id=str(alert_id),
        source=source,
        detail={
            "report_id": alert.report_id,
            "codes": list(alert.codes or ()),
            "level": alert.level,
            "seconds": round((now - alert.raised_at).total_seconds(), 1),
            "via": via,
        },
    )
    settle_priority_of(session, alert.study_id, now)
    session.flush()
    return Acknowledgement(alert, newly=True)


def drafts_without_alert(session: Session, since: datetime, limit: int = 200) -> list[int]:
    """Drafts recorded since ``since`` whose findings name critical matches but that have no alert (oldest first).

    The analysis task opens a draft's alert right after recording it; this finds the drafts whose alert could not
    be opened then (the database went away in between), so the reconciler opens it.
    """
    rows = session.execute(
        select(Report.id, Report.findings)
        .outerjoin(CriticalAlert, CriticalAlert.report_id == Report.id)
        .where(Report.status == ReportStatus.DRAFT, Report.created_at >= since, CriticalAlert.id.is_(None))
        .where(Report.purpose != ReportPurpose.SHADOW)  # a shadow draft never raises an alert
        .order_by(Report.id)
        .limit(limit)
    )
    return [int(report_id) for report_id, findings in rows if isinstance(findings, dict) and findings.get("critical")]


def due_alerts(session: Session, now: datetime, limit: int = 100) -> list[tuple[CriticalAlert, str | None]]:
    """Return open alerts whose contact did not acknowledge in time, with their study's site code (rows locked).

    On PostgreSQL rows another process holds are skipped (two sweeps never escalate one alert twice).
    """
    query = (
        select(CriticalAlert, Site.code)
        .outerjoin(Site, Site.id == CriticalAlert.site_id)
        .where(CriticalAlert.state == AlertState.OPEN, CriticalAlert.due_at.is_not(None), CriticalAlert.due_at <= now)
        .order_by(CriticalAlert.due_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=CriticalAlert, skip_locked=True)
    return [(alert, site) for alert, site in session.execute(query).all()]


#: Draft states whose alert closes: the draft must not be used any more (a later version of the study has its
#: own draft, and its own alert when that one is critical too).  A signed or rejected draft's alert stays open
#: until someone acknowledges it: signing is not acknowledging the notification.
CLOSING_STATES = (ReportStatus.SUPERSEDED, ReportStatus.WITHDRAWN)


def close_stale_alerts(session: Session, limit: int = 100) -> list[tuple[int, int, str]]:
    """Close the open alerts of drafts that were superseded or withdrawn; pending notifications are cancelled.

    Returns
    -------
    list of (int, int, str)
        Each alert closed, its report and the reason (``draft superseded``, ``draft withdrawn``), for the
        caller's audit events.
    """
    query = (
        select(CriticalAlert, Report.status)
        .join(Report, Report.id == CriticalAlert.report_id)
        .where(CriticalAlert.state == AlertState.OPEN, Report.status.in_(CLOSING_STATES))
        .order_by(CriticalAlert.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=CriticalAlert, skip_locked=True)
    closed = []
    for alert, status in session.execute(query).all():
        reason = f"draft {ReportStatus(status).value}"
        alert.state = AlertState.CLOSED
        alert.closed_reason = reason
        alert.due_at = None
        session.execute(
            update(AlertNotification)
            .where(AlertNotification.alert_id == alert.id, AlertNotification.state == NotificationState.PENDING)
            .values(state=NotificationState.CANCELLED.value, next_attempt_at=None)
        )
        closed.append((alert.id, alert.report_id, reason))
    session.flush()
    return closed


def notifications_to_resend(session: Session, now: datetime, overdue_seconds: float) -> list[int]:
    """Return pending notifications whose message may be lost (overdue by ``overdue_seconds``), marked re-sent now."""
    ids = list(
        session.scalars(
            select(AlertNotification.id)
            .where(
                AlertNotification.state == NotificationState.PENDING,
                AlertNotification.next_attempt_at < now - timedelta(seconds=overdue_seconds),
            )
            .order_by(AlertNotification.id)
            .limit(500)
        )
    )
    if ids:
        session.execute(update(AlertNotification).where(AlertNotification.id.in_(ids)).values(next_attempt_at=now))
    return ids


def alerts_query(state: AlertState | None = None) -> Select[Any]:
    """A query of alerts with their study's UID and site code, newest first (add site restrictions, a limit)."""
    columns: tuple[Any, ...] = (CriticalAlert, Study.study_uid, Site.code)
    query: Select[Any] = (
        select(*columns)
        .join(Study, Study.id == CriticalAlert.study_id)
        .outerjoin(Site, Site.id == CriticalAlert.site_id)
        .order_by(CriticalAlert.id.desc())
    )
    return query if state is None else query.where(CriticalAlert.state == state)


def notifications_of(session: Session, alert_ids: Sequence[int]) -> dict[int, list[AlertNotification]]:
    """Return the notifications of these alerts, by alert, oldest first."""
    found: dict[int, list[AlertNotification]] = {}
    for row in session.scalars(
        select(AlertNotification).where(AlertNotification.alert_id.in_(list(alert_ids))).order_by(AlertNotification.id)
    ):
        found.setdefault(row.alert_id, []).append(row)
    return found


def alert_as_json(alert: CriticalAlert, study_uid: str, site: str | None) -> dict[str, Any]:
    """Return one alert as the API and the command line show it (no patient data)."""
    return {
        "id": alert.id,
        "report_id": alert.report_id,
        "study_uid": study_uid,
        "site": site,
        "codes": list(alert.codes or ()),
        "labels": list(alert.labels or ()),
        "state": AlertState(alert.state).value,
        "level": alert.level,
        "raised_at": alert.raised_at.isoformat(),
        "due_at": alert.due_at.isoformat() if alert.due_at else None,
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": alert.acknowledged_at.isoformat() if alert.acknowledged_at else None,
        "closed_reason": alert.closed_reason,
    }
