"""``pacs_vlm.deliver(delivery_id)``: one report document to one destination, retried with back-off.

Each attempt is counted in the database; a failed attempt is retried after a wait that doubles from
``DELIVERY_BACKOFF_SECONDS`` up to ``DELIVERY_BACKOFF_MAX_SECONDS``; after ``DELIVERY_MAX_ATTEMPTS`` the
delivery is ``dead_letter`` with its last error, until ``pacs-vlm deliveries retry`` makes it pending again.

A withdrawal (``withdrawn:<report id>``) waits while its original draft delivery is pending: the task
looks again after the original's next attempt, without counting an attempt, so the retraction never
reaches a receiver before the draft; it is cancelled when the original was never attempted, and sent when
an attempt may have arrived (a dead letter whose ACK was lost).  A draft delivery whose report was
withdrawn, rejected or superseded meanwhile is cancelled instead of sent
(:func:`integration.store.deliveries.start_attempt`).

Every outcome is audited (actor ``system``, object the delivery): ``export.delivered``, ``export.failed``
(an attempt failed, another follows) or ``export.dead_letter``, in the same transaction as the state it
records.  The detail names the destination, the document, the report version and the attempt; never the
report's text, nor the error (which may quote a peer's answer: it stays in ``deliveries.last_error``).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from integration.config import Settings, get_settings
from integration.export.documents import DocumentUnavailable, load_document
from integration.export.outgoing import DeliveryFailed
from integration.export.senders import send
from integration.live_config import live_settings
from integration.queue import DELIVER
from integration.store.audit import add_event
from integration.store.deliveries import Deferred, DeliveryTarget, mark_delivered, mark_failed, start_attempt
from integration.store.session import session_scope
from integration.store.tables import utcnow
from worker.celery_app import app

log = logging.getLogger(__name__)


def backoff_seconds(settings: Settings, attempt: int) -> float:
    """Return the wait before the attempt after ``attempt`` (doubling, capped)."""
    return float(min(settings.delivery_backoff_seconds * 2 ** (attempt - 1), settings.delivery_backoff_max_seconds))


@app.task(name=DELIVER, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)  # type: ignore[untyped-decorator]
def deliver(self: Any, delivery_id: int) -> str:
    """Deliver one document; safe to run more than once.

    Parameters
    ----------
    self : celery.Task
        The bound task (for retries).
    delivery_id : int
        The delivery row.

    Returns
    -------
    str
        What happened, for the worker's log.
    """
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        target = start_attempt(session, delivery_id, min_wait=settings.delivery_backoff_seconds)
    if target is None:
        return "not pending"
    if isinstance(target, Deferred):
        log.info("withdrawal %d waits %.0f s for its original draft delivery", delivery_id, target.wait_seconds)
        raise self.retry(countdown=target.wait_seconds)
    destinations = live_settings(settings).destinations  # a destination added while the worker runs is known
    destination = next((d for d in destinations if d.name == target.destination), None)
    try:
        if destination is None:
            raise DeliveryFailed(f"destination {target.destination!r} is no longer configured")
        document = load_document(settings, target)
        receipt = send(destination, document, calling_ae=settings.ae_title)
    except (DeliveryFailed, DocumentUnavailable) as exc:
        return _failed(self, settings, target, str(exc))
    except Exception as exc:  # an unexpected error is still a failed attempt, never a lost delivery
        log.exception("delivery %d: unexpected error", delivery_id)
        return _failed(self, settings, target, f"{type(exc).__name__}: {exc}")
    with session_scope(settings.database_url) as session:
        _audit(session, target, "export.delivered")
        mark_delivered(session, delivery_id, utcnow())  # the scope commits the audit row with the state
    log.info("delivery %d (%s %s to %s): %s", delivery_id, target.subject, target.document, target.destination, receipt)
    return "delivered"


def _audit(session: Session, target: DeliveryTarget, action: str) -> None:
    """Add the audit row of one delivery outcome (committed with the delivery's new state)."""
    add_event(
        session,
        actor="system",
        action=action,
        object_type="delivery",
        object_id=str(target.delivery_id),
        detail={
            "destination": target.destination,
            "document": target.document,
            "subject": target.subject,
            "report_id": target.report_id,
            "attempt": target.attempt,
        },
    )


def _failed(task: Any, settings: Settings, target: DeliveryTarget, error: str) -> str:
    dead = target.attempt >= settings.delivery_max_attempts
    wait = backoff_seconds(settings, target.attempt)
    with session_scope(settings.database_url) as session:
        _audit(session, target, "export.dead_letter" if dead else "export.failed")
        mark_failed(session, target.delivery_id, error, dead=dead, next_attempt_at=utcnow() + timedelta(seconds=wait))
    if dead:
        log.error("delivery %d is dead letter after %d attempts: %s", target.delivery_id, target.attempt, error)
        return "dead_letter"
    log.warning("delivery %d attempt %d failed (%s); next in %.0f s", target.delivery_id, target.attempt, error, wait)
    raise task.retry(countdown=wait)
