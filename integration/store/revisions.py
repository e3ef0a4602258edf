"""Reports as documents: the draft's SR identity, and the radiologist's signed versions (v2, v3 ...).

Functions that write add and flush; the caller's short session scope commits, and files are written by
:mod:`integration.reports.drafts` before the row that names them is committed.  A report row is
locked while a version is added (``FOR UPDATE`` on PostgreSQL) and ``(report, version)`` is unique,
so two signatures never get the same version.

A study has one report of record (:func:`report_of_record`): its primary report.  A second opinion is never
signed and a study never gets a second signed report: signing again adds a version to the signed report (an
amendment with its predecessor chain).  :func:`record_refusal` says why a report may not be signed; the
database enforces the same with a CHECK constraint and a partial unique index (migration 0007).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from integration.store.priority import settle_priority_of
from integration.store.tables import (
    Instance,
    Report,
    ReportPurpose,
    ReportRevision,
    ReportStatus,
    RevisionStatus,
    Series,
    Study,
    StudyState,
)

#: Report states that may be signed: a draft, or a report signed before (a later version).
SIGNABLE = frozenset({ReportStatus.DRAFT, ReportStatus.SIGNED})


class UnknownReport(LookupError):
    """No report has this id."""


class ReportNotSignable(ValueError):
    """The report may not be signed (superseded by a newer study version, or rejected)."""


class NotReportOfRecord(ReportNotSignable):
    """The report is not its study's report of record (a second opinion, or the study has a signed report)."""


class VersionTaken(RuntimeError):
    """Another signature took this version first; sign again."""


@dataclass(frozen=True)
class ReportDocument:
    """A report row as its documents need it."""

    report_id: int
    study_id: int
    study_uid: str
    study_version: int
    status: str
    findings: dict[str, Any]
    evidence: list[dict[str, Any]]
    model_id: str
    model_revision: str
    model_family: str
    prompt_version: str
    created_at: datetime
    sr_sop_instance_uid: str | None
    sr_series_uid: str | None
    sr_path: str | None
    #: False for a report written by hand (no model drafted it): its documents name no algorithm.
    ai_generated: bool = True


@dataclass(frozen=True)
class RevisionRecord:
    """One radiologist's version of a report."""

    revision_id: int
    report_id: int
    version: int
    status: str
    findings: dict[str, Any]
    text: str
    author: str
    organization: str
    created_at: datetime
    sr_sop_instance_uid: str | None
    sr_series_uid: str | None
    sr_path: str | None


@dataclass(frozen=True)
class SignedVersion:
    """A signed version to store: its content, who signed it and where its SR is."""

    report_id: int
    version: int
    findings: dict[str, Any]
    text: str
    author: str
    organization: str
    signed_at: datetime
    sr_sop_instance_uid: str
    sr_series_uid: str
    sr_path: str


def load_report(session: Session, report_id: int) -> ReportDocument:
    """Return a report with its study UID.

    Raises
    ------
    UnknownReport
        No report has this id.
    """
    row = session.execute(
        select(Report, Study.study_uid).join(Study, Report.study_id == Study.id).where(Report.id == report_id)
    ).one_or_none()
    if row is None:
        raise UnknownReport(f"no report with id {report_id}")
    report, study_uid = row
    return ReportDocument(
        report_id=report.id,
        study_id=report.study_id,
        study_uid=study_uid,
        study_version=report.study_version,
        status=report.status.value,
        findings=dict(report.findings),
        evidence=list(report.evidence),
        model_id=report.model_id,
        model_revision=report.model_revision,
        model_family=report.model_family,
        prompt_version=report.prompt_version,
        created_at=report.created_at,
        sr_sop_instance_uid=report.sr_sop_instance_uid,
        sr_series_uid=report.sr_series_uid,
        sr_path=report.sr_path,
        ai_generated=bool(report.ai_generated),
    )


def report_revisions(session: Session, report_id: int) -> list[RevisionRecord]:
    """Return a report's versions after the draft (2, 3 ...), oldest first."""
    rows = session.scalars(
        select(ReportRevision).where(ReportRevision.report_id == report_id).order_by(ReportRevision.version)
    )
    return [
        RevisionRecord(
            revision_id=r.id,
            report_id=r.report_id,
            version=r.version,
            status=r.status.value,
            findings=dict(r.findings),
            text=r.text,
            author=r.author,
            organization=r.organization,
            created_at=r.created_at,
            sr_sop_instance_uid=r.sr_sop_instance_uid,
            sr_series_uid=r.sr_series_uid,
            sr_path=r.sr_path,
        )
        for r in rows
    ]


def instance_paths(
    session: Session, study_id: int, study_version: int, sop_instance_uids: Collection[str]
) -> dict[str, str]:
    """Return where the study's instances are stored: the ones asked for, else the study's first.

    ``study_id`` and ``study_version`` give the study as of the report's version;
    ``sop_instance_uids`` are the instances wanted (the report's evidence), empty asks for any one
    instance of the study. Maps SOP Instance UID to storage path (relative to the instance store), in
    arrival order.
    """
    query = (
        select(Instance.sop_instance_uid, Instance.storage_path)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study_id, Instance.study_version <= study_version)
        .order_by(Instance.id)
    )
    wanted = list(sop_instance_uids)
    query = query.where(Instance.sop_instance_uid.in_(wanted)) if wanted else query.limit(1)
    return {uid: path for uid, path in session.execute(query)}


def fix_draft_sr_uids(session: Session, report_id: int, sop_instance_uid: str, series_uid: str) -> tuple[str, str]:
    """Give a draft its SR's UIDs once; UIDs already given are kept and returned.

    The fresh ``sop_instance_uid`` and ``series_uid`` are used only when the draft has none yet. Returns the
    draft SR's SOP Instance UID and Series Instance UID, as stored: the read after the conditional update sees
    UIDs a concurrent call committed first (PostgreSQL waits on the row, then reads afresh; SQLite serialises
    writers), so no commit is needed in between; the caller commits before it writes the file.

    Raises
    ------
    UnknownReport
        No report has this id.
    """
    session.execute(
        update(Report)
        .where(Report.id == report_id, Report.sr_sop_instance_uid.is_(None))
        .values(sr_sop_instance_uid=sop_instance_uid, sr_series_uid=series_uid)
    )
    stored = session.execute(
        select(Report.sr_sop_instance_uid, Report.sr_series_uid).where(Report.id == report_id)
    ).one_or_none()
    if stored is None or stored[0] is None or stored[1] is None:
        raise UnknownReport(f"no report with id {report_id}")
    return str(stored[0]), str(stored[1])


def record_draft_sr_path(session: Session, report_id: int, sr_path: str) -> None:
    """Record where the draft's SR file is (relative to ``settings.data_dir``)."""
    session.execute(update(Report).where(Report.id == report_id).values(sr_path=sr_path))


def next_version(session: Session, report_id: int) -> int:
    """Return the version a new signature of a report gets: one above the newest (the draft is version 1)."""
    newest = session.scalar(select(func.max(ReportRevision.version)).where(ReportRevision.report_id == report_id))
    return int(newest or 1) + 1


def report_of_record(session: Session, study_id: int) -> int | None:
    """Return the id of a study's report of record: its signed report, else its newest primary draft.

    None when the study has neither (no primary draft yet, or only rejected ones).
    """
    signed = session.scalar(select(Report.id).where(Report.study_id == study_id, Report.status == ReportStatus.SIGNED))
    if signed is not None:
        return int(signed)
    draft = session.scalar(
        select(Report.id)
        .where(
            Report.study_id == study_id,
            Report.status == ReportStatus.DRAFT,
            Report.purpose == ReportPurpose.PRIMARY,
        )
        .order_by(Report.study_version.desc(), Report.id.desc())
        .limit(1)
    )
    return int(draft) if draft is not None else None


def record_refusal(session: Session, report: Report) -> str | None:
    """Say why a report may not be signed as its study's report of record, or None when it may.

    The sentence is for the radiologist: a second opinion is material for the report of record; a study
    that has a signed report is amended (a new version of that report), never signed twice.
    """
    if report.purpose is ReportPurpose.SECOND_OPINION:
        primary = report_of_record(session, report.study_id)
        target = f"report {primary}" if primary is not None else "the study's primary report"
        return (
            f"report {report.id} is a second opinion: it is material for the study's report of record ({target}) "
            f"and is not signed itself; copy its findings into {target} and sign that"
        )
    signed = session.scalar(
        select(Report.id).where(
            Report.study_id == report.study_id, Report.status == ReportStatus.SIGNED, Report.id != report.id
        )
    )
    if signed is not None:
        return (
            f"this study already has a signed report of record (report {signed}); a later reading amends that "
            f"report (a new version of report {signed}), it is never a second final report"
        )
    return None


def record_signed_version(session: Session, signed: SignedVersion) -> int:
    """Store a signed version and mark the report (and its study, when current) signed.

    Returns the revision id.  The caller's scope commits, with the audit event and outcome it adds; a
    refusal raises, and that scope rolls back.

    Parameters
    ----------
    signed : SignedVersion
        The version; its SR file is already written.

    Raises
    ------
    UnknownReport
        No report has this id.
    ReportNotSignable
        The report was superseded or rejected meanwhile.
    NotReportOfRecord
        The report is a second opinion, or another report of the study was signed (see :func:`record_refusal`).
    VersionTaken
        Another signature stored this version first.
    """
    query = select(Report).where(Report.id == signed.report_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    report = session.scalars(query).one_or_none()
    if report is None:
        raise UnknownReport(f"no report with id {signed.report_id}")
    if report.status not in SIGNABLE:
        raise ReportNotSignable(f"report {signed.report_id} is {report.status.value} and cannot be signed")
    if (refusal := record_refusal(session, report)) is not None:
        raise NotReportOfRecord(refusal)
    revision = ReportRevision(
        report_id=report.id,
        version=signed.version,
        status=RevisionStatus.SIGNED,
        findings=signed.findings,
        text=signed.text,
        author=signed.author,
        organization=signed.organization,
        created_at=signed.signed_at,
        sr_sop_instance_uid=signed.sr_sop_instance_uid,
        sr_series_uid=signed.sr_series_uid,
        sr_path=signed.sr_path,
    )
    session.add(revision)
    try:
        session.flush()
    except IntegrityError as exc:
        raise VersionTaken(f"version {signed.version} of report {signed.report_id} was stored meanwhile") from exc
    report.status = ReportStatus.SIGNED
    try:
        session.flush()  # the database's own check: one signed report per study, never a second opinion
    except IntegrityError as exc:
        raise NotReportOfRecord(
            f"report {signed.report_id} cannot be signed: another report of this study was signed meanwhile"
        ) from exc
    study = session.get(Study, report.study_id)
    if study is not None and study.version == report.study_version and study.state == StudyState.DRAFTED:
        study.state = StudyState.SIGNED
    settle_priority_of(session, report.study_id, signed.signed_at)
    return int(revision.id)
