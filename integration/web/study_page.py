"""The study page: images, the model's evidence and the draft editor (``/studies/{study_uid}``).

The editor is one HTML form (:mod:`integration.web.review_form`: every box's text travels with every button,
so nothing typed is lost) posting to routes that call the review domain (:mod:`integration.store.reviews`,
:mod:`integration.reports.review`) and redirect back (Post/Redirect/Get), so the page works without
JavaScript; ``static/review.js`` adds keyboard shortcuts, highlighting and a warning before leaving with
unsaved text.  The form carries the change number the page showed (``expected_seq``): when someone else
changed the draft meanwhile, the answer is a 409 page that shows the text that was not saved.

Only the study's report of record (its primary report) can be signed, only by a radiologist, and only once
every finding is reviewed or the unreviewed ones are confirmed by count; a second opinion is shown as
material for the report of record, with a button per finding that copies it there.  The page shows the
clinical question and, for photo uploads, the uploader's stated side, read from the study's first instance.

Opening the page is audited (``study.view``); changes, signing and rejecting are audited by the review domain
(``review.change``, ``report.sign``, ``report.reject``).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from integration.config import Settings
from integration.dicom.header import is_valid_uid
from integration.store.revisions import report_of_record
from integration.store.tables import Report, ReportPurpose, ReportStatus, Site, UserRole
from integration.web.access import report_for, study_for
from integration.web.auth import CurrentUser, client_address
from integration.web.csrf import require_csrf
from integration.web.images import WindowName
from integration.web.review_form import review_form_router
from integration.web.studies import record_study_view
from integration.web.study_view import (
    THUMBNAIL_SIZE,
    VIEWER_SIZE,
    choose_report,
    evidence_entries,
    revisions_of,
    study_images,
    study_request,
)
from integration.web.templating import PageRoute, error_page, page_reviewer, render

Reviewer = Annotated[CurrentUser, Depends(page_reviewer)]

#: What the page says after a change, by the ``done`` query parameter (only these; nothing is echoed).
NOTICES = {
    "accept": "Finding accepted.",
    "reject": "Finding rejected.",
    "edit": "Finding edited.",
    "reset": "Finding reset to the model's draft.",
    "add": "Finding added.",
    "impression": "Impression saved.",
    "limitations": "Limitations saved.",
    "save": "Your text is saved.",
    "sign": "Report signed.",
    "reject-draft": "Draft rejected.",
}
#: Longest text a form may carry (the review domain refuses more than its own, smaller limits, with a message).
MAX_FORM_TEXT = 100_000


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def study_url(study_uid: str, report_id: int | None = None, done: str | None = None, anchor: str = "") -> str:
    """Return the study page's URL.

    Parameters
    ----------
    study_uid : str
        The study.
    report_id : int, optional
        The report to show.
    done : str, optional
        A key of :data:`NOTICES`.
    anchor : str
        Fragment (without ``#``).

    Returns
    -------
    str
        The local URL.
    """
    params: dict[str, Any] = {}
    if report_id is not None:
        params["report"] = report_id
    if done is not None:
        params["done"] = done
    return f"/studies/{study_uid}" + (f"?{urlencode(params)}" if params else "") + (f"#{anchor}" if anchor else "")


def _study_context(
    request: Request,
    user: CurrentUser,
    study_uid: str,
    report_id: int | None,
    image: str | None,
    frame: int | None,
    window: str | None,
) -> dict[str, Any]:
    """Read everything the page shows, and audit the view."""
    from integration.store.reviews import change_history, working_copy
    from integration.store.session import session_scope

    settings = _settings(request)
    with session_scope(settings.database_url) as session:
        study = study_for(session, user, study_uid)
        site = session.scalar(select(Site.code).where(Site.id == study.site_id)) if study.site_id else None
        reports = list(session.scalars(select(Report).where(Report.study_id == study.id).order_by(Report.id.desc())))
        report = choose_report(reports, report_id)
        images = study_images(session, study, report, image=image, frame=frame, window=window)
        copy = working_copy(session, report.id) if report is not None else None
        history = change_history(session, report.id) if report is not None else []
        revisions = revisions_of(session, report.id) if report is not None else []
        evidence_numbers = sorted({entry[0] for entry in evidence_entries(report.evidence)}) if report else []
        problems = report.findings.get("problems") if report and isinstance(report.findings, dict) else None
        of_record = report_of_record(session, study.id)
        record = session.get(Report, of_record) if of_record is not None else None
        # a second opinion's findings can be copied into the report of record while that is a draft
        record_seq = working_copy(session, record.id).seq if record and record.status is ReportStatus.DRAFT else None
        request_details = study_request(settings, session, study)
        record_study_view(session, user, request, study.study_uid, "page")
        session.expunge_all()
    decisions: dict[str, int] = {}
    for finding in copy.findings if copy else ():
        decisions[finding.decision] = decisions.get(finding.decision, 0) + 1
    return {
        "study": study,
        "site": site,
        "reports": reports,
        "report": report,
        "copy": copy,
        "editable": report is not None and report.status is ReportStatus.DRAFT and report.id == of_record,
        "second_opinion": report is not None and report.purpose is ReportPurpose.SECOND_OPINION,
        "report_of_record": of_record,
        "record_seq": record_seq,
        "can_sign": user.role is UserRole.RADIOLOGIST,
        "structured": report is None or bool(report.structured),
        "asked": request_details,
        "decisions": decisions,
        "history": history,
        "revisions": revisions,
        "problems": [str(p) for p in problems] if isinstance(problems, list) else [],
        "images": images,
        "evidence_numbers": evidence_numbers,
        "cite_tiles": {tile.images[0]: tile for tile in reversed(images.model_tiles)},
        "thumbnail_size": THUMBNAIL_SIZE,
        "viewer_size": VIEWER_SIZE,
        "report_url": f"/studies/{study.study_uid}/reports/{report.id}" if report else None,
    }


def checked_report(request: Request, user: CurrentUser, study_uid: str, report_id: int) -> None:
    """Refuse a report that is not one of this study's, or a study the user may not see.

    Parameters
    ----------
    request : fastapi.Request
        The request (its settings).
    user : CurrentUser
        The signed-in user.
    study_uid : str
        The study of the URL.
    report_id : int
        The report of the URL.

    Raises
    ------
    fastapi.HTTPException
        404 for an invalid UID, another site's study or a report of another study.
    """
    from integration.store.session import session_scope

    if not is_valid_uid(study_uid):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    with session_scope(_settings(request).database_url) as session:
        study = study_for(session, user, study_uid)
        if report_for(session, user, report_id).study_id != study.id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report for this study")


def refusal_page(request: Request, exc: Exception, back: str, unsaved: str | None = None) -> HTMLResponse:
    """Answer a refused review action as a page: 409 for stale, closed or unready drafts, 422 for invalid input.

    Parameters
    ----------
    request : fastapi.Request
        The request.
    exc : Exception
        What the review domain raised.
    back : str
        The page to go back to.
    unsaved : str, optional
        Text that was not saved (shown for 409 and 422 so it can be copied).

    Returns
    -------
    fastapi.responses.HTMLResponse
        The error page.

    Raises
    ------
    Exception
        ``exc`` itself when it is not a refusal (see :func:`integration.web.review.refusal`).
    """
    from integration.store.reviews import ReviewConflict
    from integration.web.review import refusal

    code, message = refusal(exc)
    if isinstance(exc, ReviewConflict):
        message = f"Someone else changed this draft while you were reading it ({exc}). Nothing of yours was saved."
    keep = unsaved if code in (status.HTTP_409_CONFLICT, status.HTTP_422_UNPROCESSABLE_CONTENT) else None
    return error_page(request, code, message, back=back, unsaved=keep)


def see_other(url: str) -> RedirectResponse:
    """Answer 303 to a local URL (Post/Redirect/Get), never cached."""
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})


def study_page_router() -> APIRouter:
    """Build the study page router.

    Returns
    -------
    fastapi.APIRouter
        ``GET /studies/{study_uid}`` and the review forms' ``POST`` routes.
    """
    router = APIRouter(route_class=PageRoute, tags=["review page"])
    router.include_router(review_form_router())
    csrf = [Depends(require_csrf)]

    @router.get("/studies/{study_uid}", response_class=HTMLResponse, summary="Study page")
    def study_page(
        study_uid: str,
        request: Request,
        user: Reviewer,
        report: Annotated[int | None, Query(ge=1)] = None,
        image: Annotated[str | None, Query(max_length=64)] = None,
        frame: Annotated[int | None, Query(ge=1, le=100_000)] = None,
        window: Annotated[WindowName | None, Query()] = None,
        done: Annotated[str | None, Query(max_length=32)] = None,
    ) -> HTMLResponse:
        """The study with its images, the model's evidence and the draft editor; 404 for other sites."""
        if not is_valid_uid(study_uid):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
        context = _study_context(request, user, study_uid, report, image, frame, window)
        context["notice"] = NOTICES.get(done or "")
        return render(request, "study.html", context)

    @router.post("/studies/{study_uid}/reports/{report_id}/changes", dependencies=csrf, summary="Change a draft")
    def change(
        study_uid: str,
        report_id: int,
        request: Request,
        user: Reviewer,
        action: Annotated[str, Form(max_length=16)],
        expected_seq: Annotated[int, Form(ge=0)],
        finding: Annotated[int | None, Form(ge=0, le=10_000)] = None,
        text: Annotated[str | None, Form(max_length=MAX_FORM_TEXT)] = None,
    ) -> Response:
        """Record one change (accept, reject, edit, reset, add, impression, limitations) and go back."""
        from integration.store.reviews import ReportClosed, ReviewConflict, ReviewError, record_change
        from integration.store.revisions import UnknownReport
        from integration.store.session import session_scope

        checked_report(request, user, study_uid, report_id)
        back = study_url(study_uid, report_id)
        try:
            with session_scope(_settings(request).database_url) as session:
                copy = record_change(
                    session,
                    report_id,
                    actor=user.username,
                    action=action,
                    finding=finding,
                    text=text,
                    expected_seq=expected_seq,
                    source=client_address(request),
                )
        except (ReviewError, ReviewConflict, ReportClosed, UnknownReport) as exc:
            return refusal_page(request, exc, back, unsaved=text)
        if action == "add":
            anchor = f"finding-{copy.findings[-1].index}" if copy.findings else "findings"
        elif finding is not None:
            anchor = f"finding-{finding}"
        else:
            anchor = action if action in ("impression", "limitations") else "findings"
        return see_other(study_url(study_uid, report_id, done=action, anchor=anchor))

    @router.post("/studies/{study_uid}/reports/{report_id}/sign", dependencies=csrf, summary="Sign a draft")
    def sign(
        study_uid: str,
        report_id: int,
        request: Request,
        user: Reviewer,
        expected_seq: Annotated[int, Form(ge=0)],
        confirm_unreviewed: Annotated[int | None, Form(ge=0, le=10_000)] = None,
    ) -> Response:
        """Sign the working copy as the page showed it (radiologists only; reviewed or confirmed findings)."""
        from integration.reports.review import sign_reviewed, signer_of
        from integration.store.session import session_scope
        from integration.web.review import require_signer

        checked_report(request, user, study_uid, report_id)
        require_signer(user)
        settings = _settings(request)
        with session_scope(settings.database_url) as session:
            person_name, organization = signer_of(session, user.id)
        try:
            sign_reviewed(
                settings,
                report_id,
                actor=user.username,
                person_name=person_name,
                organization=organization,
                source=client_address(request),
                expected_seq=expected_seq,
                confirm_unreviewed=confirm_unreviewed,
            )
        except (LookupError, ValueError, RuntimeError) as exc:
            return refusal_page(request, exc, study_url(study_uid, report_id))
        return see_other(study_url(study_uid, report_id, done="sign", anchor="report"))

    @router.post("/studies/{study_uid}/reports/{report_id}/reject", dependencies=csrf, summary="Reject a draft")
    def reject(
        study_uid: str,
        report_id: int,
        request: Request,
        user: Reviewer,
        expected_seq: Annotated[int, Form(ge=0)],
        reason: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    ) -> Response:
        """Reject the whole draft with a reason (required)."""
        from integration.reports.review import reject_draft, signer_of
        from integration.store.session import session_scope

        checked_report(request, user, study_uid, report_id)
        settings = _settings(request)
        with session_scope(settings.database_url) as session:
            _, organization = signer_of(session, user.id)
        try:
            reject_draft(
                settings,
                report_id,
                actor=user.username,
                reason=reason,
                source=client_address(request),
                organization=organization,
                expected_seq=expected_seq,
            )
        except (LookupError, ValueError, RuntimeError) as exc:
            return refusal_page(request, exc, study_url(study_uid, report_id), unsaved=reason)
        return see_other(study_url(study_uid, report_id, done="reject-draft", anchor="report"))

    return router
