"""RIS orders: applying an order control, linking studies to their order, and what the order changes.

An order arrives as an :class:`~integration.orders.order.OrderMessage` (HL7 ORM/OMI or FHIR ServiceRequest)
and may come before or after its study, so both sides link: :func:`apply_order` links the studies that
name its accession number, and :func:`link_order` (called by ingest for a new current study) links a study
to an order already held.  A study matches an order only on the same accession number AND the same patient
ID AND a compatible issuer (equal, or either side has none); a study whose accession number names only other
patients' orders is never merged: it is flagged (``studies.order_problem``) for the worklist.  Orders and
studies of different sites never link either.

The order then changes its studies: stat priority raises the study's priority (and the job's queue, see
:func:`integration.store.jobs.complete_stable_studies`); a cancel (CA) or discontinue (DC) before the study
was drafted cancels the study and its queued or running jobs; after a draft exists, the primary draft is
withdrawn and its id returned, so the caller can send the withdrawal to every receiver once its transaction
has committed.  Like every store module, nothing here commits: the caller's transaction does.  Patient
data (IDs, accession numbers, indications) never goes into a log line or an audit event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy import insert as sql_insert
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.opinions import STAT
from integration.store.order_tables import Order, OrderEvent, OrderStatus
from integration.store.priority import settle_priority
from integration.store.tables import (
    ROLE_CURRENT,
    AnalysisJob,
    JobState,
    Report,
    ReportPurpose,
    ReportStatus,
    Study,
    StudyState,
)

#: Order controls (HL7 ORC-1; :class:`integration.orders.order.OrderControl` values).
NEW, CHANGE, CANCEL, DISCONTINUE = "NW", "XO", "CA", "DC"

#: ``studies.order_problem`` of a study whose accession number names only other patients' orders.
OTHER_PATIENT = "order is for another patient"
#: ``studies.order_problem`` of a study whose accession number names only other sites' orders.
OTHER_SITE = "order is for another site"
#: ``studies.order_problem`` of a study with an accession number of held orders but no patient ID to match.
NO_PATIENT_ID = "study has no patient ID to match its order"

#: Why :func:`apply_order` refused (``OrderResult.refusal``): a cancel for an order not held, another site's
#: order, a new or changed order for an order that was cancelled or discontinued.
NOT_HELD, ANOTHER_SITE, STOPPED = "not held", "another site", "stopped"

#: Outcomes of :func:`apply_order`.
CREATED, CHANGED, CANCELLED, DISCONTINUED, UNCHANGED, REFUSED = (
    "created",
    "changed",
    "cancelled",
    "discontinued",
    "unchanged",
    "refused",
)

#: Order fields an NW or XO sets (a field the message leaves out, None, keeps its value).
_FIELDS = (
    "placer_order_number",
    "filler_order_number",
    "procedure_code",
    "procedure_coding_system",
    "procedure_text",
    "indication",
    "ordering_provider",
    "modality",
    "scheduled_at",
)
#: Study states a cancel or discontinue leaves as they are: ended ones (a signed report stays signed), and
#: those not yet complete (receiving, held), which the assembler cancels when it completes them.
_LEFT_ALONE = frozenset(
    {StudyState.SIGNED, StudyState.SUPERSEDED, StudyState.CANCELLED, StudyState.RECEIVING, StudyState.HELD}
)
#: Job states a cancelled order ends.
_OPEN_JOBS = (JobState.QUEUED, JobState.RUNNING)
_STOPPED = {CANCEL: OrderStatus.CANCELLED, DISCONTINUE: OrderStatus.DISCONTINUED}


class OrderMessage(Protocol):
    """What applying needs of an order message (:class:`integration.orders.order.OrderMessage` is one).

    A protocol, so the store imports nothing of the order parsers above it (no folder cycle).  ``control``
    and ``priority`` are string enums (``"NW"``, ``"stat"``).
    """

    @property
    def control(self) -> str:
        """NW, XO, CA or DC."""

    @property
    def accession_number(self) -> str:
        """The accession number."""

    @property
    def patient_id(self) -> str:
        """The patient ID."""

    @property
    def issuer_of_patient_id(self) -> str:
        """The issuer of the patient ID (``""`` when not sent)."""

    @property
    def priority(self) -> str:
        """``routine`` or ``stat``."""

    @property
    def message_id(self) -> str | None:
        """HL7 MSH-10 or the FHIR resource id/version."""

    @property
    def placer_order_number(self) -> str | None:
        """The placer's order number."""

    @property
    def filler_order_number(self) -> str | None:
        """The filler's (RIS) order number."""

    @property
    def procedure_code(self) -> str | None:
        """The requested procedure's code."""

    @property
    def procedure_coding_system(self) -> str | None:
        """Its coding system."""

    @property
    def procedure_text(self) -> str | None:
        """The requested procedure as text."""

    @property
    def indication(self) -> str | None:
        """Reason for exam (cleaned)."""

    @property
    def ordering_provider(self) -> str | None:
        """Who ordered it (display text)."""

    @property
    def modality(self) -> str | None:
        """The ordered modality."""

    @property
    def scheduled_at(self) -> datetime | None:
        """When it is scheduled (aware UTC)."""


@dataclass(frozen=True)
class OrderResult:
    """What applying one order message did.

    Attributes
    ----------
    order_id : int or None
        The order (None when refused before one was found or made).
    outcome : str
        ``created``, ``changed``, ``cancelled``, ``discontinued``, ``unchanged`` or ``refused``.
    reason : str or None
        With ``refused``: why, safe to send back (names no patient data).
    refusal : str or None
        With ``refused``: which refusal (:data:`NOT_HELD`, :data:`ANOTHER_SITE`, :data:`STOPPED`), for the
        caller's own error codes.
    studies : list of int
        Ids of the studies linked to the order after it was applied.
    withdrawn_reports : list of int
        Primary draft reports withdrawn by a cancel or discontinue after drafting; the caller passes them to
        :func:`integration.export.corrections.withdraw_reports` after its transaction has committed.
    """

    order_id: int | None
    outcome: str
    reason: str | None = None
    studies: list[int] = field(default_factory=list)
    withdrawn_reports: list[int] = field(default_factory=list)
    refusal: str | None = None


@dataclass(frozen=True)
class OrderView:
    """The order of a study, as the worker (prompt), the worklist and the API show it.

    Attributes
    ----------
    accession_number : str
        The order's accession number.
    indication : str or None
        Reason for exam (cleaned): the clinical question of the prompt.
    priority : str
        ``routine`` or ``stat``.
    procedure_text, procedure_code : str or None
        The requested procedure.
    ordering_provider : str or None
        Who ordered it (display text).
    modality : str or None
        The ordered modality.
    scheduled_at : datetime or None
        When it is scheduled (aware UTC).
    status : str
        ``scheduled``, ``cancelled`` or ``discontinued``.
    """

    accession_number: str
    indication: str | None
    priority: str
    procedure_text: str | None
    procedure_code: str | None
    ordering_provider: str | None
    modality: str | None
    scheduled_at: datetime | None
    status: str

    @property
    def stopped(self) -> bool:
        """Whether the order was cancelled or discontinued (its study is not drafted)."""
        return self.status != OrderStatus.SCHEDULED.value


def apply_order(
    session: Session,
    message: OrderMessage,
    *,
    source: str,
    sender: str,
    site_id: int | None,
    now: datetime,
) -> OrderResult:
    """Apply one order control (NW, XO, CA, DC) to the order it names, then to the order's studies.

    NW creates the order, or updates it like XO when it is held already (a RIS sending it again); XO changes
    the fields it carries (an XO for an order not held creates it: it carries the whole order); CA and DC
    set the status.  Every applied control adds an :class:`OrderEvent` (changed field names, status before
    and after; no values).  A control for a cancelled or discontinued order (other than CA/DC again), a CA or
    DC for an order not held, and a control from another site than the order's are refused.  On PostgreSQL
    the order row is locked, so concurrent messages for one order apply one after the other.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session; nothing is committed here.
    message : OrderMessage
        The validated order message.
    source : str
        ``hl7`` or ``fhir``.
    sender : str
        HL7 ``<application>^<facility>`` or the API user.
    site_id : int or None
        The sender's site: a new order belongs to it; an order of another site is not changed.
    now : datetime
        Current time (aware, UTC).

    Returns
    -------
    OrderResult
        What happened; ``refused`` with a reason that is safe to send back.
    """
    control = str(message.control)
    order = _find_order(session, message)
    if order is None and control in _STOPPED:
        return OrderResult(None, REFUSED, f"{control} for an order we do not hold", refusal=NOT_HELD)
    if order is not None and site_id is not None and order.site_id is not None and order.site_id != site_id:
        return OrderResult(None, REFUSED, "the order belongs to another site", refusal=ANOTHER_SITE)
    created = False
    if order is None:
        order, created = _create_order(session, message, source=source, sender=sender, site_id=site_id, now=now)
    before = order.status
    if control not in _STOPPED and before != OrderStatus.SCHEDULED.value:
        return OrderResult(order.id, REFUSED, f"{control} for an order that is {before}", refusal=STOPPED)
    changed: list[str] = []
    if control in _STOPPED:
        after = _STOPPED[control].value
        if before == OrderStatus.CANCELLED.value:
            after = before  # a cancelled order stays cancelled (a DC after a CA changes nothing)
        if after != before:
            order.status = after
            changed.append("status")
    else:
        changed = [] if created else _update_fields(order, message)
    if changed:
        order.updated_at = now
    if created:
        outcome = CREATED
    elif not changed:
        outcome = UNCHANGED
    elif "status" in changed:
        outcome = CANCELLED if order.status == OrderStatus.CANCELLED.value else DISCONTINUED
    else:
        outcome = CHANGED
    session.execute(  # a plain INSERT of the history row (no unit of work to flush)
        sql_insert(OrderEvent).values(
            order_id=order.id,
            control=control,
            source=source,
            sender=sender[:128],
            message_id=message.message_id,
            received_at=now,
            detail={"outcome": outcome, "changed": changed, "status_before": before, "status_after": order.status},
        )
    )
    studies, withdrawn = _apply_to_studies(session, order, actor=f"{source}:{sender}", now=now)
    session.flush()
    return OrderResult(order.id, outcome, None, studies, withdrawn)


def link_order(session: Session, study: Study) -> None:
    """Link a current study to its order by accession number, patient ID and issuer, or flag why not.

    Reads the study's ``accession_number``, ``patient_id`` and ``issuer_of_patient_id`` (ingest sets them from
    the first instance's header).  A matching order links it (``study.order_id``; a stat order raises the
    study's priority); when only other patients' (or other sites') orders carry its accession number,
    ``study.order_problem`` says so and nothing is linked.  Priors and studies without an accession number
    are left alone.  Nothing is committed.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The study (a new current study, or one whose attributes changed).
    """
    if study.role != ROLE_CURRENT or not study.accession_number:
        return
    orders = session.scalars(select(Order).where(Order.accession_number == study.accession_number.strip())).all()
    _link(study, orders)


def order_for_study(session: Session, study_id: int) -> OrderView | None:
    """Return the order a study is linked to, or None.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study_id : int
        The study's row id.

    Returns
    -------
    OrderView or None
        The linked order's view.
    """
    order = session.scalars(select(Order).join(Study, Study.order_id == Order.id).where(Study.id == study_id)).first()
    if order is None:
        return None
    return OrderView(
        accession_number=order.accession_number,
        indication=order.indication,
        priority=order.priority,
        procedure_text=order.procedure_text,
        procedure_code=order.procedure_code,
        ordering_provider=order.ordering_provider,
        modality=order.modality,
        scheduled_at=order.scheduled_at,
        status=order.status,
    )


def matches(order: Order, study: Study) -> bool:
    """Whether a study belongs to an order: same accession number, same patient ID, compatible issuer and site.

    Issuers are compatible when equal or when either side has none; sites when equal or either has none.
    """
    if not study.accession_number or study.accession_number.strip() != order.accession_number:
        return False
    return _same_patient(order, study) and _same_site(order, study)


def _same_patient(order: Order, study: Study) -> bool:
    if not study.patient_id or study.patient_id.strip() != order.patient_id.strip():
        return False
    ours, theirs = (study.issuer_of_patient_id or "").strip(), order.issuer_of_patient_id.strip()
    return not ours or not theirs or ours == theirs


def _same_site(order: Order, study: Study) -> bool:
    return order.site_id is None or study.site_id is None or order.site_id == study.site_id


def _link(study: Study, orders: Sequence[Order]) -> None:
    """Link the study to the best matching order among those with its accession number, or flag it."""
    if not orders:
        return
    matching = [order for order in orders if matches(order, study)]
    if matching:
        issuer = (study.issuer_of_patient_id or "").strip()
        # an order of the same issuer before one without; then the newest
        best = max(matching, key=lambda o: (o.issuer_of_patient_id == issuer, o.id))
        study.order_id, study.order_problem = best.id, None
        if best.priority == STAT:
            study.priority = STAT
        return
    if study.order_id is not None and study.order_id not in {order.id for order in orders}:
        return  # linked to an order of another accession number: not ours to judge here
    study.order_id = None
    if not study.patient_id:
        study.order_problem = NO_PATIENT_ID
    elif any(_same_patient(order, study) for order in orders):
        study.order_problem = OTHER_SITE
    else:
        study.order_problem = OTHER_PATIENT


def _find_order(session: Session, message: OrderMessage) -> Order | None:
    """The held order a message names: its key exactly, else the one order of that patient with a compatible issuer."""
    query = select(Order).where(
        Order.accession_number == message.accession_number.strip(),
        Order.patient_id == message.patient_id.strip(),
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    candidates = session.scalars(query.order_by(Order.id)).all()
    issuer = message.issuer_of_patient_id.strip()
    exact = [order for order in candidates if order.issuer_of_patient_id == issuer]
    if exact:
        return exact[0]
    compatible = [order for order in candidates if not issuer or not order.issuer_of_patient_id]
    return compatible[0] if len(compatible) == 1 else None


def _create_order(
    session: Session, message: OrderMessage, *, source: str, sender: str, site_id: int | None, now: datetime
) -> tuple[Order, bool]:
    """Insert the order and return it locked, and whether this call inserted it (a concurrent insert may win)."""
    values = {
        "accession_number": message.accession_number.strip(),
        "patient_id": message.patient_id.strip(),
        "issuer_of_patient_id": message.issuer_of_patient_id.strip(),
        "priority": str(message.priority),
        "status": OrderStatus.SCHEDULED.value,
        "source": source,
        "sender": sender[:128],
        "site_id": site_id,
        "created_at": now,
        "updated_at": now,
        **{name: getattr(message, name) for name in _FIELDS},
    }
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    # An inserted row comes back as the entity (one round trip; ours to change until commit).
    inserted = session.scalars(
        insert(Order)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["accession_number", "patient_id", "issuer_of_patient_id"])
        .returning(Order)
    ).one_or_none()
    if inserted is not None:
        return inserted, True
    query = select(Order).where(
        Order.accession_number == values["accession_number"],
        Order.patient_id == values["patient_id"],
        Order.issuer_of_patient_id == values["issuer_of_patient_id"],
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    order = session.scalars(query.execution_options(populate_existing=True)).one()
    return order, False


def _update_fields(order: Order, message: OrderMessage) -> list[str]:
    """Set the fields the message carries; return the names of those that changed."""
    changed = []
    for name in _FIELDS:
        value = getattr(message, name)
        if value is not None and getattr(order, name) != value:
            setattr(order, name, value)
            changed.append(name)
    if order.priority != str(message.priority):
        order.priority = str(message.priority)
        changed.append("priority")
    return changed


def _apply_to_studies(session: Session, order: Order, *, actor: str, now: datetime) -> tuple[list[int], list[int]]:
    """Link the studies naming the order's accession number, then apply priority and cancellation to them."""
    candidates = session.scalars(
        select(Study)
        .where(Study.accession_number == order.accession_number, Study.role == ROLE_CURRENT)
        .order_by(Study.id)
    ).all()
    if not candidates:  # the usual case: the order comes before its study (no second query)
        return [], []
    others = session.scalars(select(Order).where(Order.accession_number == order.accession_number)).all()
    linked: list[Study] = []
    for study in candidates:
        _link(study, others)
        if study.order_id == order.id:
            linked.append(study)
    withdrawn: list[int] = []
    stopped = order.status != OrderStatus.SCHEDULED.value
    for study in linked:
        if order.priority == STAT:
            study.priority = STAT
        else:
            settle_priority(session, study, now)  # the RIS lowered it (XO): stat only while stat work is open
        if stopped and study.state not in _LEFT_ALONE:
            withdrawn += _stop_study(session, study, order.status, actor=actor, now=now)
    return [study.id for study in linked], withdrawn


def _stop_study(session: Session, study: Study, status: str, *, actor: str, now: datetime) -> list[int]:
    """Cancel a study whose order was cancelled or discontinued: its open jobs end, its primary draft is withdrawn."""
    reason = f"the order was {status}"
    jobs = session.scalars(
        select(AnalysisJob).where(AnalysisJob.study_id == study.id, AnalysisJob.state.in_(_OPEN_JOBS))
    ).all()
    for job in jobs:
        job.state, job.finished_at, job.last_error = JobState.CANCELLED, now, reason
    drafts = session.scalars(
        select(Report).where(
            Report.study_id == study.id,
            Report.purpose == ReportPurpose.PRIMARY,
            Report.status == ReportStatus.DRAFT,
        )
    ).all()
    for report in drafts:
        report.status = ReportStatus.WITHDRAWN
    study.state = StudyState.CANCELLED
    study.updated_at = now
    withdrawn = [report.id for report in drafts]
    add_event(
        session,
        actor=actor,
        action="study.cancelled",
        object_type="study",
        object_id=study.study_uid,
        detail={"reason": reason, "jobs_cancelled": [job.id for job in jobs], "reports_withdrawn": withdrawn},
    )
    return withdrawn
