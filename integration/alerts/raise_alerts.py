"""Opening the alert of a draft with critical findings: the study turns stat with its reason, the chain is told.

The worker calls :func:`open_critical_alerts` after it recorded a draft.  The draft's stored findings
document carries its critical matches (``Document.critical``, from ``integration/safety/critical.py``); with
none, nothing happens.  Otherwise, in one transaction: the alert (one per draft: a redelivered task opens
nothing new), the study's priority ``stat`` and ``critical_reason`` (the category labels, no patient data),
the first notification of the contact chain (:mod:`integration.alerts.escalation`) with its acknowledgement
deadline, and the audit event ``alert.raised``.  After the commit the notification's message goes to the
worker (``pacs_vlm.notify_alert``); a broker that is away leaves it pending for the reconciler.

A study whose site no contact covers still gets its alert and stat priority (shown on the worklist and the
study page); the audit event says that no contact was notified.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select

from integration.alerts.escalation import ack_deadline, contact_chain, send_notifications
from integration.config import Settings
from integration.findings import Document
from integration.store.alert_tables import CriticalAlert
from integration.store.alerts import add_notification, drafts_without_alert, open_alert, set_due
from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.store.tables import Report, ReportPurpose, Site, Study, utcnow

log = logging.getLogger(__name__)

#: How far back the reconciler looks for drafts whose critical-finding alert was never opened.
MISSING_ALERT_LOOKBACK = timedelta(days=2)


def open_critical_alerts(settings: Settings, report_id: int) -> int | None:
    """Open the critical-finding alert of a recorded draft and queue its first notification.

    Parameters
    ----------
    settings : Settings
        The settings (contacts, acknowledgement minutes, database, broker).
    report_id : int
        The draft, committed.

    Returns
    -------
    int or None
        The alert's id (also when it was opened before); None when the draft has no critical finding or
        does not exist.
    """
    now = utcnow()
    notification_id = None
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        if report is None or report.purpose is ReportPurpose.SHADOW:  # a hidden candidate's draft alerts nobody
            return None
        matches = Document.read(report.findings).critical
        if not matches:
            return None
        existing = session.scalar(select(CriticalAlert.id).where(CriticalAlert.report_id == report_id))
        if existing is not None:
            return int(existing)
        study = session.get(Study, report.study_id)
        assert study is not None  # a report's study is never gone while the report exists
        categories = dict.fromkeys((match.code, match.label) for match in matches)
        codes, labels = [code for code, _ in categories], [label for _, label in categories]
        alert_id = open_alert(session, study, report_id, codes, labels, now)
        if alert_id is None:  # a concurrent call opened it first
            return session.scalar(select(CriticalAlert.id).where(CriticalAlert.report_id == report_id))
        site = session.scalar(select(Site.code).where(Site.id == study.site_id)) if study.site_id else None
        chain = contact_chain(settings.alert_contacts, site)
        contact = chain[0] if chain else None
        if contact is not None:
            notification_id = add_notification(session, alert_id, 0, contact.name, contact.channel, now)
            set_due(session, alert_id, 0, ack_deadline(settings, now))
        add_event(
            session,
            actor="system",
            action="alert.raised",
            object_type="alert",
            object_id=str(alert_id),
            detail={
                "report_id": report_id,
                "study_id": study.id,
                "codes": codes,
                "findings": sorted({match.finding for match in matches}),
                "contact": contact.name if contact else None,
            },
        )
    log.warning("critical alert %d opened for report %d: %s", alert_id, report_id, ", ".join(codes))
    if contact is None:
        log.error("critical alert %d: no alert contact covers the study's site; it waits on the worklist", alert_id)
    elif notification_id is not None:
        send_notifications(settings, [notification_id])
    return alert_id


def open_missing_alerts(settings: Settings, now: datetime | None = None) -> int:
    """Open the alerts the analysis task could not (the database went away after the draft): the reconciler's pass.

    Returns the number of alerts opened.
    """
    with session_scope(settings.database_url) as session:
        missing = drafts_without_alert(session, (now or utcnow()) - MISSING_ALERT_LOOKBACK)
    opened = 0
    for report_id in missing:
        log.warning("draft report %d: its critical-finding alert is opened by the reconciler", report_id)
        opened += open_critical_alerts(settings, report_id) is not None
    return opened
