"""Writing a report by hand, and retrying a failed study's analysis: the JSON API and the study page's forms.

Why: after "Reject the whole draft", or when the analysis failed, a radiologist still has to report the study;
the report written by hand is the same versioned report (:mod:`integration.reports.manual`), reviewed and
signed through the existing review routes.  An administrator can retry a failed analysis once its cause is fixed.

JSON (object-level 404 for other sites' studies):

* ``POST /api/studies/{uid}/manual-report`` ``{"reason": str|null, "expected_seq": int|null}`` (radiologists
  only): 201 with the new report's id.  With a ``reason``, the study's live AI draft of record is rejected with
  it first ("Discard the draft and write by hand"); without one, 409 while the study has a live draft of record
  or a signed report, or while another radiologist holds a claim on the study.  A discarded draft is withdrawn
  from every receiver that got it, as a rejected one is.  Audited ``report.manual_start`` (and
  ``report.reject``).
* ``POST /api/studies/{uid}/retry`` (administrators only): 201 with the new job's id; 409 when the study is not
  failed.  Audited ``study.retry``.

Pages (CSRF; Post/Redirect/Get to the study page): ``POST /studies/{uid}/manual-report`` and
``POST /studies/{uid}/retry``; a refusal goes back to the study page with its message.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from integration.config import Settings
from integration.export.corrections import withdraw_reports
from integration.queue import send_analyze_study
from integration.reports.manual import ManualReportRefused, discard_and_write, start_manual_report
from integration.reports.review import signer_of
from integration.store.claims import StudyClaimed, check_claim
from integration.store.jobs import mark_sent, record_job_error
from integration.store.retries import RetryRefused, retry_failed_study
from integration.store.reviews import ReviewConflict, ReviewError
from integration.store.revisions import report_of_record
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, Report, ReportStatus, UserRole, utcnow
from integration.web.deps import AppSettings, CurrentUser, StudyUid, client_address, require_roles
from integration.web.pages.templating import display_zone
from integration.web.security.access import study_for
from integration.web.security.csrf import require_csrf

log = logging.getLogger(__name__)

#: Radiologists write reports; an administrator or uploader is refused with this sentence (403).
Radiologist = Annotated[
    CurrentUser,
    Depends(
        require_roles(
            UserRole.RADIOLOGIST, refusal="only radiologists write reports: sign in as a radiologist to write one"
        )
    ),
]
#: Administrators retry failed analyses (403 for others).
Administrator = Annotated[
    CurrentUser,
    Depends(require_roles(UserRole.ADMIN, refusal="only administrators retry a failed analysis")),
]
#: Longest reason a discarded draft may carry in a form (the review domain refuses more, with its message).
MAX_REASON = 10_000


class ManualRequest(BaseModel):
    """The body of ``POST /api/studies/{uid}/manual-report``."""

    model_config = ConfigDict(extra="forbid")

    #: Why the study's live AI draft is discarded; null when there is none to discard.
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    #: The draft's change number the radiologist saw (checked when a draft is discarded).
    expected_seq: int | None = None


class ManualStarted(BaseModel):
    """A report written by hand was started."""

    report_id: int
    study_uid: str
    discarded_report_id: int | None


class RetryQueued(BaseModel):
    """A failed study's analysis was queued again."""

    job_id: int
    queue: str
    sent: bool


def start_manual(
    request: Request, settings: Settings, user: CurrentUser, study_uid: str, body: ManualRequest
) -> ManualStarted:
    """Start a report written by hand, discarding the live draft of record first when a reason is given.

    Raises
    ------
    fastapi.HTTPException
        404 (not the user's study), 409 (a live draft of record or a signed report; a stale change number),
        422 (an invalid reason).
    """
    source = client_address(request)
    reason = (body.reason or "").strip()
    with session_scope(settings.database_url) as session:
        study = study_for(session, user, study_uid)
        try:
            check_claim(session, study.id, user.id, now=utcnow())
        except StudyClaimed as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, exc.describe(display_zone(settings.timezone))) from None
        record = report_of_record(session, study.id)
        draft = session.get(Report, record) if record is not None else None
        discard = draft is not None and draft.status == ReportStatus.DRAFT and bool(reason)
        if not discard:
            try:
                report_id = start_manual_report(session, study, actor=user.username, now=utcnow(), source=source)
            except ManualReportRefused as exc:
                raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
            return ManualStarted(report_id=report_id, study_uid=study.study_uid, discarded_report_id=None)
        assert draft is not None
        draft_id = int(draft.id)
        _, organization = signer_of(session, user.id, study.site_id)
    try:
        report_id = discard_and_write(
            settings,
            draft_id,
            actor=user.username,
            reason=reason,
            source=source,
            organization=organization,
            expected_seq=body.expected_seq,
        )
    except (ManualReportRefused, ReviewConflict) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ReviewError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    withdraw_reports(settings, [draft_id], "rejected")  # every receiver of the discarded draft is told
    return ManualStarted(report_id=report_id, study_uid=study_uid, discarded_report_id=draft_id)


def retry_study(request: Request, settings: Settings, user: CurrentUser, study_uid: str) -> RetryQueued:
    """Queue a failed study's analysis again (committed), then send the job's message.

    Raises
    ------
    fastapi.HTTPException
        404 (not the user's study), 409 (the study is not failed).
    """
    with session_scope(settings.database_url) as session:
        study = study_for(session, user, study_uid)
        try:
            job_id = retry_failed_study(
                session,
                study,
                actor=user.username,
                now=utcnow(),
                queue=settings.analysis_queue,
                stat_queue=settings.stat_queue,
                source=client_address(request),
            )
        except RetryRefused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        job = session.get(AnalysisJob, job_id)
        assert job is not None
        queue = job.queue
    try:
        send_analyze_study(settings, job_id, queue, 0)
    except Exception as exc:  # kombu raises many kinds when the broker is away; the reconciler sends it later
        log.warning("retry job %d not sent, the reconciler will: %s", job_id, type(exc).__name__)
        with session_scope(settings.database_url) as session:
            record_job_error(session, job_id, f"broker: {type(exc).__name__}: {exc}")
        return RetryQueued(job_id=job_id, queue=queue, sent=False)
    with session_scope(settings.database_url) as session:
        mark_sent(session, job_id, utcnow())
    return RetryQueued(job_id=job_id, queue=queue, sent=True)


def manual_reports_router() -> APIRouter:
    """Build the routes: the JSON API and the study page's forms.

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    router = APIRouter()

    @router.post(
        "/api/studies/{study_uid}/manual-report",
        status_code=status.HTTP_201_CREATED,
        summary="Write the report by hand",
        tags=["review"],
        dependencies=[Depends(require_csrf)],
        responses={403: {}, 404: {}, 409: {"description": "a live draft of record or a signed report"}},
    )
    def manual_report(
        study_uid: StudyUid, body: ManualRequest, request: Request, settings: AppSettings, user: Radiologist
    ) -> ManualStarted:
        """Start the study's report written without AI (discarding its live draft when a reason is given)."""
        return start_manual(request, settings, user, study_uid, body)

    @router.post(
        "/api/studies/{study_uid}/retry",
        status_code=status.HTTP_201_CREATED,
        summary="Retry a failed analysis",
        tags=["operations"],
        dependencies=[Depends(require_csrf)],
        responses={403: {}, 404: {}, 409: {"description": "the study is not failed"}},
    )
    def retry(study_uid: StudyUid, request: Request, settings: AppSettings, user: Administrator) -> RetryQueued:
        """Queue a new analysis job for a failed study."""
        return retry_study(request, settings, user, study_uid)

    @router.post(
        "/studies/{study_uid}/manual-report",
        summary="Write the report by hand from the page",
        tags=["review page"],
        dependencies=[Depends(require_csrf)],
    )
    def manual_report_form(
        study_uid: StudyUid,
        request: Request,
        settings: AppSettings,
        user: Radiologist,
        reason: Annotated[str, Form(max_length=MAX_REASON)] = "",
        seq: Annotated[str, Form(max_length=12)] = "",
    ) -> Response:
        """Start the report written by hand and show it (303), or go back with why not."""
        body = ManualRequest(reason=reason or None, expected_seq=int(seq) if seq.isdigit() else None)
        try:
            started = start_manual(request, settings, user, study_uid, body)
        except HTTPException as exc:
            if exc.status_code == status.HTTP_404_NOT_FOUND:
                raise
            log.info("manual report of a study refused: %s", exc.status_code)
            return _back(study_uid, "refused-manual")
        return _back(study_uid, "started", report_id=started.report_id)

    @router.post(
        "/studies/{study_uid}/retry",
        summary="Retry a failed analysis from the page",
        tags=["review page"],
        dependencies=[Depends(require_csrf)],
    )
    def retry_form(study_uid: StudyUid, request: Request, settings: AppSettings, user: Administrator) -> Response:
        """Queue the analysis again and go back to the study page (303)."""
        try:
            retry_study(request, settings, user, study_uid)
        except HTTPException as exc:
            if exc.status_code == status.HTTP_404_NOT_FOUND:
                raise
            return _back(study_uid, "refused-retry")
        return _back(study_uid, "retried")

    return router


def _back(study_uid: str, outcome: str, *, report_id: int | None = None) -> Response:
    """Post/Redirect/Get to the study page; ``manual=<outcome>`` is one of a fixed set (nothing is echoed)."""
    query = f"manual={outcome}" + (f"&report={report_id}" if report_id is not None else "")
    return RedirectResponse(
        f"/studies/{study_uid}?{query}", status_code=status.HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"}
    )
