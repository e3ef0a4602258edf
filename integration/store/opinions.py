"""Second opinions: another analysis of a study's current version, by another model or prompt, maybe stat.

A second opinion is an :class:`~integration.store.tables.AnalysisJob` with purpose ``second_opinion``; its
row is the outbox of its queue message (the listener's reconciler re-sends a job whose message never
left).  Because a draft is unique per study version, model, revision and prompt version, another model
or prompt makes a second draft of the same study version beside the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.tables import (
    ROLE_PRIOR,
    AnalysisJob,
    JobState,
    Report,
    ReportPurpose,
    ReportStatus,
    Study,
    StudyState,
    utcnow,
)

#: Names of the built-in prompt templates of ``models/prompts.py`` (the edge may not import ``models``; a test
#: keeps the two lists equal): the prompts there are until the database's are seeded.  Once seeded, the names
#: are the database's current ones (:func:`integration.live_config.prompt_names`).
BUILTIN_PROMPT_NAMES: tuple[str, ...] = ("ct-chest", "ct-head", "ct", "mr", "radiograph-chest", "general")
#: Purposes of analysis jobs.
PRIMARY = "primary"
SECOND_OPINION = "second_opinion"
#: A routing rule's candidate model drafting the same study, hidden from reviewers (shadow mode).
SHADOW = "shadow"
#: ``analysis_jobs.requested_by`` of a job whose model, prompt, priority or shadow a routing rule chose: this,
#: then the rule's name.
RULE_REQUESTER = "rule:"
#: Priorities of studies and jobs.
ROUTINE = "routine"
STAT = "stat"


class OpinionRefused(ValueError):
    """A second opinion cannot be requested; the message says why."""


class DuplicateOpinion(OpinionRefused):
    """The same model and prompt already has a draft, or a queued or running job, for this study version."""


class StudyNotReady(OpinionRefused):
    """The study is still receiving instances (its version is not final yet)."""


class PriorStudyNotDrafted(OpinionRefused):
    """The study is a prior fetched for comparison: priors are never drafted."""


@dataclass(frozen=True)
class JobChoice:
    """What a job asks for: a configured model and a prompt template (None: the defaults)."""

    model_name: str | None
    prompt_name: str | None


def _same(column: Any, value: str | None) -> ColumnElement[bool]:
    result: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return result


#: Why a second opinion is refused when a routing rule's shadow already runs that model and prompt.
_SHADOWED = "this model and prompt already drafts this study version in shadow mode (a routing rule's candidate)"


def duplicate_of(session: Session, study: Study, model_name: str | None, prompt_name: str | None) -> str | None:
    """Say what already covers this model and prompt for the study's current version, or None.

    A job of the same model and prompt that is queued or running covers it, and so does a report of this
    version from the same model with that prompt (by its prompt version's name when a prompt is named; from
    a job that named no prompt otherwise). None for ``model_name``/``prompt_name`` means the worker's
    default model and the prompt chosen by modality and body part. Returns a sentence naming the job or report.
    """
    this_version = and_(AnalysisJob.study_id == study.id, AnalysisJob.study_version == study.version)
    pending = session.execute(
        select(AnalysisJob.id, AnalysisJob.purpose)
        .where(
            this_version,
            AnalysisJob.state.in_([JobState.QUEUED, JobState.RUNNING]),
            _same(AnalysisJob.model_name, model_name),
            _same(AnalysisJob.prompt_name, prompt_name),
        )
        .limit(1)
    ).first()
    if pending is not None and pending.purpose == SHADOW:  # never name a hidden job
        return _SHADOWED
    if pending is not None:
        return f"analysis job {pending.id} with the same model and prompt is already queued or running"
    prompt_matches = (
        _same(AnalysisJob.prompt_name, None)
        if prompt_name is None
        else Report.prompt_version.startswith(prompt_name + "/", autoescape=True)
    )
    report = session.execute(
        select(Report.id, Report.purpose)
        .join(AnalysisJob, Report.job_id == AnalysisJob.id)
        .where(
            this_version,
            Report.study_version == study.version,
            Report.status != ReportStatus.SUPERSEDED,
            _same(AnalysisJob.model_name, model_name),
            prompt_matches,
        )
        .limit(1)
    ).first()
    if report is not None and report.purpose is ReportPurpose.SHADOW:
        return _SHADOWED
    if report is not None:
        return f"report {report.id} of this study version already comes from the same model and prompt"
    return None


def request_second_opinion(
    session: Session,
    study: Study,
    *,
    model_name: str | None,
    prompt_name: str | None,
    stat: bool,
    requested_by: str,
    queue: str,
    source: str | None = None,
    now: datetime | None = None,
) -> int:
    """Queue a second analysis of the study's current version, audit it (``opinion.requested``).

    The caller's scope commits, then the caller sends the job's message
    (:func:`integration.queue.send_analyze_study`); until it is sent, the job is a queued row the listener's
    reconciler sends. Returns the new job's id.

    Parameters
    ----------
    study : Study
        The study (already checked to be the requester's to see).
    model_name : str or None
        A configured model (``PACSVLM_MODELS`` key), None for the default model; checked by the caller.
    prompt_name : str or None
        A prompt template name (:func:`integration.live_config.prompt_names`), None to choose by modality and body part.
    stat : bool
        Stat priority: the job goes to ``queue`` (the stat queue) and the study becomes ``stat``.
    requested_by : str
        Username of the requester.
    queue : str
        Queue of the job (the stat queue for stat requests, else the analysis queue).
    source : str, optional
        Where the request came from (for the audit event).
    now : datetime, optional
        Current time (aware, UTC).

    Raises
    ------
    StudyNotReady
        The study is still receiving instances.
    PriorStudyNotDrafted
        The study is a prior, fetched to compare another study with.
    DuplicateOpinion
        The same model and prompt already has a draft, or a queued or running job, for this version.
    """
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":  # one request at a time per study: no twin jobs
        session.execute(select(Study.id).where(Study.id == study.id).with_for_update())
        session.refresh(study)
    if study.role == ROLE_PRIOR:
        raise PriorStudyNotDrafted("a prior study is not drafted: it is shown beside the study it was fetched for")
    if study.state == StudyState.RECEIVING:
        raise StudyNotReady("the study is still receiving images; ask again once it is complete")
    duplicate = duplicate_of(session, study, model_name, prompt_name)
    if duplicate is not None:
        raise DuplicateOpinion(duplicate)
    priority = STAT if stat else ROUTINE
    job = AnalysisJob(
        study_id=study.id,
        study_version=study.version,
        queue=queue,
        created_at=now,
        model_name=model_name,
        prompt_name=prompt_name,
        priority=priority,
        purpose=SECOND_OPINION,
        requested_by=requested_by,
    )
    session.add(job)
    if stat:
        study.priority = STAT
    session.flush()
    add_event(
        session,
        actor=requested_by,
        action="opinion.requested",
        object_type="study",
        object_id=study.study_uid,
        source=source,
        detail={
            "job_id": job.id,
            "model": model_name,
            "prompt": prompt_name,
            "priority": priority,
            "study_version": study.version,
        },
    )
    return int(job.id)


def job_choice(session: Session, job_id: int) -> JobChoice | None:
    """Return the model and prompt a job asks for (None when the job does not exist)."""
    row = session.execute(
        select(AnalysisJob.model_name, AnalysisJob.prompt_name).where(AnalysisJob.id == job_id)
    ).one_or_none()
    return None if row is None else JobChoice(row[0], row[1])


def study_opinions(session: Session, study: Study) -> dict[str, Any]:
    """Return a study's analysis jobs and reports, oldest first: what was asked, of whom, and what came of it.

    ``study_uid``, ``version``, ``priority``, ``jobs`` (model, prompt, purpose, priority, state,
    report id ...) and ``drafts`` (report id, model id, prompt version, status ...).
    """
    jobs = session.scalars(
        select(AnalysisJob)
        .where(AnalysisJob.study_id == study.id, AnalysisJob.purpose != SHADOW)  # shadow mode is hidden
        .order_by(AnalysisJob.id)
    ).all()
    reports = session.scalars(
        select(Report).where(Report.study_id == study.id, Report.purpose != ReportPurpose.SHADOW).order_by(Report.id)
    ).all()
    by_job = {report.job_id: report.id for report in reports if report.job_id is not None}
    return {
        "study_uid": study.study_uid,
        "version": study.version,
        "priority": study.priority,
        "jobs": [
            {
                "job_id": job.id,
                "study_version": job.study_version,
                "model": job.model_name,
                "prompt": job.prompt_name,
                "purpose": job.purpose,
                "priority": job.priority,
                "state": job.state.value,
                "queue": job.queue,
                "requested_by": job.requested_by,
                "created_at": job.created_at.isoformat(),
                "started_at": job.started_at.isoformat() if job.started_at else None,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
                "error": job.last_error,
                "report_id": by_job.get(job.id),
            }
            for job in jobs
        ],
        "drafts": [
            {
                "report_id": report.id,
                "job_id": report.job_id,
                "study_version": report.study_version,
                "status": report.status.value,
                "model_id": report.model_id,
                "model_revision": report.model_revision,
                "prompt_version": report.prompt_version,
                "created_at": report.created_at.isoformat(),
            }
            for report in reports
        ],
    }
