"""The review actions, written once for the JSON API and the study page's forms: change, sign, reject.

:mod:`integration.web.api.review` (JSON) and :mod:`integration.web.pages.review_form` /
:mod:`integration.web.pages.study_page` (HTML forms) call the actions of a :class:`Review` and differ only
in how they answer: the API raises the HTTP error of :func:`refusal`, a form shows it as a page that keeps
the text that was not saved.  Each action checks that the user may see the report (404 otherwise,
:mod:`integration.web.security.access`) and runs in its own transactions; the review domain
(:mod:`integration.store.reviews`, :mod:`integration.reports.review`) decides and audits.  A signed
report's deliveries are queued here, after signing, and a rejected draft is withdrawn from the receivers
that got it here, after rejecting (export sits above reports).  While another radiologist holds a live
claim on the study (:mod:`integration.store.claims`) every action is refused with a 409 naming them; a change
renews the actor's own claim and signing releases it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from typing import TypedDict

from fastapi import HTTPException, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.export.corrections import withdraw_reports
from integration.export.outbox import queue_deliveries
from integration.reports.drafts import SourceUnavailable
from integration.reports.readiness import ReviewIncomplete
from integration.reports.review import reject_draft, sign_reviewed, signer_of
from integration.store.claims import StudyClaimed, check_claim, claim_study, release_claim
from integration.store.reviews import ReportClosed, ReviewConflict, ReviewError, WorkingCopy, record_change
from integration.store.revisions import ReportNotSignable, UnknownReport, VersionTaken
from integration.store.session import session_scope
from integration.store.tables import Report, ReportRevision, Study, UserRole, utcnow
from integration.web.deps import CurrentUser
from integration.web.schemas import Rejected, Signed
from integration.web.security.access import report_for, report_of_study

#: What the review domain raises when it refuses an action; :func:`refusal` gives each its answer.
REFUSED = (LookupError, ValueError, RuntimeError)
#: Refusals answered 409: the draft or the study is not in a state to take the action.
CONFLICTS = (ReportClosed, ReviewConflict, ReportNotSignable, VersionTaken, ReviewIncomplete, StudyClaimed)
#: What an administrator who tries to sign is told.
NOT_A_SIGNER = "only radiologists sign reports: an administrator account administers and cannot sign a clinical report"


class Change(TypedDict):
    """One change of a working copy: ``action`` on finding ``finding`` (when it concerns one) with ``text``."""

    action: str
    finding: int | None
    text: str | None


class _Decision(TypedDict):
    """What signing and rejecting record of the decider."""

    actor: str
    organization: str
    source: str | None
    expected_seq: int | None


def require_signer(user: CurrentUser) -> None:
    """Refuse a signature by anyone but a radiologist.

    Raises
    ------
    fastapi.HTTPException
        403 with :data:`NOT_A_SIGNER` for any other role.
    """
    if user.role is not UserRole.RADIOLOGIST:
        raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_A_SIGNER)


def refusal(exc: Exception, zone: tzinfo | None = None) -> tuple[int, str]:
    """Return the HTTP status and message of a refused review action (the messages are written to be shown).

    Parameters
    ----------
    exc : Exception
        What the review domain raised.
    zone : datetime.tzinfo or None, optional
        The hospital's zone, in which a claim's end is said (None: the server's local zone).

    Returns
    -------
    tuple of (int, str)
        404 for an unknown report, 409 for a stale or closed draft, a report that is not the study's report of
        record, a review that is not finished or a study another radiologist is reading, 503 when the study's
        images cannot be read, 422 for invalid input.

    Raises
    ------
    Exception
        ``exc`` itself when it is not a refusal.
    """
    if isinstance(exc, UnknownReport):
        return status.HTTP_404_NOT_FOUND, "no such report"
    if isinstance(exc, StudyClaimed):
        return status.HTTP_409_CONFLICT, exc.describe(zone)
    if isinstance(exc, CONFLICTS):
        return status.HTTP_409_CONFLICT, str(exc)
    if isinstance(exc, SourceUnavailable):
        return status.HTTP_503_SERVICE_UNAVAILABLE, f"cannot sign now: {exc}"
    if isinstance(exc, ReviewError | ValueError):
        return status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)
    raise exc


@dataclass(frozen=True)
class Review:
    """Who reviews which report, from where: the context of the review actions.

    Attributes
    ----------
    settings : Settings
        The database and the instance store.
    user : CurrentUser
        The reviewer; each action answers 404 unless they may see the report.
    report_id : int
        The report.
    source : str or None
        The client's address, for the audit.
    study_uid : str or None
        The study of the page the action came from: the report must be one of its (404 otherwise).

    Raises
    ------
    fastapi.HTTPException
        From every action: 404 when the user may not see the report.
    LookupError, ValueError, RuntimeError
        From every action: a refusal of the review domain (stale, closed, invalid, review unfinished), whose
        answer :func:`refusal` gives.
    """

    settings: Settings
    user: CurrentUser
    report_id: int
    source: str | None
    study_uid: str | None = None

    def _check_visible(self, session: Session) -> Report:
        """Return the report when the user may see it and nobody else holds a claim on its study."""
        if self.study_uid is None:
            report = report_for(session, self.user, self.report_id)
        else:
            report = report_of_study(session, self.user, self.study_uid, self.report_id)
        check_claim(session, report.study_id, self.user.id, now=utcnow())
        return report

    def change(self, edit: Change, expected_seq: int | None) -> WorkingCopy:
        """Record one change of the working copy (renewing the actor's own claim) and return the new copy."""
        with session_scope(self.settings.database_url) as session:
            report = self._check_visible(session)
            actor, source = self.user.username, self.source
            copy = record_change(session, self.report_id, actor=actor, expected_seq=expected_seq, source=source, **edit)
            if self.user.role is UserRole.RADIOLOGIST:
                claim_study(session, report.study_id, self.user.id, minutes=self.settings.claim_minutes, now=utcnow())
            return copy

    def sign(self, expected_seq: int | None, confirm_unreviewed: int | None) -> Signed:
        """Sign the working copy as the signer saw it: a new version, its verified SR, outcome and deliveries.

        Only a radiologist signs: anyone else gets a 403 :class:`fastapi.HTTPException`.
        """
        person_name, decision = self._decider(expected_seq, signing=True)
        revision_id = sign_reviewed(
            self.settings, self.report_id, person_name=person_name, confirm_unreviewed=confirm_unreviewed, **decision
        )
        queue_deliveries(self.settings, self.report_id, revision_id, "signed")
        with session_scope(self.settings.database_url) as session:
            version = session.scalar(select(ReportRevision.version).where(ReportRevision.id == revision_id))
            study_id = session.scalar(select(Report.study_id).where(Report.id == self.report_id))
            if study_id is not None:
                release_claim(session, study_id)
        return Signed(revision_id=revision_id, version=int(version or 0))

    def reject(self, reason: str, expected_seq: int | None) -> Rejected:
        """Reject the whole draft with a reason, and withdraw it from every receiver that got it."""
        _, decision = self._decider(expected_seq, signing=False)
        revision_id = reject_draft(self.settings, self.report_id, reason=reason, **decision)
        withdraw_reports(self.settings, [self.report_id], "rejected")
        return Rejected(revision_id=revision_id)

    def _decider(self, expected_seq: int | None, *, signing: bool) -> tuple[str, _Decision]:
        """Check the report and the role; return the signer's person name and what the decision records."""
        with session_scope(self.settings.database_url) as session:
            if signing:
                require_signer(self.user)  # an administrator is told why, whoever is reading the study
            report = self._check_visible(session)
            study_site = session.scalar(select(Study.site_id).where(Study.id == report.study_id))
            person_name, organization = signer_of(session, self.user.id, study_site)
        return person_name, _Decision(
            actor=self.user.username, organization=organization, source=self.source, expected_seq=expected_seq
        )
