"""Failed work, as an administrator looks for it: studies and jobs by state, and a failed study re-analysed.

Why: a study whose analysis failed waits in ``failed`` until someone acts, and a job error or a dead-letter
delivery is found only by reading tables.  These queries feed ``pacs-vlm studies list --state``, ``pacs-vlm
jobs list`` and the ``/admin/work`` page; the filters are the same everywhere (state, site code, since a
date, a row limit).  Priors fetched for comparison are never listed: they are never analysed.

Re-analysing a *failed* study with a chosen model or prompt (:func:`reanalyze_failed_study`) queues its
*primary* analysis again with that choice: the draft it makes is the study's report of record, as a retry's
would be.  A study that is not failed is re-analysed as a second opinion instead
(:func:`integration.store.opinions.request_second_opinion`), beside the draft a radiologist may be reading.
Functions never commit; listed rows hold no patient data (UIDs, site codes, job errors, which are written
without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from integration.store.retries import failure_of, retry_failed_study
from integration.store.tables import (
    ROLE_CURRENT,
    AnalysisJob,
    AuditEvent,
    JobState,
    Site,
    Study,
    StudyState,
)


@dataclass(frozen=True)
class WorkFilter:
    """What to list: a site (its code), rows changed since a time (aware), at most ``limit`` rows."""

    site_code: str | None = None
    since: datetime | None = None
    limit: int = 50


@dataclass(frozen=True)
class FailedStudy:
    """A failed study: why, when, after how many attempts, and with which model and prompt."""

    study_uid: str
    site: str | None
    version: int
    priority: str
    reason: str
    failed_at: datetime | None
    attempts: int
    job_id: int
    model: str | None
    prompt: str | None


@dataclass(frozen=True)
class JobRow:
    """One analysis job and its study."""

    job_id: int
    study_uid: str
    site: str | None
    study_version: int
    state: str
    purpose: str
    model: str | None
    prompt: str | None
    priority: str
    queue: str
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    error: str | None


def study_uids(session: Session, state: StudyState | None, where: WorkFilter) -> list[str]:
    """Return the UIDs of current studies in ``state`` (any state: None), newest received first.

    ``where.since`` keeps the studies received last at or after it.
    """
    query = (
        select(Study.study_uid)
        .outerjoin(Site, Study.site_id == Site.id)
        .where(Study.role == ROLE_CURRENT)
        .order_by(Study.last_received_at.desc())
        .limit(where.limit)
    )
    if state is not None:
        query = query.where(Study.state == state)
    if where.since is not None:
        query = query.where(Study.last_received_at >= where.since)
    if where.site_code is not None:
        query = query.where(Site.code == where.site_code)
    return [str(uid) for uid in session.scalars(query)]


def _studies_in(state: StudyState, where: WorkFilter) -> Select[Study, str]:
    """The current studies in ``state`` with their site codes, the most recently changed first, filtered."""
    query = (
        select(Study, Site.code)
        .outerjoin(Site, Study.site_id == Site.id)
        .where(Study.role == ROLE_CURRENT, Study.state == state)
        .order_by(Study.updated_at.desc(), Study.id.desc())
        .limit(where.limit)
    )
    if where.since is not None:
        query = query.where(Study.updated_at >= where.since)
    if where.site_code is not None:
        query = query.where(Site.code == where.site_code)
    return query


def failed_studies(session: Session, where: WorkFilter) -> list[FailedStudy]:
    """Return failed studies, the most recently failed first, each with its newest job's failure.

    ``where.since`` keeps the studies that changed (failed) at or after it.
    """
    rows: list[FailedStudy] = []
    for study, site in session.execute(_studies_in(StudyState.FAILED, where)):
        failure = failure_of(session, study)
        job = session.get(AnalysisJob, failure.job_id) if failure else None
        rows.append(
            FailedStudy(
                study_uid=study.study_uid,
                site=site,
                version=study.version,
                priority=study.priority,
                reason=failure.reason if failure else "no failed job (the study was marked failed)",
                failed_at=failure.failed_at if failure else study.updated_at,
                attempts=failure.attempts if failure else 0,
                job_id=failure.job_id if failure else 0,
                model=job.model_name if job else None,
                prompt=job.prompt_name if job else None,
            )
        )
    return rows


def list_jobs(session: Session, state: JobState | None, where: WorkFilter) -> list[JobRow]:
    """Return analysis jobs in ``state`` (any: None), newest first; ``where.since`` keeps jobs created since."""
    query = (
        select(AnalysisJob, Study.study_uid, Site.code)
        .join(Study, AnalysisJob.study_id == Study.id)
        .outerjoin(Site, Study.site_id == Site.id)
        .order_by(AnalysisJob.id.desc())
        .limit(where.limit)
    )
    if state is not None:
        query = query.where(AnalysisJob.state == state)
    if where.since is not None:
        query = query.where(AnalysisJob.created_at >= where.since)
    if where.site_code is not None:
        query = query.where(Site.code == where.site_code)
    return [
        JobRow(
            job_id=int(job.id),
            study_uid=uid,
            site=site,
            study_version=job.study_version,
            state=job.state.value,
            purpose=job.purpose,
            model=job.model_name,
            prompt=job.prompt_name,
            priority=job.priority,
            queue=job.queue,
            attempts=job.attempts,
            created_at=job.created_at,
            finished_at=job.finished_at,
            error=job.last_error,
        )
        for job, uid, site in session.execute(query)
    ]


def reanalyze_failed_study(
    session: Session,
    study: Study,
    *,
    model_name: str | None,
    prompt_name: str | None,
    stat: bool,
    actor: str,
    now: datetime,
    queue: str,
    stat_queue: str,
    source: str | None = None,
) -> int:
    """Queue the failed study's primary analysis again with a chosen model and prompt; return the job id (flushed).

    The study goes back to ``stable`` as after :func:`integration.store.retries.retry_failed_study`; the
    caller commits, then sends the message.  Audited ``study.reanalyze`` with the model and prompt.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The failed study.
    model_name, prompt_name : str or None
        A configured model and a prompt template (checked by the caller); None: the defaults.
    stat : bool
        Stat priority: the stat queue, and the study marked stat (a stat study stays stat).
    actor : str
        Who asked (a username, ``cli:<user>``).
    now : datetime
        Current time (aware, UTC).
    queue, stat_queue : str
        The analysis queue and the stat queue.
    source : str, optional
        Where from (``host:port``, ``cli``).

    Returns
    -------
    int
        The new job's id.

    Raises
    ------
    RetryRefused
        The study is not failed, or is a prior.
    """
    return retry_failed_study(
        session,
        study,
        actor=actor,
        now=now,
        queue=queue,
        stat_queue=stat_queue,
        source=source,
        model_name=model_name,
        prompt_name=prompt_name,
        stat=stat,
    )


#: Audit action of a study a routing rule skipped (its detail names the rule).
SKIPPED_ACTION = "study.skipped"


def skip_reason(session: Session, study: Study) -> str | None:
    """Return ``"skipped by rule <name>"`` for a skipped study (None for any other state).

    Read back from the study's ``study.skipped`` audit event, written in the transaction that skipped it, so no
    column of ``studies`` repeats it.
    """
    if study.state != StudyState.SKIPPED:
        return None
    return skip_reasons(session, [study.study_uid])[study.study_uid]


def skip_reasons(session: Session, study_uids: Sequence[str]) -> dict[str, str]:
    """Return :func:`skip_reason` of each of the skipped studies ``study_uids`` in one query (the worklist's page)."""
    rules: dict[str, object] = {}
    if study_uids:
        events = session.execute(
            select(AuditEvent.object_id, AuditEvent.detail)
            .where(
                AuditEvent.object_type == "study",
                AuditEvent.object_id.in_(list(study_uids)),
                AuditEvent.action == SKIPPED_ACTION,
            )
            .order_by(AuditEvent.id)
        )
        rules = {uid: (detail or {}).get("rule") for uid, detail in events}  # the latest event of each wins
    return {
        uid: f"skipped by rule {rules[uid]}" if rules.get(uid) else "skipped by a routing rule" for uid in study_uids
    }


@dataclass(frozen=True)
class SkippedStudy:
    """A study a routing rule took with ``skip``: not analysed on purpose (not an error)."""

    study_uid: str
    site: str | None
    version: int
    reason: str
    skipped_at: datetime


def skipped_studies(session: Session, where: WorkFilter) -> list[SkippedStudy]:
    """Return the studies skipped by a routing rule, the most recent first (``/admin/work``)."""
    return [
        SkippedStudy(study.study_uid, site, study.version, skip_reason(session, study) or "", study.updated_at)
        for study, site in session.execute(_studies_in(StudyState.SKIPPED, where))
    ]
