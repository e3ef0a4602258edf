"""Queueing the deliveries of a report version: rows first (the outbox), then one message per delivery.

Which destinations get a report version: those whose rules take its status (draft or signed) and whose
``sites`` and ``modalities`` (empty: all) name the site of the report's study and one of its series'
modalities; a report of site A is never queued for a destination of site B only.
"""

from __future__ import annotations

import logging
from typing import Literal

from kombu.exceptions import OperationalError
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.live_config import live_settings
from integration.queue import send_deliver
from integration.store.deliveries import PlannedDelivery, create_deliveries
from integration.store.session import session_scope
from integration.store.tables import Report, ReportPurpose, Series, Site, Study, utcnow

log = logging.getLogger(__name__)


def queue_deliveries(
    settings: Settings, report_id: int, revision_id: int | None, status: Literal["draft", "signed"]
) -> list[int]:
    """Create the deliveries the destination rules ask for, and send their messages.

    Parameters
    ----------
    settings : Settings
        The settings (destinations, broker).
    report_id : int
        The report.
    revision_id : int or None
        The signed revision, or None for the draft.
    status : str
        ``draft`` or ``signed``: which destination rules apply.

    Returns
    -------
    list of int
        The pending deliveries whose messages were sent.
    """
    destinations = live_settings(settings).destinations  # as configured now (pacs-vlm config, admin pages)
    taking = [destination for destination in destinations if destination.takes(status)]
    if not taking:
        return []
    with session_scope(settings.database_url) as session:
        if session.scalar(select(Report.purpose).where(Report.id == report_id)) == ReportPurpose.SHADOW:
            return []  # shadow mode: a candidate's draft never leaves
        site_code, modalities = report_origin(session, report_id)
        planned = [
            PlannedDelivery(destination.name, document)
            for destination in taking
            if destination.serves(site_code, modalities)
            for document in destination.documents_for(status)
        ]
        if not planned:
            return []
        pending = create_deliveries(session, report_id, revision_id, planned, utcnow())
    sent = []
    for delivery_id in pending:
        try:
            send_deliver(settings, delivery_id)
            sent.append(delivery_id)
        except OperationalError as exc:
            log.warning("delivery %d stays pending: broker unreachable (%s)", delivery_id, type(exc).__name__)
    return sent


def report_origin(session: Session, report_id: int) -> tuple[str | None, list[str]]:
    """Return the site code of a report's study (None without a site) and the modalities of its series.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        An open session.
    report_id : int
        The report.

    Returns
    -------
    tuple of (str or None, list of str)
        The site code and the distinct modalities (empty when the report or its study is gone).
    """
    row = session.execute(
        select(Site.code, Study.id)
        .select_from(Report)
        .join(Study, Report.study_id == Study.id)
        .outerjoin(Site, Study.site_id == Site.id)
        .where(Report.id == report_id)
    ).one_or_none()
    if row is None:
        return None, []
    modalities = session.scalars(
        select(Series.modality).where(Series.study_id == row[1], Series.modality.is_not(None)).distinct()
    ).all()
    return row[0], [m for m in modalities if m]
