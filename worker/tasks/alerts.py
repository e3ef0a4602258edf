"""``pacs_vlm.notify_alert(notification_id)``: one critical-finding notification to one contact, retried with back-off.

Like a delivery (:mod:`worker.tasks.delivery`, whose back-off it shares): each attempt is counted in the
database with the row locked; a failed attempt is retried after a wait that doubles from
``delivery_backoff_seconds`` up to ``delivery_backoff_max_seconds``; after ``alert_max_attempts`` the
notification is ``dead_letter`` with its last error (escalation to the next contact goes on regardless, since
nobody acknowledged).  A notification whose alert was acknowledged or closed meanwhile is cancelled instead
of sent; one already sent is not sent again (a duplicate message changes nothing).

Every outcome is audited (actor ``system``, object the notification): ``alert.notified``,
``alert.notify_failed`` (another attempt follows) or ``alert.dead_letter``, in the same transaction as the
state it records.  The detail names the alert, the contact, the channel, the level and the attempt; never
the message (which may name the patient for a contact inside the hospital) nor the error (kept in
``alert_notifications.last_error``).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from integration.alerts.message import build_message
from integration.config import Settings, get_settings
from integration.export.alert_channels import send_notification
from integration.export.outgoing import DeliveryFailed
from integration.queue import NOTIFY_ALERT
from integration.store.alerts import (
    NotificationTarget,
    mark_notification_failed,
    mark_notification_sent,
    start_notification,
)
from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.store.tables import utcnow
from worker.celery_app import app
from worker.tasks.delivery import backoff_seconds

log = logging.getLogger(__name__)


@app.task(name=NOTIFY_ALERT, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)  # type: ignore[untyped-decorator]
def notify_alert(self: Any, notification_id: int) -> str:
    """Send one notification; safe to run more than once.

    Parameters
    ----------
    self : celery.Task
        The bound task (for retries).
    notification_id : int
        The notification row.

    Returns
    -------
    str
        What happened (``sent``, ``dead_letter``, ``not pending``), for the worker's log.
    """
    return notify(self, get_settings(), notification_id)


def notify(task: Any, settings: Settings, notification_id: int) -> str:
    """The task's body with its settings given (tests call it with a stand-in ``task`` whose ``retry`` raises).

    Parameters
    ----------
    task : celery.Task
        Its ``retry(countdown=...)`` is raised after a failed attempt that is not the last.
    settings : Settings
        The settings.
    notification_id : int
        The notification row.

    Returns
    -------
    str
        ``sent``, ``dead_letter`` or ``not pending``.
    """
    with session_scope(settings.database_url) as session:
        target = start_notification(session, notification_id)
    if target is None:
        return "not pending"
    contact = next((c for c in settings.alert_contacts if c.name == target.contact), None)
    try:
        if contact is None:
            raise DeliveryFailed(f"contact {target.contact!r} is no longer configured")
        message = build_message(
            target,
            inside=contact.inside_hospital,
            public_url=settings.public_url,
            ack_minutes=settings.alert_ack_minutes,
        )
        receipt = send_notification(settings, contact, target, message)
    except DeliveryFailed as exc:
        return _failed(task, settings, target, str(exc))
    except Exception as exc:  # an unexpected error is still a failed attempt, never a lost notification
        log.error("alert notification %d: unexpected %s", notification_id, type(exc).__name__)
        return _failed(task, settings, target, f"{type(exc).__name__}")
    with session_scope(settings.database_url) as session:
        _audit(session, target, "alert.notified")
        mark_notification_sent(session, notification_id, utcnow())
    log.info("alert %d notified %s over %s: %s", target.alert_id, target.contact, target.channel, receipt)
    return "sent"


def _audit(session: Session, target: NotificationTarget, action: str) -> None:
    """Add the audit row of one notification outcome (committed with the notification's new state)."""
    add_event(
        session,
        actor="system",
        action=action,
        object_type="alert_notification",
        object_id=str(target.notification_id),
        detail={
            "alert_id": target.alert_id,
            "contact": target.contact,
            "channel": target.channel,
            "level": target.level,
            "attempt": target.attempt,
        },
    )


def _failed(task: Any, settings: Settings, target: NotificationTarget, error: str) -> str:
    dead = target.attempt >= settings.alert_max_attempts
    wait = backoff_seconds(settings, target.attempt)
    with session_scope(settings.database_url) as session:
        _audit(session, target, "alert.dead_letter" if dead else "alert.notify_failed")
        mark_notification_failed(
            session, target.notification_id, error, dead=dead, next_attempt_at=utcnow() + timedelta(seconds=wait)
        )
    if dead:
        log.error(
            "alert notification %d is dead letter after %d attempts: %s", target.notification_id, target.attempt, error
        )
        return "dead_letter"
    log.warning(
        "alert notification %d attempt %d failed (%s); next in %.0f s",
        target.notification_id,
        target.attempt,
        error,
        wait,
    )
    raise task.retry(countdown=wait)
