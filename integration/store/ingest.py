"""Recording received instances: one short transaction per instance.

The transaction upserts the study (restarting its idle timer and, for a late
arrival, bumping its version), upserts the series and inserts the instance.
A SOP Instance UID already present in the same study is a duplicate: it adds
nothing, but while the study is still receiving it restarts the idle timer
(a sender re-sending a study is still sending it).  An instance whose series,
or whose SOP instance, belongs to another study is a conflict: nothing is
written, so no sender can slip an image into another patient's study through
a reused UID.  An instance that opens a study (sent to be drafted) also
opens the study's prior search, in the same transaction.  An instance sent as
a prior (a C-MOVE or C-GET arrival of a requested prior) joins only a study
reserved as a prior (:func:`integration.store.priors.reserve_prior_study`);
anything else is refused.  On PostgreSQL the writes and the checks are one statement
(data-modifying CTEs that read the pre-statement snapshot), so an instance
costs one round trip plus the commit; SQLite runs them one by one (it is
in-process, round trips are free).  The same statement says whether a
procedure step (MPPS) of the study has ended; only then is the study settled by
it, in the same transaction (:func:`integration.store.mpps.instance_arrived`).
A study held because its step was discontinued stays held as instances arrive.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Table, case, func, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.mpps import instance_arrived
from integration.store.order_tables import PerformedStep
from integration.store.orders import link_order
from integration.store.session import session_scope
from integration.store.tables import (
    ROLE_CURRENT,
    ROLE_PRIOR,
    Instance,
    PriorSearch,
    PriorSearchState,
    Series,
    Study,
    StudyState,
)

log = logging.getLogger(__name__)


class ReceivedInstance(Protocol):
    """What recording needs of an instance's validated header (the intake's ``InstanceHeader`` is one).

    A protocol, so the store depends on no layer above it.
    """

    @property
    def study_uid(self) -> str:
        """Study Instance UID."""

    @property
    def series_uid(self) -> str:
        """Series Instance UID."""

    @property
    def sop_instance_uid(self) -> str:
        """SOP Instance UID."""

    @property
    def sop_class_uid(self) -> str:
        """SOP Class UID."""

    @property
    def transfer_syntax_uid(self) -> str:
        """Transfer syntax of the stored data set."""

    @property
    def modality(self) -> str | None:
        """Modality, when present."""

    @property
    def body_part(self) -> str | None:
        """Body Part Examined, when present."""

    @property
    def series_number(self) -> int | None:
        """Series Number, when numeric."""

    @property
    def instance_number(self) -> int | None:
        """Instance Number, when numeric."""

    @property
    def patient_key(self) -> str | None:
        """Digest of the patient identity (never the values)."""

    @property
    def accession_number(self) -> str | None:
        """Accession Number: with the patient ID and issuer, what a new study is matched to its order by."""

    @property
    def patient_id(self) -> str | None:
        """Patient ID (patient data: never logged)."""

    @property
    def issuer_of_patient_id(self) -> str | None:
        """Issuer of Patient ID."""


class Conflict(enum.StrEnum):
    """Why an instance cannot join the study it names (nothing is written)."""

    #: Its Series Instance UID is a series of another study.
    SERIES = "series"
    #: Its SOP Instance UID is stored in another study.
    INSTANCE = "instance"
    #: Its patient identity (ID, issuer, name, birth date) differs from the study's.
    PATIENT = "patient"
    #: The study belongs to another site than the sender's (a study's site is fixed by its first instance).
    SITE = "site"
    #: Sent as a prior, but its study was not reserved as a prior (nobody asked for it).
    NOT_REQUESTED = "not_requested"

    @property
    def reason(self) -> str:
        """What to tell the sender (names attributes, never values)."""
        return _REASONS[self]


_REASONS = {
    Conflict.SERIES: "the Series Instance UID belongs to another study",
    Conflict.INSTANCE: "the SOP Instance UID is stored in another study",
    Conflict.PATIENT: "the patient identity (ID, issuer, name, birth date) differs from the study's",
    Conflict.SITE: "the study belongs to another site",
    Conflict.NOT_REQUESTED: "not a requested prior",
}


@dataclass(frozen=True)
class Receipt:
    """What recording one instance did.

    Attributes
    ----------
    study_id : int
        Row id of the study (of the study the instance named, also for a conflict).
    study_version : int
        Version the instance belongs to.
    duplicate : bool
        True when the SOP instance was already stored in this study (no instance row was added).
    conflict : Conflict or None
        Set when the instance cannot join its study (another study's series or SOP instance, another
        patient, another site): nothing was committed.
    other_study_id : int or None
        With a conflict, the row id of the study it concerns (the one whose series or SOP instance was
        reused, else the named study itself).
    new_study : bool
        True when the instance opened a new study (sent to be drafted; its prior search was opened with it).
    """

    study_id: int
    study_version: int
    duplicate: bool
    conflict: Conflict | None = None
    other_study_id: int | None = None
    new_study: bool = False

    @property
    def added(self) -> bool:
        """Whether the instance was added (neither a duplicate nor a conflict)."""
        return not self.duplicate and self.conflict is None


#: Driver-level SQL (psycopg named parameters): it skips SQLAlchemy's statement compilation on the hot path.
_POSTGRES_RECORD = """
    WITH previous AS (
        SELECT id, state, patient_key, site_id, role FROM studies WHERE study_uid = %(study_uid)s
    ), stored AS (
        SELECT series.study_id FROM instances JOIN series ON series.id = instances.series_id
        WHERE instances.sop_instance_uid = %(sop_instance_uid)s
    ), study AS (
        INSERT INTO studies (study_uid, state, version, calling_ae, first_received_at, last_received_at,
                             stable_after, updated_at, patient_key, site_id)
        VALUES (%(study_uid)s, 'receiving', 1, %(calling_ae)s, %(now)s, %(now)s, %(stable_after)s, %(now)s,
                %(patient_key)s, %(site_id)s)
        ON CONFLICT (study_uid) DO UPDATE SET
            patient_key = COALESCE(studies.patient_key, excluded.patient_key),
            version = CASE WHEN studies.state NOT IN ('receiving', 'held') THEN studies.version + 1
                           ELSE studies.version END,
            state = CASE WHEN studies.state = 'held' THEN 'held' ELSE 'receiving' END,
            last_received_at = excluded.last_received_at,
            stable_after = excluded.stable_after,
            updated_at = excluded.updated_at
        RETURNING id, version
    ), search AS (
        INSERT INTO prior_searches (study_id, state, created_at, attempts)
        SELECT study.id, 'pending', %(now)s, 0 FROM study
        WHERE %(role)s = 'current' AND NOT EXISTS (SELECT 1 FROM previous)
        ON CONFLICT (study_id) DO NOTHING
    ), series_row AS (
        INSERT INTO series (series_uid, study_id, modality, body_part, series_number)
        SELECT %(series_uid)s, study.id, %(modality)s, %(body_part)s, %(series_number)s FROM study
        ON CONFLICT (series_uid) DO UPDATE SET series_uid = excluded.series_uid
        RETURNING id, study_id
    ), instance_row AS (
        INSERT INTO instances (sop_instance_uid, sop_class_uid, series_id, study_version, instance_number,
                               storage_path, size_bytes, transfer_syntax_uid, calling_ae, received_at)
        SELECT %(sop_instance_uid)s, %(sop_class_uid)s, series_row.id, study.version, %(instance_number)s,
               %(storage_path)s, %(size_bytes)s, %(transfer_syntax_uid)s, %(calling_ae)s, %(now)s
        FROM series_row, study
        WHERE series_row.study_id = study.id
        ON CONFLICT (sop_instance_uid) DO NOTHING
        RETURNING id
    )
    SELECT study.id, study.version, (SELECT count(*) FROM instance_row), (SELECT study_id FROM series_row),
           (SELECT study_id FROM stored), (SELECT state FROM previous), (SELECT patient_key FROM previous),
           (SELECT site_id FROM previous), (SELECT role FROM previous),
           EXISTS (SELECT 1 FROM performed_steps WHERE study_uid = %(study_uid)s AND ended_at IS NOT NULL)
    FROM study
    """


def record_instance(
    connection: Connection,
    header: ReceivedInstance,
    *,
    storage_path: str,
    size_bytes: int,
    calling_ae: str,
    received_at: datetime,
    stable_seconds: float,
    site_id: int | None = None,
    any_site: bool = False,
    role: str = ROLE_CURRENT,
    before_commit: Callable[[Receipt], bool] | None = None,
) -> Receipt:
    """Add one received instance to the study it belongs to, and commit.

    The rows are written first and committed only when ``before_commit``
    agrees, so the caller can make its file durable while the database works.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        Open connection (no transaction in progress).
    header : ReceivedInstance
        The instance's validated header.
    storage_path : str
        Its path in the instance store.
    size_bytes : int
        Size of the stored file.
    calling_ae : str
        The sender's AE title.
    received_at : datetime
        Arrival time (aware, UTC).
    stable_seconds : float
        Idle time after which the study is complete.
    site_id : int, optional
        The sender's site: a new study belongs to it for good; an existing study of another site (or of
        none, when the sender has one, and the reverse) refuses the instance.
    any_site : bool
        The sender may add to a study of any site (administrators' uploads).
    role : str
        ``current`` (sent to be drafted: a new study opens its prior search) or ``prior`` (a requested prior:
        only a study reserved as a prior takes it, else :attr:`Conflict.NOT_REQUESTED`).
    before_commit : callable, optional
        Called with the provisional receipt before committing; returning False
        rolls back (a duplicate's timer restart is committed all the same),
        raising rolls back and propagates.

    Returns
    -------
    Receipt
        The study and version the instance joined; ``duplicate=True`` when it
        was already stored there (only the timer of a receiving study moved);
        a ``conflict`` when it cannot join the study (nothing was committed).
    """
    params: dict[str, Any] = {
        "study_uid": header.study_uid,
        "series_uid": header.series_uid,
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "modality": header.modality,
        "body_part": header.body_part,
        "series_number": header.series_number,
        "instance_number": header.instance_number,
        "storage_path": storage_path,
        "size_bytes": size_bytes,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "calling_ae": calling_ae,
        "now": received_at,
        "stable_after": received_at + timedelta(seconds=stable_seconds),
        "patient_key": header.patient_key,
        "site_id": site_id,
        "role": role,
    }
    row: tuple[Any, ...]
    if connection.dialect.name == "postgresql":
        row = tuple(connection.exec_driver_sql(_POSTGRES_RECORD, params).one())
    else:
        row = _record_stepwise(connection, params)
    (
        study_id,
        version,
        inserted,
        series_study_id,
        stored_study_id,
        previous_state,
        previous_key,
        previous_site,
        previous_role,
        step_ended,
    ) = row
    if role == ROLE_PRIOR and (previous_state is None or previous_role != ROLE_PRIOR):
        receipt = Receipt(study_id, version, False, Conflict.NOT_REQUESTED, study_id)
    elif stored_study_id is not None and stored_study_id != study_id:
        receipt = Receipt(study_id, version, False, Conflict.INSTANCE, stored_study_id)
    elif series_study_id is not None and series_study_id != study_id:
        receipt = Receipt(study_id, version, False, Conflict.SERIES, series_study_id)
    elif previous_state is not None and not any_site and previous_site != site_id:
        receipt = Receipt(study_id, version, False, Conflict.SITE, study_id)
    elif previous_key is not None and previous_key != header.patient_key:
        receipt = Receipt(study_id, version, False, Conflict.PATIENT, study_id)
    else:
        new_study = previous_state is None and role == ROLE_CURRENT and bool(inserted)
        receipt = Receipt(study_id, version, duplicate=not inserted, new_study=new_study)
    if receipt.new_study and header.accession_number:
        _link_new_study(connection, receipt.study_id, header)
    if step_ended and receipt.added:
        _settle_by_mpps(connection, receipt, header.sop_instance_uid, calling_ae, received_at)
    try:
        keep = before_commit(receipt) if before_commit is not None else True
    except BaseException:
        connection.rollback()
        raise
    if receipt.duplicate and previous_state == StudyState.RECEIVING.value:
        # Nothing of the instance is kept (not even a series row it named), only the timer restart.
        connection.rollback()
        connection.execute(
            update(Study)
            .where(Study.id == study_id, Study.state == StudyState.RECEIVING)
            .values(last_received_at=received_at, stable_after=params["stable_after"], updated_at=received_at)
        )
        connection.commit()
    elif receipt.added and keep:
        connection.commit()
    else:
        connection.rollback()
    return receipt


def _settle_by_mpps(
    connection: Connection, receipt: Receipt, sop_instance_uid: str, calling_ae: str, now: datetime
) -> None:
    """A step of the study has ended (MPPS): hold the study, or complete it when this was its last listed instance.

    In the instance's transaction (the instance counts as stored; a study opened after its step was
    discontinued is never seen receiving), and only when the recording statement found an ended step.
    """
    with Session(bind=connection) as session:
        instance_arrived(session, receipt.study_id, sop_instance_uid, calling_ae, now, new_study=receipt.new_study)
        session.flush()


def _link_new_study(connection: Connection, study_id: int, header: ReceivedInstance) -> None:
    """Give a new current study its order-matching attributes and link it to its RIS order, in its transaction.

    Only a study's first instance pays for this (one query for the orders of its accession number).
    """
    with Session(bind=connection) as session:
        study = session.get(Study, study_id)
        if study is None:
            return
        study.accession_number = header.accession_number
        study.patient_id = header.patient_id
        study.issuer_of_patient_id = header.issuer_of_patient_id
        link_order(session, study)
        session.flush()


def _record_stepwise(connection: Connection, p: dict[str, Any]) -> tuple[Any, ...]:
    studies, series, instances = (cast(Table, m.__table__) for m in (Study, Series, Instance))
    found = connection.execute(
        select(studies.c.state, studies.c.patient_key, studies.c.site_id, studies.c.role).where(
            studies.c.study_uid == p["study_uid"]
        )
    ).one_or_none()
    previous = tuple(found) if found is not None else (None, None, None, None)
    stored_study_id = connection.execute(
        select(series.c.study_id)
        .join(instances, instances.c.series_id == series.c.id)
        .where(instances.c.sop_instance_uid == p["sop_instance_uid"])
    ).scalar_one_or_none()
    late = studies.c.state.not_in((StudyState.RECEIVING.value, StudyState.HELD.value))
    held = studies.c.state == StudyState.HELD.value
    study_stmt = (
        sqlite.insert(studies)
        .values(
            study_uid=p["study_uid"],
            state=StudyState.RECEIVING.value,
            version=1,
            calling_ae=p["calling_ae"],
            first_received_at=p["now"],
            last_received_at=p["now"],
            stable_after=p["stable_after"],
            updated_at=p["now"],
            patient_key=p["patient_key"],
            site_id=p["site_id"],
        )
        .on_conflict_do_update(
            index_elements=[studies.c.study_uid],
            set_={
                "version": case((late, studies.c.version + 1), else_=studies.c.version),
                "state": case((held, StudyState.HELD.value), else_=StudyState.RECEIVING.value),
                "last_received_at": p["now"],
                "stable_after": p["stable_after"],
                "updated_at": p["now"],
                "patient_key": func.coalesce(studies.c.patient_key, p["patient_key"]),
            },
        )
        .returning(studies.c.id, studies.c.version)
    )
    study_id, version = connection.execute(study_stmt).one()
    if found is None and p["role"] == ROLE_CURRENT:
        searches = cast(Table, PriorSearch.__table__)
        connection.execute(
            sqlite.insert(searches)
            .values(study_id=study_id, state=PriorSearchState.PENDING.value, created_at=p["now"], attempts=0)
            .on_conflict_do_nothing(index_elements=[searches.c.study_id])
        )
    series_stmt = (
        sqlite.insert(series)
        .values(
            series_uid=p["series_uid"],
            study_id=study_id,
            modality=p["modality"],
            body_part=p["body_part"],
            series_number=p["series_number"],
        )
        .on_conflict_do_update(index_elements=[series.c.series_uid], set_={"series_uid": p["series_uid"]})
        .returning(series.c.id, series.c.study_id)
    )
    series_id, series_study_id = connection.execute(series_stmt).one()
    steps = cast(Table, PerformedStep.__table__)
    step_ended = (
        connection.execute(
            select(steps.c.id).where(steps.c.study_uid == p["study_uid"], steps.c.ended_at.is_not(None)).limit(1)
        ).first()
        is not None
    )
    if series_study_id != study_id or stored_study_id is not None:
        return study_id, version, 0, series_study_id, stored_study_id, *previous, step_ended
    instance_stmt = (
        sqlite.insert(instances)
        .values(
            sop_instance_uid=p["sop_instance_uid"],
            sop_class_uid=p["sop_class_uid"],
            series_id=series_id,
            study_version=version,
            instance_number=p["instance_number"],
            storage_path=p["storage_path"],
            size_bytes=p["size_bytes"],
            transfer_syntax_uid=p["transfer_syntax_uid"],
            calling_ae=p["calling_ae"],
            received_at=p["now"],
        )
        .on_conflict_do_nothing(index_elements=[instances.c.sop_instance_uid])
        .returning(instances.c.id)
    )
    inserted = connection.execute(instance_stmt).scalar_one_or_none()
    inserted_count = 0 if inserted is None else 1
    return study_id, version, inserted_count, series_study_id, stored_study_id, *previous, step_ended


def audit_conflict(database_url: str, receipt: Receipt, header: ReceivedInstance, *, actor: str) -> None:
    """Record, on the study whose series or instance was claimed, that an instance naming another study was refused.

    A database failure is logged, never raised: the sender's answer does not depend on the audit.

    Parameters
    ----------
    database_url : str
        SQLAlchemy URL (the event is committed in its own transaction).
    receipt : Receipt
        A receipt with a conflict.
    header : ReceivedInstance
        The refused instance's header (UIDs only go into the event).
    actor : str
        The sender (``ae:<AE title>``).
    """
    assert receipt.conflict is not None
    try:
        with session_scope(database_url) as session:
            affected = session.scalar(select(Study.study_uid).where(Study.id == receipt.other_study_id))
            detail = {"reason": receipt.conflict.reason, "conflict": receipt.conflict.value}
            add_event(
                session,
                actor=actor,
                action="instance.refused",
                object_type="study",
                object_id=affected,
                detail={**detail, "named_study": header.study_uid},
            )
    except SQLAlchemyError as exc:
        log.warning("audit event instance.refused not recorded (database): %s", type(exc).__name__)
