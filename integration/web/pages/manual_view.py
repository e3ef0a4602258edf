"""Reports written by hand and failed studies on the study page (owned by the manual report work, issue 19).

Why: a failed study used to show no reason and offer nothing; a rejected draft left the radiologist without a
way to report the study.  The page now says why the analysis failed (the job's error, cleaned; the template
escapes it), offers administrators a retry, and offers radiologists to write the report by hand where that is
allowed (:func:`integration.reports.manual.manual_refusal`), or to discard a live AI draft and write by hand.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from integration.config import Settings
from integration.findings import clean_text
from integration.reports.manual import manual_refusal
from integration.store.retries import failure_of
from integration.store.revisions import report_of_record
from integration.store.tables import Report, ReportStatus, Study, StudyState, UserRole
from integration.web.deps import CurrentUser

#: Longest failure reason shown (job errors are capped at 2000 characters when stored).
MAX_REASON_CHARS = 2000


def manual_context(
    settings: Settings, session: Session, user: CurrentUser, study: Study, reports: list[Report]
) -> dict[str, Any]:
    """Return what the study page shows of a failed analysis and of writing the report by hand.

    Keys: ``failure`` (the newest job's reason and time when the study failed, else None), ``can_retry``
    (administrators, failed studies), ``can_write_by_hand`` (radiologists, no live report of record),
    ``can_discard`` (radiologists, a live AI draft of record: its id in ``discard_report_id``) and
    ``manual_refusal`` (why not, for a refused request).
    """
    failed = study.state == StudyState.FAILED
    failure = failure_of(session, study) if failed else None
    radiologist = user.role is UserRole.RADIOLOGIST
    refusal = manual_refusal(session, study)
    record_id = report_of_record(session, study.id)
    record = next((report for report in reports if report.id == record_id), None)
    live_ai_draft = record is not None and record.status is ReportStatus.DRAFT and bool(record.ai_generated)
    return {
        "failure": None
        if failure is None
        else {
            "reason": clean_text(failure.reason, MAX_REASON_CHARS),
            "failed_at": failure.failed_at,
            "attempts": failure.attempts,
        },
        "study_failed": failed,
        "can_retry": failed and user.role is UserRole.ADMIN,
        "can_write_by_hand": radiologist and refusal is None,
        "can_discard": radiologist and live_ai_draft,
        "discard_report_id": record.id if live_ai_draft and record is not None else None,
        "manual_refusal": refusal,
    }
