"""Shadow mode's own rows: how each hidden candidate draft compares with the report a radiologist signed.

A routing rule with a ``shadow_model`` has a candidate model draft the same studies as the primary model
(:class:`~integration.store.tables.ReportPurpose` ``shadow``, never shown to reviewers).  The candidate is
judged only against what was signed, so its numbers live apart from ``review_outcomes`` (which measure
what reviewers did to the drafts they saw) and never mix into the acceptance of the model in service.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from integration.store.tables import Base, OutcomeNumbers, UTCDateTime, utcnow


class ShadowOutcome(OutcomeNumbers, Base):
    """One shadow draft compared with one signed revision of its study's report of record.

    The numbers are those of :class:`~integration.store.tables.ReviewOutcome`, read as if the radiologist had
    reviewed the shadow draft: ``accepted`` shadow findings the signed report kept as they were, ``edited``
    ones it kept reworded, ``rejected`` ones it does not have, ``added`` signed findings the shadow missed.
    """

    __tablename__ = "shadow_outcomes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The shadow draft (``reports.purpose = 'shadow'``).
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    #: The signed revision of the study's primary report it was compared with.
    revision_id: Mapped[int] = mapped_column(ForeignKey("report_revisions.id", ondelete="CASCADE"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"), index=True)
    #: The candidate's model, revision and prompt version (copied from its draft, the metrics' labels).
    model_id: Mapped[str] = mapped_column(String(255))
    model_revision: Mapped[str] = mapped_column(String(128))
    prompt_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("report_id", "revision_id", name="uq_shadow_outcomes_report_id_revision_id"),)
