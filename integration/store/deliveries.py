"""Deliveries of report documents to destinations: the outbox rows, attempts, dead letters, retries, withdrawals.

A delivery's subject names what it sends: ``draft:<report id>``, ``signed:<revision id>``, or
``withdrawn:<report id>`` (the correction that takes back a draft a receiver got or may have got, see
:func:`plan_withdrawals`).  A withdrawal is only sent after its original draft delivery settled
(:func:`start_attempt` defers it meanwhile), so a receiver never gets the retraction before the draft.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from integration.store.session import dialect_insert
from integration.store.tables import (
    Delivery,
    DeliveryState,
    Report,
    ReportRevision,
    ReportStatus,
    RevisionStatus,
    utcnow,
)

#: Subject prefixes: a draft, a signed revision, the withdrawal of a draft.
DRAFT = "draft:"
SIGNED = "signed:"
WITHDRAWN = "withdrawn:"
#: Report states of a draft that must not reach anyone any more (its unsent deliveries are cancelled).
CLOSED_DRAFT = frozenset({ReportStatus.WITHDRAWN, ReportStatus.REJECTED, ReportStatus.SUPERSEDED})


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


@dataclass(frozen=True)
class Deferred:
    """A withdrawal that waits for its original draft delivery to settle (no attempt counted).

    Attributes
    ----------
    delivery_id : int
        The withdrawal delivery.
    wait_seconds : float
        When to look again: after the original's next attempt is due, at least the minimum wait.
    """

    delivery_id: int
    wait_seconds: float


@dataclass(frozen=True)
class Withdrawals:
    """What :func:`plan_withdrawals` did.

    Attributes
    ----------
    created : list of int
        New withdrawal deliveries (pending; the caller commits, then sends their messages).
    cancelled : list of int
        Draft deliveries cancelled before anything left (pending and never attempted, or dead letter).
    reports : dict of int to tuple of int
        Per report that changed: (withdrawals created, deliveries cancelled).
    skipped : list of int
        Reports not withdrawn: unknown, or not closed (still a draft, or signed).
    """

    created: list[int]
    cancelled: list[int]
    reports: dict[int, tuple[int, int]]
    skipped: list[int]


def subject_of(report_id: int, revision_id: int | None) -> str:
    """Return the subject key of a report version: ``draft:<report id>`` or ``signed:<revision id>``."""
    return f"{DRAFT}{report_id}" if revision_id is None else f"{SIGNED}{revision_id}"


def withdrawal_subject(report_id: int) -> str:
    """Return the subject of a draft's withdrawal: ``withdrawn:<report id>``."""
    return f"{WITHDRAWN}{report_id}"


def create_deliveries(
    session: Session, report_id: int, revision_id: int | None, planned: Iterable[PlannedDelivery], now: datetime
) -> list[int]:
    """Create the deliveries of one report version (existing ones are kept); the caller commits, then sends.

    ``revision_id`` is the signed revision, or None for the draft; ``planned`` gives destination and
    document pairs; ``now`` is aware UTC. Returns the ids of this version's deliveries that are still
    pending (new or earlier), to send.
    """
    subject = subject_of(report_id, revision_id)
    insert = dialect_insert(session)
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


def start_attempt(
    session: Session, delivery_id: int, *, now: datetime | None = None, min_wait: float = 1.0
) -> DeliveryTarget | Deferred | None:
    """Count an attempt of a pending delivery (its row locked); return what to send.

    None when it is not pending (delivered, dead letter, cancelled or unknown: a duplicate message changes
    nothing), or when it is cancelled now instead of sent:

    - a draft delivery whose report was withdrawn, rejected or superseded meanwhile (the draft must not reach
      anyone any more; when an earlier attempt may have reached the receiver, its withdrawal takes it back);
    - a withdrawal whose original draft delivery was never attempted (nothing to take back).  An original that
      was attempted and then cancelled or given up (dead letter) may still have arrived (a RIS that stored the
      message but whose ACK was lost): its withdrawal is sent.

    A withdrawal whose original draft delivery is still pending is :class:`Deferred` (no attempt counted;
    its ``next_attempt_at`` moves to the original's next attempt, at least ``min_wait`` seconds away), so
    the retraction always follows the draft.  The task calls it in a short session scope of its own, so
    the lock is gone before the document is sent.  ``now`` is aware UTC (default: the current time).
    """
    query = select(Delivery).where(Delivery.id == delivery_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    delivery = session.scalars(query).one_or_none()
    if delivery is None or delivery.state != DeliveryState.PENDING:
        return None
    now = now or utcnow()
    if delivery.subject.startswith(WITHDRAWN):
        original = session.scalars(
            select(Delivery).where(
                Delivery.subject == subject_of(delivery.report_id, None),
                Delivery.destination == delivery.destination,
                Delivery.document == delivery.document,
            )
        ).one_or_none()
        ended = original is not None and original.state in (DeliveryState.CANCELLED, DeliveryState.DEAD_LETTER)
        if original is None or (ended and original.attempts == 0):
            _cancel(delivery)
            return None
        if original.state == DeliveryState.PENDING:
            due = original.next_attempt_at or now
            wait = max(min_wait, (due - now).total_seconds() + min_wait)
            delivery.next_attempt_at = now + timedelta(seconds=wait)
            return Deferred(delivery.id, wait)
    elif delivery.subject.startswith(DRAFT):
        status = session.scalar(select(Report.status).where(Report.id == delivery.report_id))
        if status in CLOSED_DRAFT:
            _cancel(delivery)
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


def _cancel(delivery: Delivery) -> None:
    delivery.state = DeliveryState.CANCELLED
    delivery.next_attempt_at = None


def plan_withdrawals(session: Session, report_ids: Iterable[int], now: datetime) -> Withdrawals:
    """Take back the drafts of closed reports from every destination; the caller commits, then sends.

    For each draft delivery (``draft:<report id>``) of a report that is withdrawn, rejected or superseded,
    its row locked:

    - delivered, or pending or dead letter with an attempt made (it may be in flight, or at a receiver whose
      answer was lost): a new pending delivery ``withdrawn:<report id>`` for the same destination and document
      (sent after the original settles, see :func:`start_attempt`); a dead letter is also ``cancelled``, so a
      retry never sends the draft again;
    - pending or dead letter and never attempted: ``cancelled`` (no receiver holds it);
    - cancelled already: nothing.

    Idempotent: a second call finds the withdrawals made and the deliveries cancelled, and adds nothing.
    Reports that are unknown or not closed (a draft still under review, a signed report) are skipped.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    report_ids : iterable of int
        The reports.
    now : datetime.datetime
        Aware UTC; the withdrawals' creation and first due time.

    Returns
    -------
    Withdrawals
        The withdrawals created, the deliveries cancelled, per report what changed, and the reports skipped.
    """
    ids = sorted(set(report_ids))
    statuses = {
        row.id: row.status for row in session.execute(select(Report.id, Report.status).where(Report.id.in_(ids)))
    }
    closed = [report_id for report_id in ids if statuses.get(report_id) in CLOSED_DRAFT]
    result = Withdrawals([], [], {}, [report_id for report_id in ids if report_id not in closed])
    if not closed:
        return result
    query = (
        select(Delivery)
        .where(Delivery.subject.in_([subject_of(report_id, None) for report_id in closed]))
        .order_by(Delivery.id)
    )
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        query = query.with_for_update()
    insert = dialect_insert(session)
    counts: dict[int, list[int]] = {}
    for delivery in session.scalars(query).all():
        count = counts.setdefault(delivery.report_id, [0, 0])
        sent = delivery.state == DeliveryState.DELIVERED
        tried = delivery.state in (DeliveryState.PENDING, DeliveryState.DEAD_LETTER) and delivery.attempts > 0
        if sent or tried:
            if delivery.state == DeliveryState.DEAD_LETTER:
                _cancel(delivery)
            created = session.execute(
                insert(Delivery)
                .values(
                    report_id=delivery.report_id,
                    revision_id=None,
                    subject=withdrawal_subject(delivery.report_id),
                    destination=delivery.destination,
                    document=delivery.document,
                    state=DeliveryState.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
                .on_conflict_do_nothing()
                .returning(Delivery.id)
            ).scalar_one_or_none()
            if created is not None:
                result.created.append(int(created))
                count[0] += 1
        elif delivery.state in (DeliveryState.PENDING, DeliveryState.DEAD_LETTER):
            _cancel(delivery)
            result.cancelled.append(delivery.id)
            count[1] += 1
    session.flush()
    result.reports.update({report_id: (c[0], c[1]) for report_id, c in counts.items() if c != [0, 0]})
    return result


def withdrawal_created_at(session: Session, delivery_id: int) -> datetime | None:
    """Return when a delivery row was made (a withdrawal's documents carry it as their issue time)."""
    return session.scalar(select(Delivery.created_at).where(Delivery.id == delivery_id))


def earlier_signed_revision(session: Session, revision_id: int) -> bool:
    """Tell whether a signed revision follows an earlier signed revision of its report (so it amends it)."""
    revision = session.get(ReportRevision, revision_id)
    if revision is None:
        return False
    earlier = session.scalar(
        select(ReportRevision.id)
        .where(
            ReportRevision.report_id == revision.report_id,
            ReportRevision.version < revision.version,
            ReportRevision.status == RevisionStatus.SIGNED,
        )
        .limit(1)
    )
    return earlier is not None


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
    is aware UTC.  Delivered and cancelled deliveries are never made pending again (a cancelled one
    belongs to a withdrawn draft, or is a withdrawal with nothing to take back).
    """
    query = select(Delivery.id).where(Delivery.state.not_in([DeliveryState.DELIVERED, DeliveryState.CANCELLED]))
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
