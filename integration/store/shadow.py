"""Shadow mode in the store: the candidate drafts of a study, their outcomes, and the numbers per candidate.

Comparing a shadow draft with a signed report needs :mod:`integration.reports.review_diff`, which the store may
not import; :mod:`integration.reports.shadow` computes the numbers and this module keeps and sums them.  (Studies a rule
skipped are listed with the failed work, :mod:`integration.store.work`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from integration.store.shadow_tables import ShadowOutcome
from integration.store.tables import (
    Report,
    ReportPurpose,
    ReportStatus,
)


@dataclass(frozen=True)
class ShadowSummary:
    """The outcomes of one candidate (model, revision, prompt version), summed.

    Attributes
    ----------
    model_id, model_revision, prompt_version : str
        The candidate.
    outcomes : int
        Shadow drafts compared with a signed report.
    draft_findings, accepted, edited, rejected, added : int
        Sums over the outcomes (see :class:`~integration.store.shadow_tables.ShadowOutcome`).
    text_similarity_mean : float
        Mean text similarity (0 to 1).
    """

    model_id: str
    model_revision: str
    prompt_version: str
    outcomes: int
    draft_findings: int
    accepted: int
    edited: int
    rejected: int
    added: int
    text_similarity_mean: float

    @property
    def finding_agreement(self) -> float:
        """Findings both reports have (kept as written or reworded) over the findings either has; 1.0 when none."""
        either = self.draft_findings + self.added
        return (self.accepted + self.edited) / either if either else 1.0


def reviewable(report: Any = Report) -> ColumnElement[bool]:
    """Return the condition that keeps shadow drafts out of a query of ``report`` (``Report`` or an alias of it).

    Every list a reviewer, a viewer or a receiver sees adds it: a shadow draft is never the report of record,
    never shown, counted, delivered or alerted on.
    """
    condition: ColumnElement[bool] = report.purpose != ReportPurpose.SHADOW
    return condition


def shadow_summaries(session: Session) -> list[ShadowSummary]:
    """Return one summary per candidate that has outcomes, ordered by model, revision and prompt version."""
    key = (ShadowOutcome.model_id, ShadowOutcome.model_revision, ShadowOutcome.prompt_version)
    rows = session.execute(
        select(
            *key,
            func.count(ShadowOutcome.id),
            func.sum(ShadowOutcome.draft_findings),
            func.sum(ShadowOutcome.accepted),
            func.sum(ShadowOutcome.edited),
            func.sum(ShadowOutcome.rejected),
            func.sum(ShadowOutcome.added),
            func.avg(ShadowOutcome.text_similarity),
        )
        .group_by(*key)
        .order_by(*key)
    ).all()
    return [
        ShadowSummary(m, r, p, int(n), int(d or 0), int(a or 0), int(e or 0), int(x or 0), int(ad or 0), float(s or 0))
        for m, r, p, n, d, a, e, x, ad, s in rows
    ]


def shadow_drafts(session: Session, study_id: int, study_version: int) -> list[Report]:
    """Return the shadow drafts of one study version (withdrawn ones left out), oldest first."""
    return list(
        session.scalars(
            select(Report)
            .where(
                Report.study_id == study_id,
                Report.study_version == study_version,
                Report.purpose == ReportPurpose.SHADOW,
                Report.status != ReportStatus.WITHDRAWN,
            )
            .order_by(Report.id)
        )
    )


def has_outcome(session: Session, report_id: int, revision_id: int) -> bool:
    """Whether this shadow draft was compared with this signed revision already."""
    query = select(ShadowOutcome.id).where(
        ShadowOutcome.report_id == report_id, ShadowOutcome.revision_id == revision_id
    )
    return session.scalar(query) is not None
