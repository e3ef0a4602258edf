"""Reports written by hand: the study's report of record when there is no usable AI draft.

A radiologist writes the report by hand when the model's draft was rejected or is useless, or when there is no
draft at all (the analysis failed, or has not run yet).  A manual report is the same versioned report as an AI
draft, so it is edited, signed, versioned and exported through the same review path: a :class:`Report` row with
purpose ``primary``, status ``draft``, ``ai_generated`` False, no job and an empty findings document.  Only its
model fields say it is manual (:data:`MANUAL_MODEL_ID`); its documents (SR, TID 1500, FHIR, HL7) name the
radiologist and never an algorithm (see :mod:`integration.reports.sr`).

The draft key (study, version, model, revision, prompt version) is unique, so each manual report gets a
revision of its own (:func:`manual_revision`): a second manual report of the same study version (the first one
rejected) never collides with the first.

A manual report may be started only when the study has no live report of record (no primary draft and no
signed report), or from a useless draft by :func:`discard_and_write`, which rejects the draft with a reason first.
Starting one is audited ``report.manual_start``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from integration.config import Settings
from integration.findings import Document
from integration.reports.review import reject_draft
from integration.store.audit import add_event
from integration.store.revisions import report_of_record
from integration.store.session import session_scope
from integration.store.tables import (
    ROLE_PRIOR,
    Report,
    ReportPurpose,
    ReportStatus,
    Study,
    StudyState,
    utcnow,
)

log = logging.getLogger(__name__)

#: ``reports.model_id`` (and family and prompt version) of a report written without AI.
MANUAL_MODEL_ID = "manual"
#: Study states in which nothing can be reported yet (images still arriving, or the study was replaced).
_NOT_REPORTABLE = frozenset({StudyState.RECEIVING, StudyState.SUPERSEDED, StudyState.CANCELLED})


class ManualReportRefused(ValueError):
    """A manual report may not be started now (the study has a live report of record, or is not reportable)."""


def manual_revision(now: datetime) -> str:
    """Return a draft-key revision unique to one manual report: when it was started, and a random part."""
    return f"manual-{now.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"


def manual_refusal(session: Session, study: Study) -> str | None:
    """Say why a manual report may not be started for a study now, or None when it may.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The study.

    Returns
    -------
    str or None
        A sentence for the radiologist, or None.
    """
    if study.role == ROLE_PRIOR:
        return "a prior study is not reported: it is shown beside the study it was fetched for"
    if study.state in _NOT_REPORTABLE:
        return f"the study is {study.state.value}: there is nothing to report on now"
    record = report_of_record(session, study.id)
    if record is None:
        return None
    report = session.get(Report, record)
    if report is not None and report.status == ReportStatus.SIGNED:
        return f"this study already has a signed report (report {record}); amend that report instead"
    return (
        f"this study has a draft of record (report {record}): review it, or discard it and write by hand "
        "(the draft is rejected with your reason)"
    )


def start_manual_report(session: Session, study: Study, *, actor: str, now: datetime, source: str | None = None) -> int:
    """Add a manual report (an empty primary draft written without AI) for the study's current version.

    Adds and flushes; the caller's scope commits, with the ``report.manual_start`` audit event added here.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The study (already checked to be the user's).
    actor : str
        The radiologist's username.
    now : datetime
        Current time (aware, UTC).
    source : str, optional
        Where from (``host:port``).

    Returns
    -------
    int
        The new report's id.

    Raises
    ------
    ManualReportRefused
        The study has a live draft of record or a signed report, or is not reportable now.
    """
    if session.get_bind().dialect.name == "postgresql":  # one start at a time per study
        session.refresh(study, with_for_update=True)
    refusal = manual_refusal(session, study)
    if refusal is not None:
        raise ManualReportRefused(refusal)
    report = Report(
        study_id=study.id,
        job_id=None,
        study_version=study.version,
        status=ReportStatus.DRAFT,
        ai_generated=False,
        verification="UNVERIFIED",
        model_id=MANUAL_MODEL_ID,
        model_revision=manual_revision(now),
        model_family=MANUAL_MODEL_ID,
        prompt_version=MANUAL_MODEL_ID,
        structured=True,
        findings=Document().as_json(),
        text="",
        raw_output="",
        evidence=[],
        timings={},
        tokens_in=0,
        tokens_out=0,
        created_at=now,
        purpose=ReportPurpose.PRIMARY,
    )
    session.add(report)
    if study.state in (StudyState.STABLE, StudyState.QUEUED, StudyState.RUNNING, StudyState.FAILED):
        study.state = StudyState.DRAFTED  # the report of record is now this draft: signing it signs the study
    session.flush()
    add_event(
        session,
        actor=actor,
        action="report.manual_start",
        object_type="report",
        object_id=str(report.id),
        source=source,
        detail={"study_uid": study.study_uid, "study_version": study.version},
    )
    log.info("report %d: written by hand, started", report.id)
    return int(report.id)


def discard_and_write(
    settings: Settings,
    report_id: int,
    *,
    actor: str,
    reason: str,
    source: str | None = None,
    organization: str = "",
    expected_seq: int | None = None,
) -> int:
    """Reject a useless AI draft with a reason, then start the manual report that replaces it.

    Parameters
    ----------
    settings : Settings
        The database.
    report_id : int
        The draft of record.
    actor : str
        The radiologist's username.
    reason : str
        Why the draft is discarded (required).
    source : str, optional
        Where from.
    organization : str
        The radiologist's organization, stored with the rejection.
    expected_seq : int, optional
        The change number the radiologist saw.

    Returns
    -------
    int
        The manual report's id.

    Raises
    ------
    ManualReportRefused
        The draft is not its study's draft of record, or the study may not get a manual report.
    integration.store.reviews.ReviewError
        No reason, or a stale ``expected_seq`` (:class:`~integration.store.reviews.ReviewConflict`), or the
        report is not a draft (:class:`~integration.store.reviews.ReportClosed`).
    """
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        if report is None or report.purpose != ReportPurpose.PRIMARY:
            raise ManualReportRefused("only the study's primary draft can be discarded for a report written by hand")
        study_id = report.study_id
    reject_draft(
        settings,
        report_id,
        actor=actor,
        reason=reason,
        source=source,
        organization=organization,
        expected_seq=expected_seq,
    )
    with session_scope(settings.database_url) as session:
        study = session.get(Study, study_id)
        assert study is not None
        return start_manual_report(session, study, actor=actor, now=utcnow(), source=source)
