"""Deliveries of report documents to destinations: the outbox rows, attempts, dead letters, retries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from integration.store.tables import Delivery, DeliveryState


@dataclass(frozen=True)
class DeliveryTarget:
    """One delivery being attempted."""

    delivery_id: int
    report_id: int
    revision_id: int | None
    subject: str
    destination: str
    document: str
    attempt: int


@dataclass(frozen=True)
class PlannedDelivery:
    """A document for a destination, to be created if it does not exist yet."""

    destination: str
    document: str


def subject_of(report_id: int, revision_id: int | None) -> str:
    """Return the subject key of a report version: ``draft:<report id>`` or ``signed:<revision id>``."""
    return f"draft:{report_id}" if revision_id is None else f"signed:{revision_id}"


def create_deliveries(
    session: Session, report_id: int, revision_id: int | None, planned: Iterable[PlannedDelivery], now: datetime
) -> list[int]:
    """Create the deliveries of one report version (existing ones are kept); the caller commits, then sends.

    ``revision_id`` is the signed revision, or None for the draft; ``planned`` gives destination and
    document pairs; ``now`` is aware UTC. Returns the ids of this version's deliveries that are still
    pending (new or earlier), to send.
    """
    subject = subject_of(report_id, revision_id)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for item in planned:
        session.execute(
            insert(Delivery)
            .values(
                report_id=report_id,
                revision_id=revision_id,
                subject=subject,
                destination=item.destination,
                document=item.document,
                state=DeliveryState.PENDING.value,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            .on_conflict_do_nothing()
        )
    ids = list(
        session.scalars(
            select(Delivery.id)
            .where(Delivery.subject == subject, Delivery.state == DeliveryState.PENDING)
            .order_by(Delivery.id)
        )
    )
    return ids


def start_attempt(session: Session, delivery_id: int) -> DeliveryTarget | None:
    """Count an attempt of a pending delivery (its row locked); return what to send.

    None when it is not pending (delivered, dead letter or unknown: a duplicate message changes nothing).
    The task calls it in a short session scope of its own, so the lock is gone before the document is sent.
    """
    query = select(Delivery).where(Delivery.id == delivery_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    delivery = session.scalars(query).one_or_none()
    if delivery is None or delivery.state != DeliveryState.PENDING:
        return None
    delivery.attempts += 1
    target = DeliveryTarget(
        delivery.id,
        delivery.report_id,
        delivery.revision_id,
        delivery.subject,
        delivery.destination,
        delivery.document,
        delivery.attempts,
    )
    return target


def mark_delivered(session: Session, delivery_id: int, now: datetime) -> None:
    """Record a successful delivery."""
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(state=DeliveryState.DELIVERED.value, delivered_at=now, last_error=None, next_attempt_at=None)
    )


def mark_failed(
    session: Session, delivery_id: int, error: str, *, dead: bool, next_attempt_at: datetime | None
) -> None:
    """Record a failed attempt.

    ``error`` says what went wrong (no patient data; capped at 2000 characters); ``dead`` means no
    attempts are left: the delivery becomes ``dead_letter``; else the next attempt is due at
    ``next_attempt_at``.
    """
    values: dict[str, object] = {"last_error": error[:2000], "next_attempt_at": None if dead else next_attempt_at}
    if dead:
        values["state"] = DeliveryState.DEAD_LETTER.value
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


def retry_deliveries(session: Session, delivery_ids: Sequence[int] | None, now: datetime) -> list[int]:
    """Make dead-letter deliveries pending again with fresh attempts; return those to send.

    ``delivery_ids`` names deliveries (dead letter or pending), or None for every dead letter; ``now``
    is aware UTC.
    """
    query = select(Delivery.id).where(Delivery.state != DeliveryState.DELIVERED)
    if delivery_ids is None:
        query = query.where(Delivery.state == DeliveryState.DEAD_LETTER)
    else:
        query = query.where(Delivery.id.in_(list(delivery_ids)))
    ids = list(session.scalars(query.order_by(Delivery.id)))
    if ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=now)
        )
    return ids


def list_deliveries(session: Session, state: DeliveryState | None = None, limit: int = 100) -> list[Delivery]:
    """Return at most ``limit`` deliveries, newest first, optionally in one state.

    The rows are detached from the session once it closes; read attributes only.
    """
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Delivery.state == state)
    return list(session.scalars(query))


def deliveries_to_resend(session: Session, now: datetime, overdue_seconds: float, *, everything: bool) -> list[int]:
    """Return pending deliveries whose message may be lost, and mark them as re-sent now.

    A pending delivery is due at ``next_attempt_at``; one still pending ``overdue_seconds`` after that
    lost its message (a broker restarted without persistence, a worker gone with a held retry). After
    a broker restart (``everything``) every pending delivery is re-sent.  A duplicate message is
    harmless: an attempt starts only on a pending delivery, and re-sending a document leaves no
    duplicate at the destination. ``now`` is aware UTC.
    """
    query = select(Delivery.id).where(Delivery.state == DeliveryState.PENDING)
    if not everything:
        query = query.where(Delivery.next_attempt_at < now - timedelta(seconds=overdue_seconds))
    ids = list(session.scalars(query.order_by(Delivery.id).limit(500)))
    if ids:
        session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(next_attempt_at=now))
    return ids
