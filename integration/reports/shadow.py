"""Shadow drafts measured against the signed report: the candidate is judged on what a radiologist signed.

When a study's report of record is signed (:func:`integration.reports.review.add_signed_outcome`, in the
signing transaction), each shadow draft of the same study version is compared with the signed findings
and text by the same code that measures reviewed drafts (:func:`~integration.reports.review_diff.review_difference`,
which pairs findings through :mod:`integration.reports.agreement`).  A shadow draft that arrives after the
signature is compared when it is recorded (:func:`compare_late_shadow`).  One row per (shadow draft, signed
revision): a redelivered task or a second call adds nothing.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.reports.review_diff import review_difference
from integration.store.shadow import has_outcome, shadow_drafts
from integration.store.shadow_tables import ShadowOutcome
from integration.store.tables import (
    Report,
    ReportPurpose,
    ReportRevision,
    ReportStatus,
    RevisionStatus,
    Study,
    utcnow,
)


def add_shadow_outcome(session: Session, shadow: Report, revision: ReportRevision) -> bool:
    """Compare one shadow draft with one signed revision and add the outcome (not committed).

    Returns
    -------
    bool
        False when this pair was compared already.
    """
    if has_outcome(session, shadow.id, revision.id):
        return False
    difference = review_difference(shadow.findings, revision.findings)
    session.add(
        ShadowOutcome(
            report_id=shadow.id,
            revision_id=revision.id,
            site_id=session.scalar(select(Study.site_id).where(Study.id == shadow.study_id)),
            model_id=shadow.model_id,
            model_revision=shadow.model_revision,
            prompt_version=shadow.prompt_version,
            draft_findings=difference.draft_findings,
            accepted=difference.accepted,
            edited=difference.edited,
            rejected=difference.rejected,
            added=difference.added,
            edit_distance=difference.edit_distance,
            text_similarity=difference.text_similarity,
            created_at=utcnow(),
        )
    )
    return True


def compare_shadows(session: Session, signed: Report, revision_id: int) -> int:
    """Compare every shadow draft of the signed report's study version with the signed revision; return how many."""
    revision = session.get(ReportRevision, revision_id)
    if revision is None or revision.status != RevisionStatus.SIGNED or signed.purpose != ReportPurpose.PRIMARY:
        return 0
    return sum(
        add_shadow_outcome(session, shadow, revision)
        for shadow in shadow_drafts(session, signed.study_id, signed.study_version)
    )


def compare_late_shadow(session: Session, shadow_report_id: int) -> bool:
    """Compare a shadow draft recorded after its study was signed with the newest signed revision (not committed).

    Returns
    -------
    bool
        True when an outcome was added (False: not a shadow draft, nothing signed yet, or compared already).
    """
    shadow = session.get(Report, shadow_report_id)
    if shadow is None or shadow.purpose != ReportPurpose.SHADOW:
        return False
    revision = session.scalars(
        select(ReportRevision)
        .join(Report, ReportRevision.report_id == Report.id)
        .where(
            Report.study_id == shadow.study_id,
            Report.study_version == shadow.study_version,
            Report.purpose == ReportPurpose.PRIMARY,
            Report.status == ReportStatus.SIGNED,
            ReportRevision.status == RevisionStatus.SIGNED,
        )
        .order_by(ReportRevision.version.desc())
        .limit(1)
    ).one_or_none()
    return revision is not None and add_shadow_outcome(session, shadow, revision)
