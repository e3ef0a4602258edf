"""Escalation: an alert nobody acknowledged by its due time goes to the next contact of the chain.

The chain is ``alert_contacts`` in order, keeping the contacts that cover the study's site
(:meth:`~integration.safety_settings.AlertContact.covers`).  Level 0 is its first contact (notified when the
alert opens); each time ``due_at`` passes without an acknowledgement the level rises by one and that level's
contact is notified, with a new due time ``alert_ack_minutes`` later.  **Past the end of the chain the last
contact is notified again at every step** (the alert stays open, on the worklist and the study page, until
someone acknowledges it): a critical finding is never dropped silently because the chain is short.  Each
escalation is audited (``alert.escalated``) in the transaction that records it.

The listener's reconciler (:mod:`integration.intake.assembly`) calls :func:`escalate_due_alerts` on every
pass; the same call re-sends notifications whose message was lost (a broker outage when the alert opened), and
closes the alerts of drafts that were superseded or withdrawn (``alert.closed``; a later version's draft has its
own alert).  A signed or rejected draft's alert stays open until someone acknowledges it.
Alerts are taken with their rows locked (``SKIP LOCKED`` on PostgreSQL) and each level's notification is
unique, so two listeners never notify the same level twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from integration.config import Settings
from integration.queue import send_notify_alert
from integration.safety_settings import AlertContact
from integration.store.alerts import (
    add_notification,
    close_stale_alerts,
    due_alerts,
    notifications_to_resend,
    set_due,
)
from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.store.tables import utcnow

log = logging.getLogger(__name__)

#: A pending notification whose next attempt is overdue by this long (at most) lost its message.
ALERT_RESEND_SECONDS = 120.0


@dataclass(frozen=True)
class EscalationPass:
    """What one :func:`escalate_due_alerts` call did.

    Attributes
    ----------
    escalated : int
        Alerts moved to their next level.
    sent : int
        Notification messages sent (new and re-sent).
    send_failures : int
        Messages the broker did not take (the next pass re-sends them).
    """

    escalated: int = 0
    sent: int = 0
    send_failures: int = 0


def contact_chain(contacts: Iterable[AlertContact], site: str | None) -> list[AlertContact]:
    """Return the escalation chain of a study of ``site``: the contacts that cover it, in order."""
    return [contact for contact in contacts if contact.covers(site)]


def contact_at(chain: Sequence[AlertContact], level: int) -> AlertContact:
    """Return the contact of an escalation level (the last one past the end of the chain)."""
    return chain[min(level, len(chain) - 1)]


def ack_deadline(settings: Settings, now: datetime) -> datetime:
    """Return when a contact notified ``now`` must have acknowledged."""
    return now + timedelta(minutes=settings.alert_ack_minutes)


def send_notifications(settings: Settings, notification_ids: Sequence[int]) -> tuple[int, int]:
    """Send the notify messages of committed notifications; return (sent, failed).

    A message the broker does not take leaves its notification pending: the reconciler re-sends it.
    """
    sent = 0
    for notification_id in notification_ids:
        try:
            send_notify_alert(settings, notification_id)
        except Exception as exc:  # kombu raises many kinds when the broker is away
            log.warning("alert notification %d not sent, will be re-sent: %s", notification_id, type(exc).__name__)
            return sent, len(notification_ids) - sent
        sent += 1
    return sent, 0


def escalate_due_alerts(settings: Settings, now: datetime | None = None) -> EscalationPass:
    """Escalate every open alert past its due time, and re-send notifications whose message was lost.

    Parameters
    ----------
    settings : Settings
        The settings (contacts, acknowledgement minutes, database, broker).
    now : datetime.datetime, optional
        Aware UTC (default: the current time).

    Returns
    -------
    EscalationPass
        What was escalated and sent.
    """
    now = now or utcnow()
    created: list[int] = []
    escalated = 0
    with session_scope(settings.database_url) as session:
        for alert_id, report_id, reason in close_stale_alerts(session):
            add_event(
                session,
                actor="system",
                action="alert.closed",
                object_type="alert",
                object_id=str(alert_id),
                detail={"report_id": report_id, "reason": reason},
            )
            log.info("alert %d closed: %s", alert_id, reason)
        for alert, site in due_alerts(session, now):
            chain = contact_chain(settings.alert_contacts, site)
            if not chain:  # the contacts were removed from the settings: nobody left to escalate to
                set_due(session, alert.id, alert.level, None)
                continue
            level = alert.level + 1
            contact = contact_at(chain, level)
            notification_id = add_notification(session, alert.id, level, contact.name, contact.channel, now)
            set_due(session, alert.id, level, ack_deadline(settings, now))
            add_event(
                session,
                actor="system",
                action="alert.escalated",
                object_type="alert",
                object_id=str(alert.id),
                detail={
                    "report_id": alert.report_id,
                    "level": level,
                    "contact": contact.name,
                    "channel": contact.channel,
                    "repeat": level >= len(chain),
                },
            )
            escalated += 1
            if notification_id is not None:
                created.append(notification_id)
            log.warning("alert %d not acknowledged: escalated to level %d (%s)", alert.id, level, contact.name)
        overdue = notifications_to_resend(session, now, min(settings.resend_after_seconds, ALERT_RESEND_SECONDS))
    sent, failed = send_notifications(settings, [*created, *overdue])
    return EscalationPass(escalated=escalated, sent=sent, send_failures=failed)
