"""Taking back drafts that receivers got: withdrawals for what left, cancellation for what did not.

A draft is exported as soon as it is written; when it is then rejected by a radiologist, superseded by
a newer version of its study, or its order is cancelled, every receiver that got it (or may have got
it: an attempt was made) must learn that it is withdrawn.  :func:`withdraw_reports` is called after the
transaction that closed the reports commits, and creates one ``withdrawn:<report id>`` delivery per
draft delivery that left or may have left, for the same destination and document (the IOCM rejection
note, FHIR ``entered-in-error``, HL7 ``C``/``W``: see :mod:`integration.export.documents`); draft
deliveries that never left are cancelled.  The delivery task sends a withdrawal only once its original
has settled (:func:`integration.store.deliveries.start_attempt`).

Safe to call more than once and from several places (reject, supersede, order cancellation): a second
call finds everything done and adds nothing, not even an audit event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kombu.exceptions import OperationalError

from integration.config import Settings
from integration.queue import send_deliver
from integration.store.audit import add_event
from integration.store.deliveries import plan_withdrawals
from integration.store.session import session_scope
from integration.store.tables import utcnow

log = logging.getLogger(__name__)

#: The longest reason kept in the audit (callers pass a short code: ``rejected``, ``superseded`` ...).
MAX_REASON = 64


def withdraw_reports(settings: Settings, report_ids: Iterable[int], reason: str) -> list[int]:
    """Withdraw closed drafts from every destination that got them, and cancel what did not leave.

    Parameters
    ----------
    settings : Settings
        The settings (database, broker).
    report_ids : iterable of int
        Reports whose status is already ``rejected``, ``superseded`` or ``withdrawn`` (committed); other
        reports (unknown, still a draft, signed) are left alone.
    reason : str
        Why, for the audit (``rejected``, ``superseded``, ``order cancelled``); no patient data.

    Returns
    -------
    list of int
        The withdrawal deliveries this call created whose messages were sent (a broker outage leaves a
        withdrawal pending, and the resend sweep sends it later).
    """
    ids = sorted(set(report_ids))
    if not ids:
        return []
    why = reason.strip()[:MAX_REASON] or "withdrawn"
    with session_scope(settings.database_url) as session:
        planned = plan_withdrawals(session, ids, utcnow())
        for report_id, (withdrawals, cancelled) in planned.reports.items():
            add_event(
                session,
                actor="system",
                action="export.withdraw",
                object_type="report",
                object_id=str(report_id),
                detail={"reason": why, "withdrawals": withdrawals, "cancelled": cancelled},
            )
    if planned.skipped:
        log.info("withdrawal: reports %s are not closed drafts, left alone", planned.skipped)
    sent = []
    for delivery_id in planned.created:
        try:
            send_deliver(settings, delivery_id)
            sent.append(delivery_id)
        except OperationalError as exc:
            log.warning("withdrawal %d stays pending: broker unreachable (%s)", delivery_id, type(exc).__name__)
    if planned.created or planned.cancelled:
        log.info(
            "withdrew reports %s (%s): %d withdrawals, %d deliveries cancelled",
            sorted(planned.reports),
            why,
            len(planned.created),
            len(planned.cancelled),
        )
    return sent
