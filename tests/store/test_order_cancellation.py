"""What a cancelled or discontinued order does to its studies: no job, no draft, or the draft withdrawn.

Studies are recorded by the real ingest and completed by the real assembly step, on SQLite and PostgreSQL;
jobs are claimed and drafts recorded by the worker's store functions.
"""

from __future__ import annotations

from datetime import timedelta

from pydicom.uid import generate_uid
from sqlalchemy import select

from integration.store.jobs import complete_stable_studies
from integration.store.order_tables import Order, OrderStatus
from integration.store.reports import SkippedJob, claim_job, record_draft
from integration.store.session import session_scope
from integration.store.tables import (
    AnalysisJob,
    AuditEvent,
    JobState,
    Report,
    ReportPurpose,
    ReportStatus,
    Study,
    StudyState,
    utcnow,
)
from tests.support.order_store import a_draft, apply, complete, drafted, ingest, message, study

# ------------------------------------------------------------------ cancellation


def test_cancel_while_receiving_or_queued_means_no_job_and_no_draft(url: str) -> None:
    apply(url, message())
    receiving = ingest(url, received_at=utcnow())  # still receiving: the assembler cancels it on completion
    result = apply(url, message("CA"))
    assert result.outcome == "cancelled" and result.studies == [receiving] and result.withdrawn_reports == []
    assert study(url, receiving).state == StudyState.RECEIVING
    with session_scope(url) as session:
        assert complete_stable_studies(session, utcnow() + timedelta(minutes=1), "analysis") == []
    assert study(url, receiving).state == StudyState.CANCELLED
    with session_scope(url) as session:
        assert session.scalars(select(AnalysisJob)).all() == []
        actions = session.scalars(select(AuditEvent.action)).all()
        assert "study.cancelled" in actions

    # queued: the job ends cancelled, and a delivery of its message drafts nothing
    apply(url, message(accession_number="ACC600"))
    queued = ingest(url, accession="ACC600")
    (job_id,) = complete(url)
    result = apply(url, message("DC", accession_number="ACC600"))
    assert (result.outcome, result.studies) == ("discontinued", [queued])
    assert study(url, queued).state == StudyState.CANCELLED
    with session_scope(url) as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None and job.state == JobState.CANCELLED and job.last_error == "the order was discontinued"
        assert claim_job(session, job_id, max_attempts=3, now=utcnow()) == SkippedJob(job_id, "job already cancelled")


def test_a_job_whose_order_was_cancelled_before_it_started_is_cancelled_at_claim(url: str) -> None:
    study_id = ingest(url)
    (job_id,) = complete(url)
    apply(url, message())  # linked now; then cancelled behind the store's back (as a concurrent writer could)
    with session_scope(url) as session:
        order = session.scalars(select(Order)).one()
        order.status = OrderStatus.CANCELLED.value
    with session_scope(url) as session:
        skipped = claim_job(session, job_id, max_attempts=3, now=utcnow())
    assert skipped == SkippedJob(job_id, "the order was cancelled")
    assert study(url, study_id).state == StudyState.CANCELLED
    with session_scope(url) as session:
        assert session.get(AnalysisJob, job_id).state == JobState.CANCELLED  # type: ignore[union-attr]
        assert session.scalars(select(Report)).all() == []


def test_cancel_while_running_keeps_the_draft_withdrawn(url: str) -> None:
    apply(url, message())
    study_id = ingest(url)
    (job_id,) = complete(url)
    with session_scope(url) as session:
        assert not isinstance(claim_job(session, job_id, max_attempts=3, now=utcnow()), SkippedJob)
    assert apply(url, message("CA")).withdrawn_reports == []
    with session_scope(url) as session:
        report_id = record_draft(session, job_id, a_draft(), utcnow())
    with session_scope(url) as session:
        report = session.get(Report, report_id)
        assert report is not None and report.status == ReportStatus.WITHDRAWN
        assert session.get(AnalysisJob, job_id).state == JobState.CANCELLED  # type: ignore[union-attr]
    assert study(url, study_id).state == StudyState.CANCELLED


def test_cancel_after_drafting_withdraws_the_primary_draft(url: str) -> None:
    apply(url, message())
    study_id = ingest(url)
    report_id = drafted(url, study_id)
    assert study(url, study_id).state == StudyState.DRAFTED
    with session_scope(url) as session:  # a second opinion's draft is not the report of record: left alone
        opinion = session.get(Report, report_id)
        assert opinion is not None
        session.add(
            Report(
                **{
                    **{c: getattr(opinion, c) for c in ("study_id", "study_version", "model_id", "model_family")},
                    "model_revision": "other",
                    "prompt_version": "ct/v1",
                    "structured": True,
                    "findings": {},
                    "text": "",
                    "raw_output": "",
                    "evidence": [],
                    "timings": {},
                    "tokens_in": 0,
                    "tokens_out": 0,
                    "purpose": ReportPurpose.SECOND_OPINION,
                }
            )
        )
    result = apply(url, message("CA"))
    assert (result.outcome, result.studies, result.withdrawn_reports) == ("cancelled", [study_id], [report_id])
    with session_scope(url) as session:
        statuses = {row[0]: row[1] for row in session.execute(select(Report.purpose, Report.status))}
        assert statuses == {ReportPurpose.PRIMARY: ReportStatus.WITHDRAWN, ReportPurpose.SECOND_OPINION: "draft"}
    assert study(url, study_id).state == StudyState.CANCELLED
    assert apply(url, message("CA")).withdrawn_reports == []  # said once


def test_a_signed_report_is_not_withdrawn(url: str) -> None:
    apply(url, message())
    study_id = ingest(url)
    report_id = drafted(url, study_id)
    with session_scope(url) as session:
        session.get(Report, report_id).status = ReportStatus.SIGNED  # type: ignore[union-attr]
        session.get(Study, study_id).state = StudyState.SIGNED  # type: ignore[union-attr]
    assert apply(url, message("CA")).withdrawn_reports == []
    assert study(url, study_id).state == StudyState.SIGNED


def test_a_late_instance_of_a_cancelled_study_is_cancelled_again(url: str) -> None:
    apply(url, message())
    uid = generate_uid()
    study_id = ingest(url, study_uid=uid)
    complete(url)
    apply(url, message("CA"))
    ingest(url, study_uid=uid)  # a late arrival: a new study version, receiving again
    row = study(url, study_id)
    assert row.state == StudyState.RECEIVING and row.version == 2
    assert complete(url) == []
    assert study(url, study_id).state == StudyState.CANCELLED
