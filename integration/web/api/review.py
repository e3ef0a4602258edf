"""The review API: a draft's working copy, per-finding changes, sign and reject (JSON, for the page's scripts).

* ``GET /api/reports/{id}``: the working copy, the draft's model, prompt and evidence, and its versions.
* ``GET /api/reports/{id}/changes``: the change history.
* ``POST /api/reports/{id}/changes``: one change (``{"action", "finding", "text", "expected_seq"}``; a
  consistency check is dismissed with ``{"action": "dismiss", "text": "<check key>"}``).
* ``POST /api/reports/{id}/sign``: sign the working copy (``{"expected_seq", "confirm_unreviewed"}``).
* ``POST /api/reports/{id}/reject``: reject the whole draft (``{"reason"}``).

For radiologists and administrators; a report of another site answers 404.  Only radiologists sign (an
administrator administers: 403 with a message).  POSTs need the CSRF token (``X-CSRF-Token``).  A stale
``expected_seq``, a report that is no longer a draft, a second opinion (material for the study's report of
record, never signed) or a review that is not finished (findings neither reviewed nor confirmed by count,
an unparsed model output not edited, consistency checks neither dismissed nor fixed) answers 409, an invalid
change 422; the message says why.  Audit events carry ids, counts and lengths, never the text.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.store.reviews import WorkingCopy as StoredWorkingCopy
from integration.store.reviews import change_count, change_history, working_copy
from integration.store.revisions import report_of_record
from integration.store.tables import ReportRevision, Study
from integration.web.api import review_actions as actions
from integration.web.deps import AppSettings, CurrentUser, DbSession, Reviewer, client_address
from integration.web.pages.templating import display_zone
from integration.web.schemas import Rejected, ReportView, ReviewChange, Signed, WorkingCopy
from integration.web.security.access import report_for
from integration.web.security.csrf import require_csrf

#: Longest text a request may carry (the store refuses more than its own, smaller limits with a message).
MAX_REQUEST_TEXT = 100_000


class ChangeRequest(BaseModel):
    """The body of ``POST /api/reports/{id}/changes``."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "reject", "edit", "add", "impression", "limitations", "comparison", "reset", "dismiss"]
    finding: int | None = Field(default=None, ge=0, le=10_000)
    text: str | None = Field(default=None, max_length=MAX_REQUEST_TEXT)
    expected_seq: int | None = Field(default=None, ge=0)


class SignRequest(BaseModel):
    """The body of ``POST /api/reports/{id}/sign``."""

    model_config = ConfigDict(extra="forbid")

    expected_seq: int | None = Field(default=None, ge=0)
    #: How many unreviewed findings the radiologist confirms signing as written (must match the count).
    confirm_unreviewed: int | None = Field(default=None, ge=0, le=10_000)


class RejectRequest(BaseModel):
    """The body of ``POST /api/reports/{id}/reject``."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_REQUEST_TEXT)
    expected_seq: int | None = Field(default=None, ge=0)


def working_copy_answer(copy: StoredWorkingCopy) -> WorkingCopy:
    """The working copy as the API answers it."""
    answer = dataclasses.asdict(copy)
    answer["checks"] = [
        {**check.as_json(), "key": check.key, "state": copy.check_state(check)} for check in copy.checks
    ]
    return WorkingCopy.model_validate(answer)


def report_view(session: Session, user: CurrentUser, report_id: int) -> ReportView:
    """Return what the review page needs of a report: working copy, draft summary, number of changes, versions.

    Raises
    ------
    fastapi.HTTPException
        404 when the report does not exist or belongs to another site.
    """
    report = report_for(session, user, report_id)
    study = session.get(Study, report.study_id)
    revisions = session.scalars(
        select(ReportRevision).where(ReportRevision.report_id == report_id).order_by(ReportRevision.version)
    ).all()
    problems = report.findings.get("problems") if isinstance(report.findings, dict) else None
    return ReportView.model_validate(
        {
            "working_copy": working_copy_answer(working_copy(session, report_id)),
            "report": {
                "id": report.id,
                "status": report.status.value,
                "study_uid": study.study_uid if study else None,
                "study_version": report.study_version,
                "ai_generated": report.ai_generated,
                "verification": report.verification,
                "model_id": report.model_id,
                "model_revision": report.model_revision,
                "model_family": report.model_family,
                "prompt_version": report.prompt_version,
                "structured": report.structured,
                "purpose": report.purpose.value,
                "report_of_record": report_of_record(session, report.study_id),
                "created_at": report.created_at.isoformat(),
                "problems": [str(p) for p in problems] if isinstance(problems, list) else [],
                "evidence": [
                    {key: entry.get(key) for key in ("image", "series_uid", "sop_instance_uid", "frame", "window")}
                    for entry in report.evidence
                    if isinstance(entry, dict)
                ],
            },
            "changes": change_count(session, report_id),
            "revisions": [
                {
                    "id": r.id,
                    "version": r.version,
                    "status": r.status.value,
                    "author": r.author,
                    "organization": r.organization,
                    "created_at": r.created_at.isoformat(),
                }
                for r in revisions
            ],
        }
    )


def review_router() -> APIRouter:
    """Build the review API router: the routes under ``/api/reports``."""
    router = APIRouter(prefix="/api/reports", tags=["review"])
    csrf = [Depends(require_csrf)]

    @router.get("/{report_id}", summary="A report's working copy")
    def get_report(report_id: int, session: DbSession, user: Reviewer) -> ReportView:
        """The working copy with the draft's model, prompt and evidence; 404 for another site's report."""
        return report_view(session, user, report_id)

    @router.get("/{report_id}/changes", summary="A report's review changes")
    def get_changes(report_id: int, session: DbSession, user: Reviewer) -> list[ReviewChange]:
        """Every change, oldest first: seq, actor, at, action, finding, before, after."""
        report_for(session, user, report_id)
        return [ReviewChange.model_validate(change) for change in change_history(session, report_id)]

    @router.post("/{report_id}/changes", summary="Change the working copy", dependencies=csrf)
    def post_change(
        report_id: int, body: ChangeRequest, request: Request, settings: AppSettings, user: Reviewer
    ) -> WorkingCopy:
        """Record one change; answers the new working copy (409 when stale or closed, 422 when invalid)."""
        edit = actions.Change(action=body.action, finding=body.finding, text=body.text)
        try:
            copy = actions.Review(settings, user, report_id, client_address(request)).change(edit, body.expected_seq)
        except actions.REFUSED as exc:
            raise HTTPException(*actions.refusal(exc, display_zone(settings.timezone))) from None
        return working_copy_answer(copy)

    @router.post("/{report_id}/sign", summary="Sign the working copy", dependencies=csrf)
    def post_sign(report_id: int, body: SignRequest, request: Request, settings: AppSettings, user: Reviewer) -> Signed:
        """Sign: a new version with a verified SR, its outcome and deliveries; 409 when stale, closed or unready."""
        review = actions.Review(settings, user, report_id, client_address(request))
        try:
            return review.sign(body.expected_seq, body.confirm_unreviewed)
        except actions.REFUSED as exc:
            raise HTTPException(*actions.refusal(exc, display_zone(settings.timezone))) from None

    @router.post("/{report_id}/reject", summary="Reject the draft", dependencies=csrf)
    def post_reject(
        report_id: int, body: RejectRequest, request: Request, settings: AppSettings, user: Reviewer
    ) -> Rejected:
        """Reject the whole draft with a reason; 409 when it is not a draft any more."""
        review = actions.Review(settings, user, report_id, client_address(request))
        try:
            return review.reject(body.reason, body.expected_seq)
        except actions.REFUSED as exc:
            raise HTTPException(*actions.refusal(exc, display_zone(settings.timezone))) from None

    return router
