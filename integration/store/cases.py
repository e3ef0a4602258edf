"""Telemedicine cases: the uploader's view of what they sent and what became of it.

A case (:class:`~integration.store.reading_tables.UploadCase`) is one study of photos, opened by one uploader,
with the clinical question kept whole.  Uploaders follow their cases here: each case's status (``received``
until a draft of the study's current version exists, ``drafted`` until it is signed, ``signed``), its photos,
and, once signed, the signed versions' text.  The unsigned draft never reaches an uploader: only rows of
``report_revisions`` with status ``signed`` are returned.

Who may see a case is decided in one place, :func:`visible_case`: its owner (on their own site) and
administrators.  Another uploader's case, even on the same site, and another site's case look exactly like a
missing one (None), so routes answer 404 for all three.  Functions never commit (the caller's session scope
does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from integration.store.reading_tables import UploadCase
from integration.store.tables import (
    Instance,
    Report,
    ReportPurpose,
    ReportRevision,
    ReportStatus,
    RevisionStatus,
    Series,
    Study,
    UserRole,
    utcnow,
)

#: A case's states as the uploader sees them.
RECEIVED, DRAFTED, SIGNED = "received", "drafted", "signed"
#: Most cases listed on one page.
MAX_LISTED = 500


@dataclass(frozen=True)
class Viewer:
    """Who asks: enough of the signed-in user to decide what they may see."""

    user_id: int
    role: UserRole
    #: The viewer's sites (``user_sites``).
    site_ids: frozenset[int]


@dataclass(frozen=True)
class CaseSummary:
    """One case as listed and shown (patient data: escaped where shown, never logged)."""

    case_id: int
    study_id: int
    study_uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    body_part: str
    laterality: str | None
    clinical_question: str
    study_description: str | None
    photos: int
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class CasePhoto:
    """One stored photo of a case."""

    sop_instance_uid: str
    series_uid: str
    series_number: int | None
    instance_number: int | None
    storage_path: str


@dataclass(frozen=True)
class SignedText:
    """A signed version of the case's report: what the uploader may read."""

    version: int
    author: str
    signed_at: datetime
    findings: list[str]
    impression: str
    text: str


def open_case(
    session: Session,
    *,
    study_uid: str,
    uploader_id: int,
    site_id: int | None,
    clinical_question: str,
    body_part: str,
    laterality: str | None,
    patient: dict[str, str | None] | None = None,
) -> int:
    """Record a new case for a study just stored (its first photos), and return the case's id.

    ``patient`` (study column -> value: ``patient_id``, ``patient_name``, ``patient_birth_date``,
    ``patient_sex``, ``study_description``) fills the study row's empty columns now: the assembly pass copies
    the same values from the header only when the study becomes stable, and the case is shown before that.

    Raises
    ------
    LookupError
        No study with that UID (it was not stored).
    """
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        raise LookupError("the case's study was not stored")
    for column, value in (patient or {}).items():
        if getattr(study, column) is None:
            setattr(study, column, value)
    case = UploadCase(
        study_id=study.id,
        uploader_id=uploader_id,
        site_id=site_id,
        clinical_question=clinical_question,
        body_part=body_part,
        laterality=laterality,
    )
    session.add(case)
    session.flush()
    return int(case.id)


def touch_case(session: Session, case_id: int) -> None:
    """Mark that photos were added to a case now."""
    case = session.get(UploadCase, case_id)
    if case is not None:
        case.updated_at = utcnow()


def visible_case(session: Session, case_id: int, viewer: Viewer) -> UploadCase | None:
    """Return the case if the viewer may see it: its owner on their site, or an administrator; else None."""
    case = session.get(UploadCase, case_id)
    if case is None:
        return None
    if viewer.role is UserRole.ADMIN:
        return case
    if viewer.role is UserRole.UPLOADER and case.uploader_id == viewer.user_id and case.site_id in viewer.site_ids:
        return case
    return None


def case_status(session: Session, study_id: int) -> str:
    """Say where a case stands: ``signed``, ``drafted`` (a primary report exists, none signed) or ``received``.

    Only a report of the study's current version counts: photos added after the draft, or after the signature,
    make a new version, and until its draft exists the case is ``received`` again, until its signature
    ``drafted`` (the older report does not cover them; the uploader still reads the signed versions there are).
    """
    rows = session.execute(
        select(Report.status, Report.study_version == Study.version)
        .join(Study, Report.study_id == Study.id)
        .where(Report.study_id == study_id, Report.purpose == ReportPurpose.PRIMARY)
    ).all()
    current = [status for status, of_current_version in rows if of_current_version]
    if ReportStatus.SIGNED in current:
        return SIGNED
    return DRAFTED if current else RECEIVED


def _photo_count(session: Session, study_id: int) -> int:
    count = session.scalar(
        select(func.count(Instance.id)).join(Series, Instance.series_id == Series.id).where(Series.study_id == study_id)
    )
    return int(count or 0)


def summary_of(session: Session, case: UploadCase) -> CaseSummary:
    """Return a case with its patient (from its study), photo count and status."""
    study = session.get(Study, case.study_id)
    assert study is not None  # the foreign key cascades: a case never outlives its study
    return CaseSummary(
        case_id=case.id,
        study_id=study.id,
        study_uid=study.study_uid,
        patient_name=study.patient_name or "",
        patient_id=study.patient_id or "",
        birth_date=study.patient_birth_date or "",
        sex=study.patient_sex or "",
        body_part=case.body_part,
        laterality=case.laterality,
        clinical_question=case.clinical_question,
        study_description=study.study_description,
        photos=_photo_count(session, study.id),
        status=case_status(session, study.id),
        created_at=case.created_at,
        updated_at=case.updated_at,
    )


def cases_of(session: Session, viewer: Viewer, *, limit: int = MAX_LISTED, offset: int = 0) -> list[CaseSummary]:
    """Return a page of the cases the viewer may see, newest first: their own (an uploader) or all (an admin)."""
    query = select(UploadCase).order_by(UploadCase.created_at.desc(), UploadCase.id.desc())
    query = query.limit(limit).offset(offset)
    if viewer.role is UserRole.UPLOADER:
        query = query.where(UploadCase.uploader_id == viewer.user_id, UploadCase.site_id.in_(viewer.site_ids))
    elif viewer.role is not UserRole.ADMIN:
        return []
    return [summary_of(session, case) for case in session.scalars(query)]


def case_photos(session: Session, study_id: int) -> list[CasePhoto]:
    """Return a case's stored photos in the order they stand in the study."""
    rows = session.execute(
        select(Instance.sop_instance_uid, Series.series_uid, Series.series_number, Instance.instance_number)
        .add_columns(Instance.storage_path)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
        .order_by(Instance.instance_number, Instance.id)
    )
    return [CasePhoto(*row) for row in rows]


def next_numbers(session: Session, study_id: int) -> tuple[int, int]:
    """Return the series number and first instance number that photos added to a case's study get."""
    series = session.scalar(select(func.max(Series.series_number)).where(Series.study_id == study_id))
    instance = session.scalar(
        select(func.max(Instance.instance_number))
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
    )
    return int(series or 0) + 1, int(instance or 0) + 1


def signed_texts(session: Session, study_id: int) -> list[SignedText]:
    """Return the signed versions of the study's report of record, oldest first (never the unsigned draft)."""
    rows = session.scalars(
        select(ReportRevision)
        .join(Report, ReportRevision.report_id == Report.id)
        .where(
            Report.study_id == study_id,
            Report.purpose == ReportPurpose.PRIMARY,
            Report.status == ReportStatus.SIGNED,
            ReportRevision.status == RevisionStatus.SIGNED,
        )
        .order_by(ReportRevision.version)
    )
    return [
        SignedText(
            version=row.version,
            author=row.author,
            signed_at=row.created_at,
            findings=[str(item.get("text", "")) for item in row.findings.get("findings", []) if isinstance(item, dict)],
            impression=str(row.findings.get("impression") or ""),
            text=row.text,
        )
        for row in rows
    ]


def case_of_study(session: Session, study_id: int) -> UploadCase | None:
    """Return the case a study belongs to, if it came from a telemedicine case."""
    return session.scalar(select(UploadCase).where(UploadCase.study_id == study_id))
