"""Second opinions: re-analysis with another model or prompt, optionally at stat priority, and the comparison.

JSON (radiologists and administrators; object-level 404 for other sites' studies):

* ``POST /api/studies/{uid}/second-opinions`` ``{"model": str|null, "prompt": str|null, "stat": bool}``:
  201 with the job id; 422 for a model or prompt that is not configured (the answer lists those that are);
  409 when the same model and prompt already has a draft or a queued or running job for the study's
  version, or the study is still receiving.  Audited ``opinion.requested``.
* ``GET /api/studies/{uid}/opinions``: the study's jobs and drafts.
* ``GET /api/studies/{uid}/comparison?a=<report id>&b=<report id>``: two drafts side by side, with their
  agreement (:mod:`integration.reports.agreement`).

Pages: ``GET /studies/{uid}/compare?a=&b=`` and its form, ``POST /studies/{uid}/second-opinions`` (303 back).
The comparison page names the patient (a radiologist compares readings of someone, never of a UID) and the
study's report of record: a second opinion is material for it, never a second signable report.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.live_config import live_settings, prompt_names
from integration.queue import send_analyze_study
from integration.reports.agreement import compare_drafts, finding_texts
from integration.store.jobs import mark_sent, record_job_error
from integration.store.opinions import OpinionRefused, request_second_opinion, study_opinions
from integration.store.priority import mark_read
from integration.store.revisions import report_of_record
from integration.store.session import session_scope
from integration.store.shadow import reviewable
from integration.store.tables import Report, ReportStatus, Study, utcnow
from integration.web.deps import AppSettings, CurrentUser, DbSession, PageReviewer, Reviewer, StudyUid, client_address
from integration.web.pages.templating import PageRoute, render
from integration.web.schemas import Comparison, OpinionQueued, StudyOpinions
from integration.web.security.access import report_for, study_for
from integration.web.security.csrf import require_csrf

log = logging.getLogger(__name__)


class OpinionRequest(BaseModel):
    """The body of ``POST /api/studies/{uid}/second-opinions``."""

    model_config = ConfigDict(extra="forbid")

    #: A ``PACSVLM_MODELS`` name; null for the worker's default model.
    model: str | None = None
    #: A prompt template name; null to choose by modality and body part.
    prompt: str | None = None
    #: Stat priority: the stat queue, which workers take first.
    stat: bool = False


def check_choice(settings: Settings, model: str | None, prompt: str | None) -> None:
    """Refuse a model or prompt that is not configured, naming those that are.

    Parameters
    ----------
    settings : Settings
        The settings (``models``).
    model, prompt : str or None
        The request.

    Raises
    ------
    fastapi.HTTPException
        422 with the configured names.
    """
    models = live_settings(settings).models
    if model is not None and model not in models:
        configured = ", ".join(sorted(models)) or "none (pacs-vlm config set model ...)"
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"unknown model {model[:64]!r}: the configured models are {configured}; null asks the default model",
        )
    prompts = prompt_names(settings)
    if prompt is not None and prompt not in prompts:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"unknown prompt {prompt[:64]!r}: the prompts are {', '.join(prompts)}; null chooses by modality",
        )


def queue_opinion(
    request: Request, settings: Settings, user: CurrentUser, study_uid: str, body: OpinionRequest
) -> OpinionQueued:
    """Check and store a second-opinion request (committed), then send it (``sent``: False when the broker was away).

    Raises
    ------
    fastapi.HTTPException
        404 (not the user's study), 422 (unknown model or prompt), 409 (duplicate, or still receiving).
    """
    check_choice(settings, body.model, body.prompt)
    queue = settings.stat_queue if body.stat else settings.analysis_queue
    with session_scope(settings.database_url) as session:
        study = study_for(session, user, study_uid)
        try:
            job_id = request_second_opinion(
                session,
                study,
                model_name=body.model,
                prompt_name=body.prompt,
                stat=body.stat,
                requested_by=user.username,
                queue=queue,
                source=client_address(request),
            )
        except OpinionRefused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    sent = send_opinion(settings, job_id, queue)
    return OpinionQueued(job_id=job_id, queue=queue, priority="stat" if body.stat else "routine", sent=sent)


def send_opinion(settings: Settings, job_id: int, queue: str) -> bool:
    """Send a second-opinion job's message and record it as sent.

    Parameters
    ----------
    settings : Settings
        The settings (broker, database).
    job_id : int
        The job, committed already.
    queue : str
        Its queue.

    Returns
    -------
    bool
        True when the broker took the message; False when it was away (the error is kept on the job and
        the listener's reconciler sends it later).
    """
    try:
        send_analyze_study(settings, job_id, queue, 0)
    except Exception as exc:  # kombu raises many kinds when the broker is away
        log.warning("second-opinion job %d not sent, the reconciler will: %s", job_id, type(exc).__name__)
        with session_scope(settings.database_url) as session:
            record_job_error(session, job_id, f"broker: {type(exc).__name__}: {exc}")
        return False
    with session_scope(settings.database_url) as session:
        mark_sent(session, job_id, utcnow())
    log.info("second-opinion job %d sent to %s", job_id, queue)
    return True


def _report_view(report: Report) -> dict[str, Any]:
    findings = report.findings or {}
    return {
        "id": report.id,
        "study_version": report.study_version,
        "status": report.status.value,
        "model_id": report.model_id,
        "model_revision": report.model_revision,
        "prompt_version": report.prompt_version,
        "job_id": report.job_id,
        "created_at": report.created_at.isoformat(),
        "findings": finding_texts(findings),
        "impression": findings.get("impression") if isinstance(findings.get("impression"), str) else "",
        "limitations": findings.get("limitations") if isinstance(findings.get("limitations"), str) else "",
    }


def comparison(session: Session, user: CurrentUser, study: Study, a: int, b: int) -> dict[str, Any]:
    """Return two reports of one study (already checked to be the user's) side by side with their agreement.

    Raises
    ------
    fastapi.HTTPException
        404 when a report does not exist or belongs to another study.
    """
    reports = []
    for report_id in (a, b):
        report = report_for(session, user, report_id)
        if report.study_id != study.id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report of this study")
        mark_read(session, report, role=user.role)
        reports.append(report)
    first, second = reports
    agreement = compare_drafts(first.findings, second.findings)
    return {
        "study_uid": study.study_uid,
        "a": _report_view(first),
        "b": _report_view(second),
        "agreement": agreement.as_json(finding_texts(first.findings), finding_texts(second.findings)),
    }


def opinions_router() -> APIRouter:
    """Build the second-opinion routes: the JSON API and the comparison page.

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    router = APIRouter()
    router.include_router(_api_router())
    router.include_router(_page_router())
    return router


def _api_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["second opinions"])

    @router.post(
        "/studies/{study_uid}/second-opinions",
        status_code=status.HTTP_201_CREATED,
        summary="Request a second opinion",
        dependencies=[Depends(require_csrf)],
        responses={404: {}, 409: {"description": "already asked, or still receiving"}, 422: {}},
    )
    def request_opinion(
        study_uid: StudyUid, body: OpinionRequest, request: Request, settings: AppSettings, user: Reviewer
    ) -> OpinionQueued:
        """Queue another analysis of the study's current version with another model or prompt, maybe stat."""
        return queue_opinion(request, settings, user, study_uid, body)

    @router.get("/studies/{study_uid}/opinions", summary="A study's analyses and drafts")
    def list_opinions(study_uid: StudyUid, settings: AppSettings, session: DbSession, user: Reviewer) -> StudyOpinions:
        """The study's jobs (model, prompt, purpose, priority, state, report id) and drafts."""
        answer = study_opinions(session, study_for(session, user, study_uid))
        known = {"models": sorted(live_settings(settings).models), "prompts": prompt_names(settings)}
        return StudyOpinions.model_validate({**answer, **known})

    @router.get("/studies/{study_uid}/comparison", summary="Two drafts side by side")
    def compare(
        study_uid: StudyUid,
        session: DbSession,
        user: Reviewer,
        a: Annotated[int, Query(ge=1)],
        b: Annotated[int, Query(ge=1)],
    ) -> Comparison:
        """Two reports of the study with their findings matched and an agreement score."""
        return Comparison.model_validate(comparison(session, user, study_for(session, user, study_uid), a, b))

    return router


def _page_router() -> APIRouter:
    router = APIRouter(route_class=PageRoute, tags=["review page"])

    @router.get("/studies/{study_uid}/compare", response_class=HTMLResponse, summary="Comparison page")
    def compare_page(
        study_uid: StudyUid,
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: PageReviewer,
        a: Annotated[int | None, Query(ge=1)] = None,
        b: Annotated[int | None, Query(ge=1)] = None,
    ) -> HTMLResponse:
        """Two drafts side by side (by default the first two of the current version) and the request form."""
        return _compare_page(request, settings, session, user, study_uid, a, b)

    @router.post(
        "/studies/{study_uid}/second-opinions",
        summary="Request a second opinion from the page",
        dependencies=[Depends(require_csrf)],
    )
    def request_opinion_form(
        study_uid: StudyUid,
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: PageReviewer,
        model: Annotated[str, Form(max_length=64)] = "",
        prompt: Annotated[str, Form(max_length=64)] = "",
        stat: Annotated[str, Form(max_length=8)] = "",
        a: Annotated[str, Form(max_length=12)] = "",
        b: Annotated[str, Form(max_length=12)] = "",
    ) -> Response:
        """Queue the second opinion and go back to the comparison page (303), or show why not."""
        body = OpinionRequest(model=model or None, prompt=prompt or None, stat=bool(stat))
        first = int(a) if a.isdigit() else None
        second = int(b) if b.isdigit() else None
        try:
            answer = queue_opinion(request, settings, user, study_uid, body)
        except HTTPException as exc:
            if exc.status_code == status.HTTP_404_NOT_FOUND:
                raise
            error, code = str(exc.detail), exc.status_code
            return _compare_page(request, settings, session, user, study_uid, first, second, error=error, code=code)
        query = "&".join(f"{name}={value}" for name, value in (("a", first), ("b", second)) if value)
        target = f"/studies/{study_uid}/compare?requested={answer.job_id}" + (f"&{query}" if query else "")
        return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})

    return router


def _compare_page(
    request: Request,
    settings: Settings,
    session: Session,
    user: CurrentUser,
    study_uid: str,
    a: int | None,
    b: int | None,
    *,
    error: str | None = None,
    code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    """Render the comparison page: two drafts (by default the first two of the current version), the form."""
    study = study_for(session, user, study_uid)
    opinions = study_opinions(session, study)
    if a is None or b is None:
        current = session.scalars(
            select(Report.id)
            .where(
                Report.study_id == study.id,
                Report.study_version == study.version,
                Report.status != ReportStatus.SUPERSEDED,
                reviewable(),
            )
            .order_by(Report.id)
            .limit(2)
        ).all()
        if len(current) == 2:
            a, b = a or current[0], b or current[1]
    compared = comparison(session, user, study, a, b) if a is not None and b is not None else None
    patient = {
        "name": study.patient_name,
        "id": study.patient_id,
        "birth_date": study.patient_birth_date,
        "sex": study.patient_sex,
        "accession": study.accession_number,
        "description": study.study_description,
    }
    of_record = report_of_record(session, study.id)
    requested = request.query_params.get("requested")
    return render(
        request,
        "comparison.html",
        {
            "study_uid": study_uid,
            "patient": patient,
            "report_of_record": of_record,
            "opinions": opinions,
            "compared": compared,
            "models": sorted(live_settings(settings).models),
            "prompts": prompt_names(settings),
            "error": error,
            "requested": requested if requested and requested.isdigit() else None,
            "a": a,
            "b": b,
        },
        status_code=code,
    )
