"""Analysis jobs: completing stable studies, the outbox of queue messages, re-sends."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.opinions import STAT
from integration.store.order_tables import Order, OrderStatus
from integration.store.orders import link_order
from integration.store.tables import (
    ROLE_CURRENT,
    AnalysisJob,
    JobState,
    PriorSearch,
    PriorSearchState,
    Site,
    Study,
    StudyState,
)

#: Adds the jobs of a study that just became stable (flushed by the caller) and sets its state; returns the jobs
#: to send (none: the study ended without one, e.g. skipped by its routing rule).
JobMaker = Callable[[Session, Study], list[AnalysisJob]]


@dataclass(frozen=True)
class PendingSend:
    """A job whose message must be (re)sent to its queue; ``send_count`` is how often it was sent already."""

    job_id: int
    queue: str
    send_count: int


def restart_receiving_timers(session: Session, now: datetime, stable_seconds_for: Callable[[str], float]) -> int:
    """Give every study still receiving a full idle time from ``now``; return how many moved.

    Called when the listener starts: while it was away nobody could send, so a study whose timer ran
    out meanwhile is not complete, its sender is about to retry. ``stable_seconds_for`` gives the idle
    seconds for a calling AE title.
    """
    moved = 0
    for study in session.scalars(select(Study).where(Study.state == StudyState.RECEIVING)):
        fresh = now + timedelta(seconds=stable_seconds_for(study.calling_ae))
        if study.stable_after < fresh:
            study.stable_after, moved = fresh, moved + 1
    return moved


def complete_stable_studies(
    session: Session,
    now: datetime,
    queue: str,
    limit: int = 100,
    sites: Mapping[str, str] | None = None,
    *,
    prior_wait_seconds: float = 0.0,
    stat_queue: str | None = None,
    make_jobs: JobMaker | None = None,
    without_job: list[int] | None = None,
) -> list[int]:
    """Turn studies idle past their timer into ``stable`` studies with a new job; return the job ids (flushed).

    Queued jobs of older versions of the same study are superseded, so a late
    arrival never mixes with an earlier draft.  On PostgreSQL the studies are
    locked with ``SKIP LOCKED`` so several listeners can share the work.  Priors
    (role ``prior``) are never completed; a study whose prior search is still
    pending or running waits for it, at most ``prior_wait_seconds`` past its timer.  Held studies (MPPS
    discontinued) are not receiving, so never completed here.

    The study's RIS order decides the rest (a study not linked yet is matched once more, in case its order
    arrived while its first instance was being stored): a cancelled or discontinued order ends the study
    ``cancelled`` without a job; a stat order makes the study stat, and a stat study's job is ``stat`` and
    goes to ``stat_queue``.  ``make_jobs`` makes the jobs (the routing rule's model, prompt, priority and
    shadow; a ``skip`` rule ends the study ``skipped`` without one).

    Parameters
    ----------
    queue : str
        Queue the new jobs go to.
    limit : int
        Studies handled per call.
    sites : mapping of str to str, optional
        Site code per calling AE: a study without a site gets its sender's (unknown codes are left unset).
    prior_wait_seconds : float
        How long past its idle timer a study waits for its prior search to finish (0: it does not wait).
    stat_queue : str, optional
        Queue of the jobs of stat studies (None: ``queue``).
    make_jobs : callable, optional
        Adds the jobs of a study that became stable and sets its state (the routing rule's choice:
        :func:`integration.intake.rule_jobs.rule_job_maker`); None: one primary job on the default model.
    without_job : list of int, optional
        Receives the ids of the studies that completed without a job to send (skipped by their rule, or
        failed for a name nobody configured): their worklist attributes are recorded all the same.
    """
    searching = exists().where(
        PriorSearch.study_id == Study.id,
        PriorSearch.state.in_((PriorSearchState.PENDING, PriorSearchState.RUNNING)),
    )
    waited = Study.stable_after <= now - timedelta(seconds=prior_wait_seconds)
    studies = session.scalars(
        select(Study)
        .where(Study.state == StudyState.RECEIVING, Study.stable_after <= now, Study.role == ROLE_CURRENT)
        .where(or_(waited, ~searching))
        .order_by(Study.stable_after)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    jobs = []
    for study in studies:
        session.execute(
            update(AnalysisJob)
            .where(
                AnalysisJob.study_id == study.id,
                AnalysisJob.state == JobState.QUEUED,
                AnalysisJob.study_version < study.version,
            )
            .values(state=JobState.SUPERSEDED, finished_at=now, last_error="superseded by a later study version")
        )
        code = (sites or {}).get(study.calling_ae)
        if study.site_id is None and code is not None:
            study.site_id = session.scalar(select(Site.id).where(Site.code == code.upper()))
        study.updated_at = now
        order_status = _order_status(session, study)
        if order_status is not None and order_status != OrderStatus.SCHEDULED.value:
            study.state = StudyState.CANCELLED
            add_event(
                session,
                actor="pacs-vlm",
                action="study.cancelled",
                object_type="study",
                object_id=study.study_uid,
                detail={"reason": f"the order was {order_status}", "study_version": study.version},
            )
            continue
        made = (
            make_jobs(session, study) if make_jobs is not None else [_plain_job(session, study, queue, stat_queue, now)]
        )
        if not made and without_job is not None:
            without_job.append(study.id)
        jobs += made
    session.flush()
    return [job.id for job in jobs]


def _plain_job(session: Session, study: Study, queue: str, stat_queue: str | None, now: datetime) -> AnalysisJob:
    """Add the primary job of a stable study on the default model (stat studies to the stat queue)."""
    stat = study.priority == STAT
    job = AnalysisJob(
        study_id=study.id,
        study_version=study.version,
        queue=(stat_queue or queue) if stat else queue,
        priority=STAT if stat else "routine",
        created_at=now,
    )
    session.add(job)
    study.state = StudyState.STABLE
    return job


def _order_status(session: Session, study: Study) -> str | None:
    """The status of the study's order (matching it once more when not linked; a stat order makes it stat)."""
    if study.order_id is None and study.accession_number:
        link_order(session, study)
    if study.order_id is None:
        return None
    order = session.get(Order, study.order_id)
    if order is None:
        return None
    if order.priority == STAT:
        study.priority = STAT
    return order.status


def jobs_to_send(
    session: Session, now: datetime, resend_after: float, *, everything: bool = False, lost_after: float | None = None
) -> list[PendingSend]:
    """List queued jobs whose message was never sent or may have been lost, and running jobs whose worker was lost.

    Oldest first.

    Parameters
    ----------
    resend_after : float
        Seconds after which a queued, unstarted job is sent again.
    everything : bool
        Re-send every queued job (the broker restarted and lost its queues).
    lost_after : float, optional
        Seconds after which a job still ``running`` has outlived the worker's hard time limit: its worker
        (machine) died without the broker noticing yet, so the job is sent again (the claim counts the
        attempt; the draft is written once).  None: running jobs are left to the broker's redelivery.
    """
    stale = now - timedelta(seconds=resend_after)
    queued = AnalysisJob.state == JobState.QUEUED
    if not everything:
        queued = and_(queued, or_(AnalysisJob.sent_at.is_(None), AnalysisJob.sent_at < stale))
    wanted = queued
    if lost_after is not None:
        lost = and_(
            AnalysisJob.state == JobState.RUNNING,
            AnalysisJob.started_at < now - timedelta(seconds=lost_after),
            or_(AnalysisJob.sent_at.is_(None), AnalysisJob.sent_at < now - timedelta(seconds=lost_after)),
        )
        wanted = or_(queued, lost)
    query = select(AnalysisJob.id, AnalysisJob.queue, AnalysisJob.send_count).where(wanted)
    rows = session.execute(query.order_by(AnalysisJob.id)).all()
    return [PendingSend(job_id, queue, count) for job_id, queue, count in rows]


def mark_sent(session: Session, job_id: int, now: datetime) -> None:
    """Record that a job's message reached the broker at ``now`` (aware, UTC)."""
    job = session.get(AnalysisJob, job_id)
    if job is None:
        return
    job.sent_at = now
    job.send_count += 1
    study = session.get(Study, job.study_id)
    if study is not None and study.state == StudyState.STABLE and study.version == job.study_version:
        study.state = StudyState.QUEUED
        study.updated_at = now


def record_job_error(session: Session, job_id: int, error: str) -> None:
    """Keep a job's last error (a send the broker refused, an attempt to be retried; no patient data)."""
    session.execute(update(AnalysisJob).where(AnalysisJob.id == job_id).values(last_error=error[:2000]))
