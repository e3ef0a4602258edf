"""Analysis jobs as the worker sees them: claim, fail, and record the draft report.

Functions add and flush; the caller's session scope commits.  The worker runs each step in a short
scope of its own (claim, read the instances, record the draft or fail the job), so the database always
says where a job stands while the model runs outside any transaction.  A job row is locked while its
state changes (``FOR UPDATE`` on PostgreSQL), so two deliveries of one task never both run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from integration.store.opinions import SECOND_OPINION, SHADOW
from integration.store.order_tables import Order, OrderStatus
from integration.store.priority import settle_priority
from integration.store.tables import (
    AnalysisJob,
    Instance,
    JobState,
    Report,
    ReportPurpose,
    ReportStatus,
    Series,
    Study,
    StudyState,
)

#: Report purpose of a job's draft, by the job's purpose (anything else drafts the primary report).
_REPORT_PURPOSE = {SECOND_OPINION: ReportPurpose.SECOND_OPINION, SHADOW: ReportPurpose.SHADOW}
#: Job states after which a delivered task has nothing left to do.
FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.SUPERSEDED, JobState.CANCELLED})


@dataclass(frozen=True)
class ClaimedJob:
    """A job the worker may run now."""

    job_id: int
    study_id: int
    study_uid: str
    study_version: int
    attempt: int
    calling_ae: str


@dataclass(frozen=True)
class SkippedJob:
    """A delivered job that is not run, and why (already finished, superseded, attempts used up)."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class InstanceFile:
    """One stored instance of a study, as the worker needs it."""

    storage_path: str
    sop_instance_uid: str
    series_uid: str
    modality: str | None
    body_part: str | None


@dataclass(frozen=True)
class DraftRecord:
    """Everything stored with a draft report."""

    model_id: str
    model_revision: str
    model_family: str
    prompt_version: str
    structured: bool
    findings: dict[str, Any]
    text: str
    raw_output: str
    evidence: list[dict[str, Any]]
    timings: dict[str, float]
    tokens_in: int
    tokens_out: int


#: Study states a job of a cancelled order leaves ``cancelled``.
_CANCELLABLE = (StudyState.STABLE, StudyState.QUEUED, StudyState.RUNNING, StudyState.FAILED)


def _locked_job(session: Session, job_id: int) -> AnalysisJob | None:
    query = select(AnalysisJob).where(AnalysisJob.id == job_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def claim_job(session: Session, job_id: int, *, max_attempts: int, now: datetime) -> ClaimedJob | SkippedJob:
    """Start a delivery of a job: count the attempt and mark it running, or say why not.

    Call it in a short session scope of its own (the task's claim step): the row lock is released and the
    claim committed before the model runs for minutes.  A delivery of a job that is already running counts
    as a new attempt (the earlier worker was lost); past ``max_attempts`` the job ends ``failed`` with the
    reason, so a study that keeps killing the worker stops there.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    job_id : int
        The job from the task message.
    max_attempts : int
        Deliveries allowed before the job fails.
    now : datetime
        Current time (aware, UTC).

    Returns
    -------
    ClaimedJob or SkippedJob
        The job to run, or why it is not run.
    """
    job = _locked_job(session, job_id)
    if job is None:
        return SkippedJob(job_id, "no such job")
    if job.state in FINISHED:
        return SkippedJob(job_id, f"job already {job.state.value}")
    study = session.get(Study, job.study_id)
    assert study is not None
    stopped = _stopped_order(session, study)
    if stopped is not None:  # cancelled before drafting: nothing is drafted
        reason = f"the order was {stopped}"
        job.state, job.finished_at, job.last_error = JobState.CANCELLED, now, reason
        if study.version == job.study_version and study.state in _CANCELLABLE:
            study.state = StudyState.CANCELLED
        return SkippedJob(job_id, reason)
    job.attempts += 1
    if job.attempts > max_attempts:
        cause = job.last_error or "the worker was lost while analysing this study"
        reason = f"gave up after {max_attempts} attempts: {cause}"
        _fail(session, job, study, reason, now)
        return SkippedJob(job_id, reason)
    job.state = JobState.RUNNING
    job.started_at = now
    if job.purpose == SHADOW:  # the study's state follows its primary job only
        pass
    elif study.version == job.study_version and study.state in (StudyState.QUEUED, StudyState.RUNNING):
        study.state = StudyState.RUNNING
    return ClaimedJob(job.id, study.id, study.study_uid, job.study_version, job.attempts, study.calling_ae)


def _stopped_order(session: Session, study: Study) -> str | None:
    """``cancelled`` or ``discontinued`` when the study's RIS order was, else None."""
    if study.order_id is None:
        return None
    status = session.scalar(select(Order.status).where(Order.id == study.order_id))
    return status if status is not None and status != OrderStatus.SCHEDULED.value else None


def instance_files(session: Session, study_id: int, study_version: int) -> list[InstanceFile]:
    """Return the study's instances as of a version (later arrivals belong to a later job).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study_id : int
        The study.
    study_version : int
        The job's study version.

    Returns
    -------
    list of InstanceFile
        Stored instances, in arrival order.
    """
    rows = session.execute(
        select(Instance.storage_path, Instance.sop_instance_uid, Series.series_uid, Series.modality, Series.body_part)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study_id, Instance.study_version <= study_version)
        .order_by(Instance.id)
    ).all()
    return [InstanceFile(*row) for row in rows]


def fail_job(session: Session, job_id: int, reason: str, now: datetime) -> None:
    """End a job as ``failed`` with its reason (and its study, when it is the current version).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    job_id : int
        The job.
    reason : str
        Why, for the administrator (no patient data).
    now : datetime
        Current time (aware, UTC).
    """
    job = _locked_job(session, job_id)
    if job is None or job.state in FINISHED:
        return
    study = session.get(Study, job.study_id)
    assert study is not None
    _fail(session, job, study, reason, now)


def _fail(session: Session, job: AnalysisJob, study: Study, reason: str, now: datetime) -> None:
    job.state = JobState.FAILED
    job.last_error = reason[:2000]
    job.finished_at = now
    if job.purpose == SHADOW:  # a candidate model's failure is the candidate's, never the study's
        return
    if study.version == job.study_version and study.state in (StudyState.QUEUED, StudyState.RUNNING):
        study.state = StudyState.FAILED
    settle_priority(session, study, now)


def record_draft(session: Session, job_id: int, draft: DraftRecord, now: datetime) -> int:
    """Store the draft of a job once and return its id; see :func:`record_draft_superseding`."""
    return record_draft_superseding(session, job_id, draft, now).report_id


@dataclass(frozen=True)
class RecordedDraft:
    """A recorded draft and the older drafts of its study it superseded (to be withdrawn from receivers)."""

    report_id: int
    superseded: list[int]


def record_draft_superseding(session: Session, job_id: int, draft: DraftRecord, now: datetime) -> RecordedDraft:
    """Store the draft of a job once, finish the job and move the study on.

    Idempotent: a draft for the same study version, model, revision and
    prompt version is never written twice; the existing one's id is returned.
    A draft of a job superseded meanwhile is kept with status ``superseded``.  A second opinion's draft gets the
    purpose ``second_opinion`` (material for the study's report of record, never signed).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    job_id : int
        The job.
    draft : DraftRecord
        The draft.
    now : datetime
        Current time (aware, UTC).

    Returns
    -------
    RecordedDraft
        The report id, and the ids of the older drafts of the study this call marked ``superseded``.
    """
    job = _locked_job(session, job_id)
    assert job is not None
    study = session.get(Study, job.study_id)
    assert study is not None
    current = job.state != JobState.SUPERSEDED and study.version == job.study_version
    # a job whose order was cancelled while it ran keeps its draft, withdrawn (never exported, never signed)
    cancelled = job.state == JobState.CANCELLED
    current = current and not cancelled
    values = {
        "study_id": job.study_id,
        "job_id": job.id,
        "study_version": job.study_version,
        "status": (
            ReportStatus.WITHDRAWN if cancelled else ReportStatus.DRAFT if current else ReportStatus.SUPERSEDED
        ).value,
        "ai_generated": True,
        "verification": "UNVERIFIED",
        "purpose": _REPORT_PURPOSE.get(job.purpose, ReportPurpose.PRIMARY).value,
        "created_at": now,
        **draft.__dict__,
    }
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(Report).values(**values).on_conflict_do_nothing())
    report_id = session.scalars(
        select(Report.id).where(
            Report.study_id == job.study_id,
            Report.study_version == job.study_version,
            Report.model_id == draft.model_id,
            Report.model_revision == draft.model_revision,
            Report.prompt_version == draft.prompt_version,
        )
    ).one()
    if job.state not in FINISHED:
        job.state = JobState.DONE
        job.finished_at = now
        job.last_error = None
    superseded: list[int] = []
    if current and job.purpose != SHADOW:  # a shadow draft never moves its study nor takes a draft's place
        superseded = list(
            session.scalars(
                update(Report)
                .where(
                    Report.study_id == job.study_id,
                    Report.study_version < job.study_version,
                    Report.status == ReportStatus.DRAFT,
                )
                .values(status=ReportStatus.SUPERSEDED.value)
                .returning(Report.id)
            )
        )
        if study.state in (StudyState.QUEUED, StudyState.RUNNING, StudyState.FAILED):
            study.state = StudyState.DRAFTED
    settle_priority(session, study, now)
    return RecordedDraft(int(report_id), sorted(superseded))


@dataclass(frozen=True)
class StudyOutcome:
    """Where a study's analysis stands: its current draft, or why its last job failed."""

    study_uid: str
    state: str
    version: int
    report_id: int | None
    report_text: str | None
    model_id: str | None
    prompt_version: str | None
    structured: bool | None
    evidence_count: int
    tokens_out: int | None
    error: str | None


def study_outcomes(session: Session, study_uids: list[str]) -> list[StudyOutcome]:
    """Return the analysis outcome of each study: its newest draft, or the last job's error.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study_uids : list of str
        The studies.

    Returns
    -------
    list of StudyOutcome
        One per study found, in the order given.
    """
    outcomes = []
    for study in session.scalars(select(Study).where(Study.study_uid.in_(study_uids))):
        report = session.scalars(
            select(Report)
            .where(Report.study_id == study.id, Report.status == ReportStatus.DRAFT)
            .where(Report.purpose != ReportPurpose.SHADOW)  # shadow mode is hidden
            .order_by(Report.study_version.desc(), Report.id.desc())
            .limit(1)
        ).one_or_none()
        error = session.scalars(
            select(AnalysisJob.last_error)
            .where(AnalysisJob.study_id == study.id, AnalysisJob.state == JobState.FAILED)
            .order_by(AnalysisJob.id.desc())
            .limit(1)
        ).one_or_none()
        outcomes.append(
            StudyOutcome(
                study_uid=study.study_uid,
                state=study.state.value,
                version=study.version,
                report_id=report.id if report else None,
                report_text=report.text if report else None,
                model_id=report.model_id if report else None,
                prompt_version=report.prompt_version if report else None,
                structured=report.structured if report else None,
                evidence_count=len(report.evidence) if report else 0,
                tokens_out=report.tokens_out if report else None,
                error=error,
            )
        )
    order = {uid: index for index, uid in enumerate(study_uids)}
    return sorted(outcomes, key=lambda o: order.get(o.study_uid, len(order)))
