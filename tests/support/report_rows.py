"""Report rows as the worker and the review app leave them, for tests that build a study's history directly.

Retention, the disk-pressure soak and the case status read reports by their status, purpose and version, not
by what the model wrote: these builders fill the model's fields with neutral values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from integration.store.tables import Report, ReportRevision, ReportStatus, RevisionStatus, Study, utcnow


def report_row(study: Study, status: ReportStatus, **fields: Any) -> Report:
    """A report of the study's current version with neutral model fields (``fields`` override any column)."""
    values: dict[str, Any] = {
        "study_id": study.id, "study_version": study.version, "status": status, "model_id": "m",
        "model_revision": "r", "model_family": "llava", "prompt_version": "p", "structured": True, "findings": {},
        "text": "", "raw_output": "", "evidence": [], "timings": {}, "tokens_in": 0, "tokens_out": 0,
    }  # fmt: skip
    return Report(**(values | fields))


def reading_revision(report: Report, at: datetime | None = None) -> ReportRevision:
    """The revision a radiologist's signature or rejection of ``report`` (already flushed) writes."""
    status = RevisionStatus.SIGNED if report.status is ReportStatus.SIGNED else RevisionStatus.REJECTED
    return ReportRevision(
        report_id=report.id, version=2, status=status, findings={}, text="", author="dr", organization="h",
        created_at=at or utcnow(),
    )  # fmt: skip
