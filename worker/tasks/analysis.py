"""The worker's tasks: ``pacs_vlm.analyze_study(job_id)`` drafts a report for one analysis job.

A job may name a configured model and a prompt template (a second opinion); a name this worker does not
know fails the job at once, with the reason, instead of being retried.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from integration.alerts.raise_alerts import open_critical_alerts
from integration.config import Settings, get_settings
from integration.export.corrections import withdraw_reports
from integration.export.outbox import queue_deliveries
from integration.imaging.selection import NoImages
from integration.live_config import live_settings
from integration.queue import ANALYZE_STUDY
from integration.reports.drafts import ensure_draft_sr
from integration.reports.shadow import compare_late_shadow
from integration.store.jobs import record_job_error
from integration.store.opinions import SHADOW, JobChoice, job_choice
from integration.store.orders import order_for_study
from integration.store.priors import priors_view
from integration.store.reports import SkippedJob, claim_job, fail_job, instance_files, record_draft_superseding
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, Report, ReportPurpose, ReportStatus, utcnow
from models.backend import ModelNotStaged
from models.batching import BatchTimeout
from models.prompts import UnknownPrompt, template_named
from worker.backends import UnknownModel, model_backend
from worker.celery_app import app
from worker.live_prompts import templates_in_force
from worker.pipeline import draft_study

log = logging.getLogger(__name__)

#: Seconds before the first retry of a job that failed for a passing reason; doubled per attempt.
RETRY_BASE_SECONDS = 30.0
RETRY_MAX_SECONDS = 600.0


@app.task(name=ANALYZE_STUDY, bind=True, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def analyze_study(self: Any, job_id: int) -> str:
    """Draft a report for one analysis job; safe to deliver more than once.

    Parameters
    ----------
    self : celery.Task
        The bound task (for retries).
    job_id : int
        The analysis job's id (the message carries nothing else).

    Returns
    -------
    str
        What happened, for the worker's log.
    """
    settings = live_settings(get_settings())  # destinations, rules and models as configured now
    url = settings.database_url
    with session_scope(url) as session:  # the claim step commits (and unlocks the job) before the model runs
        claimed = claim_job(session, job_id, max_attempts=settings.analysis_max_attempts, now=utcnow())
    if isinstance(claimed, SkippedJob):
        log.info("analysis job %d not run: %s", job_id, claimed.reason)
        return claimed.reason
    log.info("analysis job %d: attempt %d", job_id, claimed.attempt)
    started = time.perf_counter()
    try:
        with session_scope(url) as session:
            choice = job_choice(session, job_id) or JobChoice(None, None)
            files = instance_files(session, claimed.study_id, claimed.study_version)
            priors = priors_view(session, claimed.study_id)
            order = order_for_study(session, claimed.study_id)
            shadow = session.scalar(select(AnalysisJob.purpose).where(AnalysisJob.id == job_id)) == SHADOW
        log.info(
            "analysis job %d: model %s, prompt %s",
            job_id,
            choice.model_name or "(default)",
            choice.prompt_name or "(by modality)",
        )
        templates = templates_in_force(settings)  # the database's current versions: the draft records its own
        if choice.prompt_name is not None:
            template_named(choice.prompt_name, templates)  # an unknown prompt fails before a model is loaded
        backend, load_seconds = model_backend(settings, choice.model_name)
        draft = draft_study(
            settings,
            claimed,
            files,
            backend,
            load_seconds=load_seconds,
            prompt_name=choice.prompt_name,
            templates=templates,
            priors=priors,
            # the order's reason for exam before the header's (dropped for an untrusted model server, like it)
            clinical_question=order.indication if order is not None else None,
        )
    except (NoImages, ModelNotStaged, UnknownModel, UnknownPrompt) as exc:
        _fail(job_id, str(exc))
        return "failed"
    except (SoftTimeLimitExceeded, BatchTimeout):
        _fail(job_id, f"analysis took longer than {settings.analysis_soft_time_limit:.0f} s (soft time limit)")
        return "failed"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.exception("analysis job %d, attempt %d failed", job_id, claimed.attempt)
        if claimed.attempt >= settings.analysis_max_attempts:
            _fail(job_id, f"gave up after {claimed.attempt} attempts: {error}")
            return "failed"
        with session_scope(url) as session:
            record_job_error(session, job_id, error)
        countdown = min(RETRY_BASE_SECONDS * 2 ** (claimed.attempt - 1), RETRY_MAX_SECONDS)
        raise self.retry(exc=exc, countdown=countdown) from exc
    with session_scope(url) as session:
        recorded = record_draft_superseding(session, job_id, draft, utcnow())
        report_id = recorded.report_id
        withdrawn = session.scalar(select(Report.status).where(Report.id == report_id)) == ReportStatus.WITHDRAWN
    if withdrawn:  # the order was cancelled while the model ran: kept, never exported
        log.info("analysis job %d: draft report %d withdrawn (its order was cancelled)", job_id, report_id)
        return f"report {report_id} withdrawn"
    if shadow:  # hidden from reviewers: no alert, no SR, no delivery; measured against the signed report only
        return _shadow_recorded(settings, job_id, report_id)
    _open_alert(settings, report_id)  # a critical finding reaches a person before anything else is sent
    _write_draft_sr(settings, report_id)
    queue_deliveries(settings, report_id, None, "draft")
    if recorded.superseded:  # the study's older drafts are taken back from the receivers that got them
        withdraw_reports(settings, recorded.superseded, "superseded")
    log.info(
        "analysis job %d: draft report %d in %.1f s (%d tokens in, %d out, prompt %s)",
        job_id,
        report_id,
        time.perf_counter() - started,
        draft.tokens_in,
        draft.tokens_out,
        draft.prompt_version,
    )
    return f"report {report_id}"


def _shadow_recorded(settings: Settings, job_id: int, report_id: int) -> str:
    """Finish a shadow job: compare its draft with the signed report when the study was signed meanwhile."""
    with session_scope(settings.database_url) as session:
        if session.scalar(select(Report.purpose).where(Report.id == report_id)) != ReportPurpose.SHADOW:
            # the candidate drafted exactly what a visible draft holds (same model, revision, prompt version)
            log.warning(
                "shadow job %d: its draft is report %d, not a shadow draft: nothing compared", job_id, report_id
            )
            return f"report {report_id} (not a shadow draft)"
        compared = compare_late_shadow(session, report_id)
    log.info("shadow job %d: shadow draft report %d%s", job_id, report_id, " compared" if compared else "")
    return f"shadow report {report_id}"


def _open_alert(settings: Settings, report_id: int) -> None:
    """Open the draft's critical-finding alert, if it has critical matches; a failure is retried by the reconciler.

    The draft is recorded already, so the task does not fail with it: the reconciler's escalation pass opens
    alerts for drafts with critical matches that have none (see :mod:`integration.alerts.escalation`).
    """
    try:
        alert_id = open_critical_alerts(settings, report_id)
    except Exception:
        log.exception("draft report %d: its critical-finding alert could not be opened now", report_id)
    else:
        if alert_id is not None:
            log.warning("draft report %d: critical finding, alert %d opened", report_id, alert_id)


def _write_draft_sr(settings: Settings, report_id: int) -> None:
    """Give the draft its DICOM SR; a failure is logged and leaves the draft as it is (built again on demand)."""
    try:
        path = ensure_draft_sr(settings, report_id)
    except Exception:
        log.exception("draft report %d: its SR could not be written (the draft is kept)", report_id)
    else:
        log.info("draft report %d: SR %s", report_id, path)


def _fail(job_id: int, reason: str) -> None:
    log.error("analysis job %d failed: %s", job_id, reason)
    with session_scope(get_settings().database_url) as session:
        fail_job(session, job_id, reason, utcnow())
