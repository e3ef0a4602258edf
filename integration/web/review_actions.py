"""The review actions, written once for the JSON API and the study page's forms: change, sign, reject.

:mod:`integration.web.review` (JSON) and :mod:`integration.web.review_form` / :mod:`integration.web.study_page`
(HTML forms) call these and differ only in how they answer: the API raises the HTTP error of
:func:`refusal`, a form shows it as a page that keeps the text that was not saved.  Each action checks that
the user may see the report (404 otherwise, :mod:`integration.web.access`) and runs in its own
transactions; the review domain (:mod:`integration.store.reviews`, :mod:`integration.reports.review`)
decides and audits.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.reports.drafts import SourceUnavailable
from integration.reports.readiness import ReviewIncomplete
from integration.reports.review import reject_draft, sign_reviewed, signer_of
from integration.store.reviews import ReportClosed, ReviewConflict, ReviewError, WorkingCopy, record_change
from integration.store.revisions import ReportNotSignable, UnknownReport, VersionTaken
from integration.store.session import session_scope
from integration.store.tables import ReportRevision, UserRole
from integration.web.access import report_for, report_of_study
from integration.web.deps import CurrentUser
from integration.web.schemas import Rejected, Signed

#: What the review domain raises when it refuses an action; :func:`refusal` gives each its answer.
REFUSED = (LookupError, ValueError, RuntimeError)
#: What an administrator who tries to sign is told.
NOT_A_SIGNER = "only radiologists sign reports: an administrator account administers and cannot sign a clinical report"


@dataclass(frozen=True)
class Change:
    """One change of a working copy: ``action`` on finding ``finding`` (when it concerns one) with ``text``."""

    action: str
    finding: int | None = None
    text: str | None = None


def require_signer(user: CurrentUser) -> None:
    """Refuse a signature by anyone but a radiologist.

    Raises
    ------
    fastapi.HTTPException
        403 with :data:`NOT_A_SIGNER` for any other role.
    """
    if user.role is not UserRole.RADIOLOGIST:
        raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_A_SIGNER)


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
    if isinstance(exc, UnknownReport):
        return status.HTTP_404_NOT_FOUND, "no such report"
    if isinstance(exc, ReportClosed | ReviewConflict | ReportNotSignable | VersionTaken | ReviewIncomplete):
        return status.HTTP_409_CONFLICT, str(exc)
    if isinstance(exc, SourceUnavailable):
        return status.HTTP_503_SERVICE_UNAVAILABLE, f"cannot sign now: {exc}"
    if isinstance(exc, ReviewError | ValueError):
        return status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)
    raise exc


def _check_visible(session: Session, user: CurrentUser, report_id: int, study_uid: str | None) -> None:
    """404 unless the user may see the report (and it is a report of ``study_uid``, when given)."""
    if study_uid is None:
        report_for(session, user, report_id)
    else:
        report_of_study(session, user, study_uid, report_id)


def change(
    settings: Settings,
    user: CurrentUser,
    report_id: int,
    edit: Change,
    *,
    expected_seq: int | None,
    source: str | None,
    study_uid: str | None = None,
) -> WorkingCopy:
    """Record one change of the working copy and return the new copy.

    Raises
    ------
    fastapi.HTTPException
        404 when the user may not see the report (or it is not one of ``study_uid``).
    LookupError, ValueError, RuntimeError
        A refusal of the review domain (see :func:`refusal`).
    """
    with session_scope(settings.database_url) as session:
        _check_visible(session, user, report_id, study_uid)
        return record_change(
            session,
            report_id,
            actor=user.username,
            action=edit.action,
            finding=edit.finding,
            text=edit.text,
            expected_seq=expected_seq,
            source=source,
        )


def sign(
    settings: Settings,
    user: CurrentUser,
    report_id: int,
    *,
    expected_seq: int | None,
    confirm_unreviewed: int | None,
    source: str | None,
    study_uid: str | None = None,
) -> Signed:
    """Sign the working copy as the signer saw it: a new version, its verified SR, outcome and deliveries.

    Raises
    ------
    fastapi.HTTPException
        404 when the user may not see the report (or it is not one of ``study_uid``), 403 when the user is
        not a radiologist.
    LookupError, ValueError, RuntimeError
        A refusal of the review domain: stale, closed, not the report of record, review unfinished.
    """
    with session_scope(settings.database_url) as session:
        _check_visible(session, user, report_id, study_uid)
        require_signer(user)
        person_name, organization = signer_of(session, user.id)
    revision_id = sign_reviewed(
        settings,
        report_id,
        actor=user.username,
        person_name=person_name,
        organization=organization,
        source=source,
        expected_seq=expected_seq,
        confirm_unreviewed=confirm_unreviewed,
    )
    with session_scope(settings.database_url) as session:
        version = session.scalar(select(ReportRevision.version).where(ReportRevision.id == revision_id))
    return Signed(revision_id=revision_id, version=int(version or 0))


def reject(
    settings: Settings,
    user: CurrentUser,
    report_id: int,
    *,
    reason: str,
    expected_seq: int | None,
    source: str | None,
    study_uid: str | None = None,
) -> Rejected:
    """Reject the whole draft with a reason.

    Raises
    ------
    fastapi.HTTPException
        404 when the user may not see the report (or it is not one of ``study_uid``).
    LookupError, ValueError, RuntimeError
        A refusal of the review domain: not a draft any more, stale, no reason.
    """
    with session_scope(settings.database_url) as session:
        _check_visible(session, user, report_id, study_uid)
        _, organization = signer_of(session, user.id)
    revision_id = reject_draft(
        settings,
        report_id,
        actor=user.username,
        reason=reason,
        source=source,
        organization=organization,
        expected_seq=expected_seq,
    )
    return Rejected(revision_id=revision_id)
