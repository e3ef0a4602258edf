"""An administrator's actions on failed work, shared by the command line and the ``/admin/work`` page.

Why one place: ``pacs-vlm studies retry|reanalyze``, ``pacs-vlm deliveries`` and the page's buttons must do
the same thing, audited the same way.  Each action commits its rows first (the job row is the outbox of its
queue message), then sends the message; a broker that is away leaves the job queued for the listener's
reconciler (or the delivery pending for the resend pass), and the answer says so (``sent`` is False).

Re-analysis at a chosen model and prompt: a *failed* study gets its primary analysis again with that choice
(its draft becomes the report of record); any other study gets a second opinion beside its report of record,
never replacing what a radiologist reads or signed (:mod:`integration.store.work`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.live_config import live_settings, prompt_names
from integration.queue import send_analyze_study, send_deliver
from integration.store.audit import add_event
from integration.store.deliveries import retry_deliveries
from integration.store.jobs import mark_sent, record_job_error
from integration.store.opinions import PRIMARY, SECOND_OPINION, OpinionRefused, request_second_opinion
from integration.store.retries import RetryRefused, retry_failed_study
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, Delivery, DeliveryState, Study, StudyState, utcnow
from integration.store.work import reanalyze_failed_study
from integration.uids import is_valid_uid

log = logging.getLogger(__name__)


class WorkRefused(ValueError):
    """The action cannot be done; the message says why and what to do."""


class NoSuchStudy(WorkRefused):
    """No study has this UID."""


@dataclass(frozen=True)
class QueuedJob:
    """An analysis job queued by an action: its purpose (``primary``/``second_opinion``) and whether it was sent."""

    job_id: int
    queue: str
    purpose: str
    sent: bool


def check_choice(settings: Settings, model: str | None, prompt: str | None) -> None:
    """Refuse a model or prompt that is not configured, naming those that are.

    Raises
    ------
    WorkRefused
        An unknown model or prompt.
    """
    models = live_settings(settings).models
    if model is not None and model not in models:
        configured = ", ".join(sorted(models)) or "none (pacs-vlm config set model ...)"
        raise WorkRefused(f"unknown model {model[:64]!r}: the configured models are {configured}")
    prompts = prompt_names(settings)
    if prompt is not None and prompt not in prompts:
        raise WorkRefused(f"unknown prompt {prompt[:64]!r}: the prompts are {', '.join(prompts)}")


def _study(session: Session, study_uid: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid)) if is_valid_uid(study_uid) else None
    if study is None:
        raise NoSuchStudy("no such study: see 'pacs-vlm studies list'")
    return study


def send_job(settings: Settings, job_id: int, queue: str) -> bool:
    """Send a committed job's message and record it as sent; False when the broker was away (kept on the job)."""
    try:
        send_analyze_study(settings, job_id, queue, 0)
    except Exception as exc:  # kombu raises many kinds when the broker is away; the reconciler sends it later
        log.warning("job %d not sent, the reconciler will: %s", job_id, type(exc).__name__)
        with session_scope(settings.database_url) as session:
            record_job_error(session, job_id, f"broker: {type(exc).__name__}: {exc}")
        return False
    with session_scope(settings.database_url) as session:
        mark_sent(session, job_id, utcnow())
    return True


def _queued(settings: Settings, job_id: int, purpose: str) -> QueuedJob:
    with session_scope(settings.database_url) as session:
        queue = session.scalars(select(AnalysisJob.queue).where(AnalysisJob.id == job_id)).one()
    return QueuedJob(job_id, queue, purpose, send_job(settings, job_id, queue))


def retry_study(settings: Settings, study_uid: str, *, actor: str, source: str | None) -> QueuedJob:
    """Queue a failed study's analysis again (audited ``study.retry``) and send it.

    Raises
    ------
    WorkRefused
        No such study, or it is not failed.
    """
    with session_scope(settings.database_url) as session:
        study = _study(session, study_uid)
        try:
            job_id = retry_failed_study(
                session,
                study,
                actor=actor,
                now=utcnow(),
                queue=settings.analysis_queue,
                stat_queue=settings.stat_queue,
                source=source,
            )
        except RetryRefused as exc:
            raise WorkRefused(str(exc)) from None
    return _queued(settings, job_id, PRIMARY)


def reanalyze_study(
    settings: Settings,
    study_uid: str,
    *,
    model: str | None,
    prompt: str | None,
    stat: bool,
    actor: str,
    source: str | None,
) -> QueuedJob:
    """Analyse a study again with a chosen model and prompt, and send the job.

    A failed study's primary analysis is queued again (audited ``study.reanalyze``); any other study gets a
    second opinion (audited ``opinion.requested``).

    Raises
    ------
    WorkRefused
        No such study, an unknown model or prompt, or the request is refused (a prior, still receiving, the
        same model and prompt already drafted or queued).
    """
    check_choice(settings, model, prompt)
    with session_scope(settings.database_url) as session:
        study = _study(session, study_uid)
        try:
            if study.state == StudyState.FAILED:
                purpose = PRIMARY
                job_id = reanalyze_failed_study(
                    session,
                    study,
                    model_name=model,
                    prompt_name=prompt,
                    stat=stat,
                    actor=actor,
                    now=utcnow(),
                    queue=settings.analysis_queue,
                    stat_queue=settings.stat_queue,
                    source=source,
                )
            else:
                purpose = SECOND_OPINION
                job_id = request_second_opinion(
                    session,
                    study,
                    model_name=model,
                    prompt_name=prompt,
                    stat=stat,
                    requested_by=actor[:64],
                    queue=settings.stat_queue if stat else settings.analysis_queue,
                    source=source,
                    now=utcnow(),
                )
        except (RetryRefused, OpinionRefused) as exc:
            raise WorkRefused(str(exc)) from None
    return _queued(settings, job_id, purpose)


def retry_dead_letters(
    settings: Settings, delivery_ids: list[int] | None, *, actor: str, source: str | None
) -> tuple[list[int], bool]:
    """Make dead-letter deliveries pending again with fresh attempts (each audited ``delivery.retry``), send them.

    ``delivery_ids`` names dead letters; None retries every dead letter.  Returns the ids made pending and
    whether every message was sent (False: the broker was away; the resend pass sends them later).

    Raises
    ------
    WorkRefused
        A named delivery is not a dead letter (delivered, cancelled, pending, or unknown).
    """
    with session_scope(settings.database_url) as session:
        if delivery_ids is not None:
            dead = set(
                session.scalars(
                    select(Delivery.id).where(
                        Delivery.id.in_(delivery_ids), Delivery.state == DeliveryState.DEAD_LETTER
                    )
                )
            )
            others = sorted(set(delivery_ids) - dead)
            if others:
                listed = ", ".join(map(str, others))
                raise WorkRefused(f"not dead letters: {listed}; see 'pacs-vlm deliveries list --state dead_letter'")
        ids = retry_deliveries(session, delivery_ids, utcnow())
        for delivery_id in ids:
            add_event(
                session,
                actor=actor,
                action="delivery.retry",
                object_type="delivery",
                object_id=str(delivery_id),
                source=source,
            )
    try:
        for delivery_id in ids:
            send_deliver(settings, delivery_id)
    except Exception as exc:  # kombu raises many kinds when the broker is away
        log.warning("dead letters made pending but not sent: %s", type(exc).__name__)
        return ids, False
    return ids, True
