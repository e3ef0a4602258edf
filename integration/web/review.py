"""The review API: a draft's working copy, per-finding changes, sign and reject (JSON, for the page's scripts).

* ``GET /api/reports/{id}``: the working copy, the draft's model, prompt and evidence, and its versions.
* ``GET /api/reports/{id}/changes``: the change history.
* ``POST /api/reports/{id}/changes``: one change (``{"action", "finding", "text", "expected_seq"}``).
* ``POST /api/reports/{id}/sign``: sign the working copy (``{"expected_seq", "confirm_unreviewed"}``).
* ``POST /api/reports/{id}/reject``: reject the whole draft (``{"reason"}``).

For radiologists and administrators; a report of another site answers 404.  Only radiologists sign (an
administrator administers: 403 with a message).  POSTs need the CSRF token (``X-CSRF-Token``).  A stale
``expected_seq``, a report that is no longer a draft, a second opinion (material for the study's report of
record, never signed) or a review that is not finished (findings neither reviewed nor confirmed by count,
an unparsed model output not edited) answers 409, an invalid change 422; the message says why.  Audit events
carry ids, counts and lengths, never the text.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from integration.config import Settings
from integration.store.tables import ReportRevision, UserRole
from integration.web.auth import CurrentUser, client_address, require_roles
from integration.web.csrf import require_csrf

Reviewer = Annotated[CurrentUser, Depends(require_roles(UserRole.RADIOLOGIST, UserRole.ADMIN))]
#: Longest text a request may carry (the store refuses more than its own, smaller limits with a message).
MAX_REQUEST_TEXT = 100_000


class ChangeRequest(BaseModel):
    """The body of ``POST /api/reports/{id}/changes``."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "reject", "edit", "add", "impression", "limitations", "reset"]
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


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def working_copy_json(copy: Any) -> dict[str, Any]:
    """Return a working copy as JSON-ready data.

    Parameters
    ----------
    copy : integration.store.reviews.WorkingCopy
        The working copy.

    Returns
    -------
    dict
        Its fields; ``findings`` a list of ``{"index", "text", "draft_text", "images", "decision"}``.
    """
    data = dataclasses.asdict(copy)
    data["findings"] = [{**finding, "images": list(finding["images"])} for finding in data["findings"]]
    return data


def report_view(settings: Settings, user: CurrentUser, report_id: int) -> dict[str, Any]:
    """Return what the review page needs of a report: working copy, draft summary, versions.

    Parameters
    ----------
    settings : Settings
        The database.
    user : CurrentUser
        The signed-in user (object-level authorization).
    report_id : int
        The report.

    Returns
    -------
    dict
        ``working_copy``, ``report`` (model, prompt, study, evidence, problems, purpose and the id of the
        study's report of record), ``changes`` (count) and
        ``revisions`` (version, status, author, when).

    Raises
    ------
    fastapi.HTTPException
        404 when the report does not exist or belongs to another site.
    """
    from integration.store.reviews import change_count, working_copy
    from integration.store.revisions import report_of_record
    from integration.store.session import session_scope
    from integration.store.tables import Study
    from integration.web.access import report_for

    with session_scope(settings.database_url) as session:
        report = report_for(session, user, report_id)
        study = session.get(Study, report.study_id)
        copy = working_copy(session, report_id)
        revisions = session.scalars(
            select(ReportRevision).where(ReportRevision.report_id == report_id).order_by(ReportRevision.version)
        ).all()
        problems = report.findings.get("problems") if isinstance(report.findings, dict) else None
        return {
            "working_copy": working_copy_json(copy),
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


#: What an administrator who tries to sign is told.
NOT_A_SIGNER = "only radiologists sign reports: an administrator account administers and cannot sign a clinical report"


def require_signer(user: CurrentUser) -> None:
    """Refuse a signature by anyone but a radiologist.

    Parameters
    ----------
    user : CurrentUser
        The signed-in user.

    Raises
    ------
    fastapi.HTTPException
        403 with :data:`NOT_A_SIGNER` for any other role.
    """
    if user.role is not UserRole.RADIOLOGIST:
        raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_A_SIGNER)


def _check_visible(settings: Settings, user: CurrentUser, report_id: int) -> None:
    from integration.store.session import session_scope
    from integration.web.access import report_for

    with session_scope(settings.database_url) as session:
        report_for(session, user, report_id)


def refusal(exc: Exception) -> tuple[int, str]:
    """Return the HTTP status and message of a refused review action (the messages are written to be shown).

    Parameters
    ----------
    exc : Exception
        What the review domain raised.

    Returns
    -------
    tuple of (int, str)
        404 for an unknown report, 409 for a stale or closed draft, a report that is not the study's report of
        record or a review that is not finished, 503 when the study's images cannot be read, 422 for invalid
        input.

    Raises
    ------
    Exception
        ``exc`` itself when it is not a refusal.
    """
    from integration.reports.drafts import SourceUnavailable
    from integration.reports.readiness import ReviewIncomplete
    from integration.store.reviews import ReportClosed, ReviewConflict, ReviewError
    from integration.store.revisions import ReportNotSignable, UnknownReport, VersionTaken

    if isinstance(exc, UnknownReport):
        return status.HTTP_404_NOT_FOUND, "no such report"
    if isinstance(exc, ReportClosed | ReviewConflict | ReportNotSignable | VersionTaken | ReviewIncomplete):
        return status.HTTP_409_CONFLICT, str(exc)
    if isinstance(exc, SourceUnavailable):
        return status.HTTP_503_SERVICE_UNAVAILABLE, f"cannot sign now: {exc}"
    if isinstance(exc, ReviewError | ValueError):
        return status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)
    raise exc


def _refused(exc: Exception) -> HTTPException:
    """Turn a review error into its HTTP answer."""
    return HTTPException(*refusal(exc))


def review_router() -> APIRouter:
    """Build the review API router.

    Returns
    -------
    fastapi.APIRouter
        The routes under ``/api/reports``.
    """
    router = APIRouter(prefix="/api/reports", tags=["review"])
    csrf = [Depends(require_csrf)]

    @router.get("/{report_id}", summary="A report's working copy")
    def get_report(report_id: int, request: Request, user: Reviewer) -> dict[str, Any]:
        """The working copy with the draft's model, prompt and evidence; 404 for another site's report."""
        return report_view(_settings(request), user, report_id)

    @router.get("/{report_id}/changes", summary="A report's review changes")
    def get_changes(report_id: int, request: Request, user: Reviewer) -> list[dict[str, Any]]:
        """Every change, oldest first: seq, actor, at, action, finding, before, after."""
        from integration.store.reviews import change_history
        from integration.store.session import session_scope
        from integration.web.access import report_for

        with session_scope(_settings(request).database_url) as session:
            report_for(session, user, report_id)
            return change_history(session, report_id)

    @router.post("/{report_id}/changes", summary="Change the working copy", dependencies=csrf)
    def post_change(report_id: int, body: ChangeRequest, request: Request, user: Reviewer) -> dict[str, Any]:
        """Record one change; answers the new working copy (409 when stale or closed, 422 when invalid)."""
        from integration.store.reviews import ReportClosed, ReviewConflict, ReviewError, record_change
        from integration.store.session import session_scope

        settings = _settings(request)
        _check_visible(settings, user, report_id)
        with session_scope(settings.database_url) as session:
            try:
                copy = record_change(
                    session,
                    report_id,
                    actor=user.username,
                    action=body.action,
                    finding=body.finding,
                    text=body.text,
                    expected_seq=body.expected_seq,
                    source=client_address(request),
                )
            except (ReviewError, ReviewConflict, ReportClosed) as exc:
                raise _refused(exc) from None
        return working_copy_json(copy)

    @router.post("/{report_id}/sign", summary="Sign the working copy", dependencies=csrf)
    def post_sign(report_id: int, body: SignRequest, request: Request, user: Reviewer) -> dict[str, int]:
        """Sign: a new version with a verified SR, its outcome and deliveries; 409 when stale, closed or unready."""
        from integration.reports.review import sign_reviewed, signer_of
        from integration.store.session import session_scope

        settings = _settings(request)
        _check_visible(settings, user, report_id)
        require_signer(user)
        with session_scope(settings.database_url) as session:
            person_name, organization = signer_of(session, user.id)
        try:
            revision_id = sign_reviewed(
                settings,
                report_id,
                actor=user.username,
                person_name=person_name,
                organization=organization,
                source=client_address(request),
                expected_seq=body.expected_seq,
                confirm_unreviewed=body.confirm_unreviewed,
            )
        except (LookupError, ValueError, RuntimeError) as exc:
            raise _refused(exc) from None
        with session_scope(settings.database_url) as session:
            version = session.scalar(select(ReportRevision.version).where(ReportRevision.id == revision_id))
        return {"revision_id": revision_id, "version": int(version or 0)}

    @router.post("/{report_id}/reject", summary="Reject the draft", dependencies=csrf)
    def post_reject(report_id: int, body: RejectRequest, request: Request, user: Reviewer) -> dict[str, int]:
        """Reject the whole draft with a reason; 409 when it is not a draft any more."""
        from integration.reports.review import reject_draft, signer_of
        from integration.store.session import session_scope

        settings = _settings(request)
        _check_visible(settings, user, report_id)
        with session_scope(settings.database_url) as session:
            _, organization = signer_of(session, user.id)
        try:
            revision_id = reject_draft(
                settings,
                report_id,
                actor=user.username,
                reason=body.reason,
                source=client_address(request),
                organization=organization,
                expected_seq=body.expected_seq,
            )
        except (LookupError, ValueError, RuntimeError) as exc:
            raise _refused(exc) from None
        return {"revision_id": revision_id}

    return router
