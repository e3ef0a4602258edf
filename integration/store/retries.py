"""Retrying the analysis of a failed study: a new job in the outbox, as the listener queues a stable study.

A study whose job failed (the model crashed, the attempts were used up) stays ``failed`` until an administrator
asks again, for instance after fixing the worker.  The new job is written like
:func:`integration.store.jobs.complete_stable_studies` writes one: a queued row for the study's current version
(stat studies to the stat queue) and the study ``stable``; the caller commits, then sends the message (a
message lost meanwhile is re-sent by the listener's outbox reconciler).  Audited ``study.retry``.

The failure's reason is shown on the study page (:func:`failure_of`): the newest job's error, never patient data
(job errors are written without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.tables import ROLE_PRIOR, AnalysisJob, JobState, Study, StudyState

#: The priority of a stat study (its job goes to the stat queue).
_STAT = "stat"


class RetryRefused(ValueError):
    """The study's analysis is not failed (nothing to retry), or the study is a prior."""


@dataclass(frozen=True)
class Failure:
    """Why a study's newest analysis failed, and when."""

    reason: str
    failed_at: datetime | None
    job_id: int
    attempts: int


def failure_of(session: Session, study: Study) -> Failure | None:
    """Return why the study's newest job failed, or None when it did not fail.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The study.

    Returns
    -------
    Failure or None
        The newest job's error and finish time, when that job failed.
    """
    job = session.scalars(
        select(AnalysisJob)
        .where(
            AnalysisJob.study_id == study.id, AnalysisJob.purpose != "shadow"
        )  # a candidate's failure is not the study's
        .order_by(AnalysisJob.id.desc())
        .limit(1)
    ).one_or_none()
    if job is None or job.state != JobState.FAILED:
        return None
    reason = (job.last_error or "").strip() or "the analysis failed without a recorded reason"
    return Failure(reason, job.finished_at, int(job.id), int(job.attempts))


def retry_failed_study(
    session: Session,
    study: Study,
    *,
    actor: str,
    now: datetime,
    queue: str,
    stat_queue: str | None = None,
    source: str | None = None,
    model_name: str | None = None,
    prompt_name: str | None = None,
    stat: bool = False,
) -> int:
    """Queue a new analysis job for a failed study and move it back to ``stable``; return the job id (flushed).

    With ``model_name`` or ``prompt_name`` (or ``stat``) it is a re-analysis at that choice, audited
    ``study.reanalyze`` with it; otherwise a retry as configured, audited ``study.retry``.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The failed study (already checked to be the user's).
    actor : str
        The administrator's username.
    now : datetime
        Current time (aware, UTC).
    queue : str
        The analysis queue.
    stat_queue : str, optional
        The queue of stat studies' jobs (None: ``queue``).
    source : str, optional
        Where from (``host:port``, ``cli``).
    model_name, prompt_name : str, optional
        A configured model and prompt template (checked by the caller); None: the defaults.
    stat : bool
        Stat priority: the stat queue, and the study marked stat (a stat study stays stat in any case).

    Returns
    -------
    int
        The new job's id.

    Raises
    ------
    RetryRefused
        The study is not failed, or is a prior.
    """
    if session.get_bind().dialect.name == "postgresql":  # one retry at a time per study: no twin jobs
        session.refresh(study, with_for_update=True)
    if study.role == ROLE_PRIOR:
        raise RetryRefused("a prior study is not analysed: it is shown beside the study it was fetched for")
    if study.state != StudyState.FAILED:
        raise RetryRefused(f"the study is {study.state.value}, not failed: there is nothing to retry")
    failure = failure_of(session, study)
    chosen = model_name is not None or prompt_name is not None or stat
    stat = stat or study.priority == _STAT
    job = AnalysisJob(
        study_id=study.id,
        study_version=study.version,
        queue=(stat_queue or queue) if stat else queue,
        priority=_STAT if stat else "routine",
        model_name=model_name,
        prompt_name=prompt_name,
        requested_by=actor[:64] if chosen else None,
        created_at=now,
    )
    session.add(job)
    if stat:
        study.priority = _STAT
    study.state = StudyState.STABLE
    study.updated_at = now
    session.flush()
    detail: dict[str, object] = {
        "job_id": int(job.id),
        "failed_job_id": failure.job_id if failure else None,
        "study_version": study.version,
    }
    if chosen:
        detail.update(model=model_name, prompt=prompt_name, priority=job.priority)
    add_event(
        session,
        actor=actor,
        action="study.reanalyze" if chosen else "study.retry",
        object_type="study",
        object_id=study.study_uid,
        source=source,
        detail=detail,
    )
    return int(job.id)
