"""Queueing the deliveries of a report version: rows first (the outbox), then one message per delivery."""

from __future__ import annotations

import logging
from typing import Literal

from kombu.exceptions import OperationalError

from integration.config import Settings
from integration.queue import send_deliver
from integration.store.deliveries import PlannedDelivery, create_deliveries
from integration.store.session import session_scope
from integration.store.tables import utcnow

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
    planned = [
        PlannedDelivery(destination.name, document)
        for destination in settings.destinations
        if destination.takes(status)
        for document in destination.documents
    ]
    if not planned:
        return []
    with session_scope(settings.database_url) as session:
        pending = create_deliveries(session, report_id, revision_id, planned, utcnow())
    sent = []
    for delivery_id in pending:
        try:
            send_deliver(settings, delivery_id)
            sent.append(delivery_id)
        except OperationalError as exc:
            log.warning("delivery %d stays pending: broker unreachable (%s)", delivery_id, type(exc).__name__)
    return sent
