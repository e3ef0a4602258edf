"""The study page: images, the model's evidence and the draft editor (``/studies/{study_uid}``).

The editor is one HTML form (:mod:`integration.web.pages.review_form`: every box's text travels with every button,
so nothing typed is lost) posting to routes that call the review actions the JSON API calls too
(:mod:`integration.web.api.review_actions`) and redirect back (Post/Redirect/Get), so the page works without
JavaScript; ``static/review.js`` adds keyboard shortcuts, highlighting and a warning before leaving with
unsaved text.  The form carries the change number the page showed (``expected_seq``): when someone else
changed the draft meanwhile, the answer is a 409 page that shows the text that was not saved.

Only the study's report of record (its primary report) can be signed, only by a radiologist, and only once
every finding is reviewed or the unreviewed ones are confirmed by count; a second opinion is shown as
material for the report of record, with a button per finding that copies it there.  The page shows the
clinical question and, for photo uploads, the uploader's stated side, read from the study's first instance.

The current study's images are a viewer (:mod:`integration.web.pages.study_stack`, ``static/viewer.js``):
every slice of every series by wheel, arrow keys or slider, window/level by drag or preset, zoom and pan to
full resolution, the model's slices marked; its state survives the review actions' page reloads (kept in
the tab's session storage).  Links open the study in the hospital's configured viewers (``viewers``).

Beside the current images the page shows the study's prior studies (:mod:`integration.web.pages.prior_view`):
each prior's large view in the current view's window, its report, or the line saying why there is none.

The draft's safety net shows beside it (:mod:`integration.web.pages.draft_safety`): each finding's confidence
band, the consistency checks beside their findings (dismissed with a number key or a button; signing waits
while one is neither dismissed nor fixed), the decoding path and the critical matches.

Opening the page is audited (``study.view``); changes (dismissals included), signing and rejecting are audited
by the review domain (``review.change``, ``report.sign``, ``report.reject``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.orders import order_for_study
from integration.store.priority import mark_read
from integration.store.reviews import change_history, working_copy
from integration.store.revisions import report_of_record
from integration.store.shadow import reviewable
from integration.store.tables import Report, ReportPurpose, ReportStatus, Site, UserRole
from integration.store.work import skip_reason
from integration.web.api import review_actions as actions
from integration.web.api.alerts import study_alerts
from integration.web.api.images import WindowName
from integration.web.api.studies import record_study_view
from integration.web.deps import AppSettings, CurrentUser, DbSession, PageReviewer, StudyUid, client_address
from integration.web.pages.claim_view import claim_context
from integration.web.pages.draft_safety import draft_safety
from integration.web.pages.manual_view import manual_context
from integration.web.pages.prior_view import prior_panel
from integration.web.pages.reading_list import filters_from, list_query, worklist_url
from integration.web.pages.review_form import back_to_page, refusal_page, review_form_router, see_other, study_url
from integration.web.pages.study_stack import study_images
from integration.web.pages.study_view import (
    MAIN_VIEW_SIZE,
    THUMBNAIL_SIZE,
    VIEWER_SIZE,
    choose_report,
    evidence_entries,
    revisions_of,
    study_request,
    viewer_links,
    window_presets,
)
from integration.web.pages.templating import PageRoute, render
from integration.web.security.access import study_for
from integration.web.security.csrf import require_csrf

#: What the page says after a change, by the ``done`` query parameter (only these; nothing is echoed).
NOTICES = {
    "accept": "Finding accepted.",
    "reject": "Finding rejected.",
    "edit": "Finding edited.",
    "reset": "Finding reset to the model's draft.",
    "add": "Finding added.",
    "impression": "Impression saved.",
    "limitations": "Limitations saved.",
    "comparison": "Comparison saved.",
    "save": "Your text is saved.",
    "sign": "Report signed.",
    "reject-draft": "Draft rejected.",
    "dismiss": "Check dismissed.",
}
#: Longest text a form may carry (the review domain refuses more than its own, smaller limits, with a message).
MAX_FORM_TEXT = 100_000


def _study_context(
    request: Request,
    settings: Settings,
    session: Session,
    user: CurrentUser,
    study_uid: str,
    report_id: int | None,
    image: str | None,
    frame: int | None,
    window: str | None,
    prior_image: str | None = None,
    prior_frame: int | None = None,
    reading_list: str | None = None,
) -> dict[str, Any]:
    """Read everything the page shows, claim the study for a radiologist reading its draft, and audit the view."""
    study = study_for(session, user, study_uid)
    site = session.scalar(select(Site.code).where(Site.id == study.site_id)) if study.site_id else None
    reports = list(
        session.scalars(select(Report).where(Report.study_id == study.id, reviewable()).order_by(Report.id.desc()))
    )
    report = choose_report(reports, report_id)
    mark_read(session, report, role=user.role)  # a stat second opinion read: its study may go back to routine
    images = study_images(
        session, study, report, instance_root=settings.instance_root, image=image, frame=frame, window=window
    )
    shown = images.selected
    priors = prior_panel(
        session,
        study,
        report,
        window=shown.window if shown else "default",
        prior_image=prior_image,
        prior_frame=prior_frame,
    )
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
    decisions: dict[str, int] = {}
    for finding in copy.findings if copy else ():
        decisions[finding.decision] = decisions.get(finding.decision, 0) + 1
    editable = report is not None and report.status is ReportStatus.DRAFT and report.id == of_record
    filters = filters_from(reading_list)
    return {
        **claim_context(settings, session, user, study, report, editable),
        **manual_context(settings, session, user, study, reports),
        "list_query": list_query(filters),
        "worklist_url": worklist_url(filters),
        "study": study,
        "skip_reason": skip_reason(session, study),  # a routing rule's skip: not an error, named
        "site": site,
        "reports": reports,
        "report": report,
        "copy": copy,
        "alerts": study_alerts(session, study.id),
        "safety": draft_safety(settings, report, copy),
        "editable": editable,
        "second_opinion": report is not None and report.purpose is ReportPurpose.SECOND_OPINION,
        "report_of_record": of_record,
        "record_seq": record_seq,
        "can_sign": user.role is UserRole.RADIOLOGIST,
        "structured": report is None or bool(report.structured),
        "asked": request_details,
        "order": order_for_study(session, study.id),
        "decisions": decisions,
        "history": history,
        "revisions": revisions,
        "problems": [str(p) for p in problems] if isinstance(problems, list) else [],
        "images": images,
        "evidence_numbers": evidence_numbers,
        "cite_tiles": {tile.images[0]: tile for tile in reversed([*priors.model_tiles, *images.model_tiles])},
        "priors": priors,
        "thumbnail_size": THUMBNAIL_SIZE,
        "viewer_size": VIEWER_SIZE,
        "main_size": MAIN_VIEW_SIZE,
        "presets": window_presets(),
        "viewer_links": viewer_links(settings, study.study_uid, study.accession_number, study.patient_id),
        "report_url": f"/studies/{study.study_uid}/reports/{report.id}" if report else None,
    }


def study_page_router() -> APIRouter:
    """Build the study page router: ``GET /studies/{study_uid}`` and the review forms' ``POST`` routes."""
    router = APIRouter(route_class=PageRoute, tags=["review page"])
    router.include_router(review_form_router())
    csrf = [Depends(require_csrf)]

    @router.get("/studies/{study_uid}", response_class=HTMLResponse, summary="Study page")
    def study_page(
        study_uid: StudyUid,
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: PageReviewer,
        report: Annotated[int | None, Query(ge=1)] = None,
        image: Annotated[str | None, Query(max_length=64)] = None,
        frame: Annotated[int | None, Query(ge=1, le=100_000)] = None,
        window: Annotated[WindowName | None, Query()] = None,
        done: Annotated[str | None, Query(max_length=32)] = None,
        prior_image: Annotated[str | None, Query(max_length=64)] = None,
        prior_frame: Annotated[int | None, Query(ge=1, le=100_000)] = None,
        reading_list: Annotated[str | None, Query(alias="list", max_length=2000)] = None,
    ) -> HTMLResponse:
        """The study with its images and its priors', the model's evidence and the draft editor; 404 for other sites."""
        context = _study_context(
            request,
            settings,
            session,
            user,
            study_uid,
            report,
            image,
            frame,
            window,
            prior_image,
            prior_frame,
            reading_list,
        )
        context["notice"] = NOTICES.get(done or "")
        return render(request, "study.html", context)

    @router.post("/studies/{study_uid}/reports/{report_id}/changes", dependencies=csrf, summary="Change a draft")
    def change(
        study_uid: StudyUid,
        report_id: int,
        request: Request,
        settings: AppSettings,
        user: PageReviewer,
        action: Annotated[str, Form(max_length=16)],
        expected_seq: Annotated[int, Form(ge=0)],
        finding: Annotated[int | None, Form(ge=0, le=10_000)] = None,
        text: Annotated[str | None, Form(max_length=MAX_FORM_TEXT)] = None,
    ) -> Response:
        """Record one change (accept, reject, edit, reset, add, impression, limitations, comparison) and go back."""
        review = actions.Review(settings, user, report_id, client_address(request), study_uid)
        try:
            copy = review.change(actions.Change(action=action, finding=finding, text=text), expected_seq)
        except actions.REFUSED as exc:
            return refusal_page(request, exc, study_url(study_uid, report_id), unsaved=text)
        return back_to_page(study_uid, report_id, action, finding, copy)

    @router.post("/studies/{study_uid}/reports/{report_id}/sign", dependencies=csrf, summary="Sign a draft")
    def sign(
        study_uid: StudyUid,
        report_id: int,
        request: Request,
        settings: AppSettings,
        user: PageReviewer,
        expected_seq: Annotated[int, Form(ge=0)],
        confirm_unreviewed: Annotated[int | None, Form(ge=0, le=10_000)] = None,
    ) -> Response:
        """Sign the working copy as the page showed it (radiologists only; reviewed or confirmed findings)."""
        review = actions.Review(settings, user, report_id, client_address(request), study_uid)
        try:
            review.sign(expected_seq, confirm_unreviewed)
        except actions.REFUSED as exc:
            return refusal_page(request, exc, study_url(study_uid, report_id))
        return back_to_page(study_uid, report_id, "sign", None, None)

    @router.post("/studies/{study_uid}/reports/{report_id}/reject", dependencies=csrf, summary="Reject a draft")
    def reject(
        study_uid: StudyUid,
        report_id: int,
        request: Request,
        settings: AppSettings,
        user: PageReviewer,
        expected_seq: Annotated[int, Form(ge=0)],
        reason: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    ) -> Response:
        """Reject the whole draft with a reason (required)."""
        review = actions.Review(settings, user, report_id, client_address(request), study_uid)
        try:
            review.reject(reason, expected_seq)
        except actions.REFUSED as exc:
            return refusal_page(request, exc, study_url(study_uid, report_id), unsaved=reason)
        return see_other(study_url(study_uid, report_id, done="reject-draft", anchor="report"))

    return router
