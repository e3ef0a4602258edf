"""Closing a review: sign the working copy (a verified SR and its outcome) or reject the draft.

Signing reuses :func:`integration.reports.drafts.sign_report` for the version and its SR, with the
:class:`~integration.store.tables.ReviewOutcome` (how the signed report differs from the draft, see
:mod:`integration.reports.review_diff`) and audits ``report.sign``; the caller queues the deliveries
(export is above reports).  The report's review lock (:func:`integration.store.reviews.review_lock`) is
held meanwhile, so a change or a second signature waits and then finds the report closed.

The signed version, its outcome and the ``report.sign`` audit event commit in one transaction.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.findings import MAX_SECTION_CHARS, Document, clean_text
from integration.reports.readiness import check_ready
from integration.reports.review_diff import ReviewDifference, review_difference
from integration.reports.shadow import compare_shadows
from integration.store.audit import add_event
from integration.store.reviews import (
    ReviewConflict,
    ReviewError,
    WorkingCopy,
    checked_text,
    decisions_as_matches,
    lock_draft,
    review_lock,
)
from integration.store.revisions import NotReportOfRecord, UnknownReport, next_version, record_refusal
from integration.store.session import session_scope
from integration.store.sso_tables import UserSite
from integration.store.tables import (
    Report,
    ReportRevision,
    ReportStatus,
    ReviewOutcome,
    RevisionStatus,
    Site,
    Study,
    User,
    utcnow,
)

log = logging.getLogger(__name__)

#: The organization a signature carries when the signer has no site.
DEFAULT_ORGANIZATION = "pacs-vlm"

# What a DICOM PN or LO value may not hold once cleaned: the value separator, line breaks and tabs.
_NOT_IN_PERSON_NAME = re.compile(r"[\\=\t\n\r]")
_NOT_IN_LO = re.compile(r"[\\\t\n\r]")


def signer_of(session: Session, user_id: int, study_site_id: int | None = None) -> tuple[str, str]:
    """Return the name and organization a user's signature carries.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    user_id : int
        The user.
    study_site_id : int, optional
        The site of the study signed: the organization of a user of several sites who belongs to it.

    Returns
    -------
    tuple of str
        The person name (``User.person_name``, else the username, made a valid DICOM PN: no backslash,
        ``=`` or control characters, at most 4 ``^`` and 64 characters; a name without ``^`` becomes a
        family name, ``"jdoe^"``) and the organization (the study's site's name when the user belongs to it,
        else their first site's; at most 64 characters; ``"pacs-vlm"`` without a site).

    Raises
    ------
    LookupError
        No user has this id.
    """
    member = (
        study_site_id is not None and session.get(UserSite, {"user_id": user_id, "site_id": study_site_id}) is not None
    )
    site_id = study_site_id if member else User.site_id
    row = session.execute(
        select(User.username, User.person_name, Site.name).outerjoin(Site, Site.id == site_id).where(User.id == user_id)
    ).one_or_none()
    if row is None:
        raise LookupError(f"no user with id {user_id}")
    username, person_name, site_name = row
    name = _NOT_IN_PERSON_NAME.sub(" ", clean_text(person_name or username)).strip()
    parts = name.split("^")
    if len(parts) > 5:
        name = "^".join([*parts[:4], " ".join(parts[4:])])
    name = name[:63].strip(" ^") or "UNKNOWN"
    if "^" not in name:
        name += "^"  # a family name only: without a caret the name reads as the retired form
    organization = _NOT_IN_LO.sub(" ", clean_text(site_name or "")).strip()[:64].strip() or DEFAULT_ORGANIZATION
    return name, organization


def _add_outcome(
    session: Session, report: Report, revision_id: int, outcome: str, difference: ReviewDifference
) -> None:
    """Add the outcome row of a signed or rejected revision (not committed)."""
    site_id = session.scalar(select(Study.site_id).where(Study.id == report.study_id))
    session.add(
        ReviewOutcome(
            report_id=report.id,
            revision_id=revision_id,
            site_id=site_id,
            model_id=report.model_id,
            model_revision=report.model_revision,
            prompt_version=report.prompt_version,
            outcome=outcome,
            draft_findings=difference.draft_findings,
            accepted=difference.accepted,
            edited=difference.edited,
            rejected=difference.rejected,
            added=difference.added,
            edit_distance=difference.edit_distance,
            text_similarity=difference.text_similarity,
            detail=difference.detail,
            created_at=utcnow(),
        )
    )


def _counts(difference: ReviewDifference) -> dict[str, int]:
    return {
        "draft_findings": difference.draft_findings,
        "accepted": difference.accepted,
        "edited": difference.edited,
        "rejected": difference.rejected,
        "added": difference.added,
    }


def add_signed_outcome(
    session: Session,
    report: Report,
    revision_id: int,
    *,
    actor: str,
    source: str | None = None,
    copy: WorkingCopy | None = None,
) -> ReviewDifference:
    """Add the outcome of a signed revision and its ``report.sign`` audit event to the session (no commit).

    Called inside :meth:`~integration.reports.drafts.PreparedSignature.recorded`, so the version, its outcome
    and the audit event commit together.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        The signing transaction.
    report : Report
        The report.
    revision_id : int
        Its new signed revision (flushed).
    actor : str
        Who signed (username, or the person name from the command line).
    source : str, optional
        Where from (``host:port``, ``cli``).
    copy : WorkingCopy, optional
        The working copy that was signed: its decisions say which signed finding each draft finding
        became.  Without it the draft is the report's own and the pairing is inferred from the texts.

    Returns
    -------
    ReviewDifference
        The difference added.
    """
    revision = session.get(ReportRevision, revision_id)
    if revision is None or revision.report_id != report.id:
        raise UnknownReport(f"report {report.id} has no revision {revision_id}")
    if copy is None:
        difference = review_difference(report.findings, revision.findings)
    else:
        difference = review_difference(copy.draft, revision.findings, matches=decisions_as_matches(copy))
    _add_outcome(session, report, revision_id, "signed", difference)
    compare_shadows(session, report, revision_id)  # shadow mode: the candidates measured against this signature
    detail: dict[str, Any] = {"revision_id": revision_id, "version": revision.version, **_counts(difference)}
    if copy is not None:
        detail["seq"] = copy.seq
    add_event(
        session,
        actor=actor,
        action="report.sign",
        object_type="report",
        object_id=str(report.id),
        source=source,
        detail=detail,
    )
    return difference


def record_signed_outcome(
    settings: Settings,
    report_id: int,
    revision_id: int,
    *,
    actor: str,
    source: str | None = None,
    copy: WorkingCopy | None = None,
) -> ReviewDifference:
    """Return how a signed revision differs from the draft, storing it (and auditing) when it is not stored yet.

    Idempotent; signing stores the outcome in its own transaction (:func:`add_signed_outcome`), so this only
    adds what an older signature left out.

    Parameters
    ----------
    settings : Settings
        The database.
    report_id, revision_id : int
        The report and its signed revision.
    actor : str
        Who signed.
    source : str, optional
        Where from.
    copy : WorkingCopy, optional
        The working copy that was signed (see :func:`add_signed_outcome`).

    Returns
    -------
    ReviewDifference
        The difference.
    """
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        revision = session.get(ReportRevision, revision_id)
        if report is None or revision is None or revision.report_id != report_id:
            raise UnknownReport(f"report {report_id} has no revision {revision_id}")
        if session.scalar(select(ReviewOutcome.id).where(ReviewOutcome.revision_id == revision_id)) is not None:
            if copy is None:
                return review_difference(report.findings, revision.findings)
            return review_difference(copy.draft, revision.findings, matches=decisions_as_matches(copy))
        difference = add_signed_outcome(session, report, revision_id, actor=actor, source=source, copy=copy)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
    return difference


def sign_reviewed(
    settings: Settings,
    report_id: int,
    *,
    actor: str,
    person_name: str,
    organization: str,
    source: str | None = None,
    expected_seq: int | None = None,
    confirm_unreviewed: int | None = None,
) -> int:
    """Sign a draft's working copy: the next version with a verified SR, its outcome and audit (not its deliveries).

    Only a working copy that :mod:`integration.reports.readiness` finds ready is signed: every finding
    reviewed, or the unreviewed ones confirmed by count (they are then signed as written and count as
    accepted), and an unparsed model output edited.  Rejected findings are left out, edited and added ones
    are signed with their text; impression, limitations and comparison come from the working copy (the priors
    compared with and the prior note stay the draft's).  Only the study's report of record is signed (see
    :func:`integration.store.revisions.record_refusal`).

    Parameters
    ----------
    settings : Settings
        Data folder, instance store, database, destinations.
    report_id : int
        The draft.
    actor : str
        The signing user's username (audit).
    person_name, organization : str
        What the SR's verifying observer carries (see :func:`signer_of`).
    source : str, optional
        Where from (``host:port``).
    expected_seq : int, optional
        The change number the reviewer saw; a different one raises :class:`ReviewConflict`.
    confirm_unreviewed : int, optional
        How many unreviewed findings the radiologist confirmed signing as written.

    Returns
    -------
    int
        The signed revision's id.

    Raises
    ------
    ReviewIncomplete
        Findings not reviewed and not confirmed, or an unparsed model output not edited.
    NotReportOfRecord
        The report is a second opinion, or the study already has a signed report.
    ReportClosed
        The report is not a draft.
    ReviewConflict
        ``expected_seq`` is stale.
    ReviewError
        Nothing to sign (no finding and no impression).
    integration.store.revisions.UnknownReport
        No report has this id.
    ValueError
        An invalid person name or organization.
    integration.reports.drafts.SourceUnavailable
        No instance of the study can be read.
    """
    from integration.reports.drafts import prepare_signature

    with review_lock(settings.database_url, report_id):
        with session_scope(settings.database_url) as session:
            report, copy = lock_draft(session, report_id, expected_seq, advisory=False)
            structured = bool(report.structured)
            refusal = record_refusal(session, report)
        if refusal is not None:
            raise NotReportOfRecord(refusal)
        check_ready(copy, structured=structured, confirm_unreviewed=confirm_unreviewed)

        findings = copy.signed_findings
        if not findings and not copy.impression:
            raise ReviewError("nothing to sign: every finding is rejected and there is no impression; reject the draft")
        prepared = prepare_signature(
            settings,
            report_id,
            author=person_name,
            organization=organization,
            findings=findings,
            impression=copy.impression,
            limitations=copy.limitations,
            comparison=copy.comparison,
        )
        with prepared.recorded() as (session, report, revision_id):
            add_signed_outcome(session, report, revision_id, actor=actor, source=source, copy=copy)
    log.info("report %d: signed as revision %d", report_id, revision_id)
    return revision_id


def reject_draft(
    settings: Settings,
    report_id: int,
    *,
    actor: str,
    reason: str,
    source: str | None = None,
    organization: str = "",
    expected_seq: int | None = None,
) -> int:
    """Reject a draft as a whole: a ``rejected`` revision holding the reason, its outcome and audit.

    No SR is written and nothing is delivered.  Every draft finding counts as rejected.

    Parameters
    ----------
    settings : Settings
        The database.
    report_id : int
        The draft.
    actor : str
        Who rejected it (username): the revision's author.
    reason : str
        Why (required; untrusted text, at most :data:`~integration.store.reviews.MAX_SECTION_CHARS`).
    source : str, optional
        Where from (``host:port``).
    organization : str
        The actor's organization, stored with the revision.
    expected_seq : int, optional
        The change number the reviewer saw; a different one raises :class:`ReviewConflict`.

    Returns
    -------
    int
        The rejected revision's id.

    Raises
    ------
    ReviewError
        No reason, or too long.
    ReportClosed
        The report is not a draft.
    ReviewConflict
        ``expected_seq`` is stale, or a concurrent rejection or signature took the version.
    integration.store.revisions.UnknownReport
        No report has this id.
    """
    why = checked_text(reason, MAX_SECTION_CHARS, "the reason", required=True)
    with session_scope(settings.database_url) as session:
        report, copy = lock_draft(session, report_id, expected_seq)
        version = next_version(session, report_id)
        revision = ReportRevision(
            report_id=report_id,
            version=version,
            status=RevisionStatus.REJECTED,
            findings=Document().as_json(),
            text=why,
            author=actor[:128],
            organization=organization[:128],
            created_at=utcnow(),
        )
        session.add(revision)
        try:
            session.flush()
        except IntegrityError as exc:
            session.rollback()
            raise ReviewConflict(f"report {report_id} was signed or rejected meanwhile: reload it") from exc
        report.status = ReportStatus.REJECTED
        difference = review_difference(copy.draft, Document())
        _add_outcome(session, report, revision.id, "rejected", difference)
        revision_id = int(revision.id)
        add_event(
            session,
            actor=actor,
            action="report.reject",
            object_type="report",
            object_id=str(report_id),
            source=source,
            detail={"revision_id": revision_id, "version": version, "seq": copy.seq, "reason_length": len(why)},
        )
    log.info("report %d: draft rejected (revision %d)", report_id, revision_id)
    return revision_id
