"""Analysis jobs as the worker sees them: claims, the attempt cap, idempotent drafts, supersession."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from integration.store.migrate import upgrade
from integration.store.reports import (
    ClaimedJob,
    DraftRecord,
    SkippedJob,
    claim_job,
    fail_job,
    instance_files,
    record_draft,
)
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, Instance, JobState, Report, Series, Study, StudyState, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'reports.sqlite'}"
        upgrade(database)
        yield database
    else:
        yield request.getfixturevalue("migrated_postgres_url")


def queued_study(url: str, version: int = 1) -> int:
    now = utcnow()
    with session_scope(url) as session:
        study = Study(
            study_uid="1.2.3.4",
            state=StudyState.QUEUED,
            version=version,
            calling_ae="CT1",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
        )
        session.add(study)
        session.flush()
        series = Series(series_uid="1.2.3.4.1", study_id=study.id, modality="CT", body_part="CHEST")
        session.add(series)
        session.flush()
        for number, instance_version in enumerate([1, 1, 2], start=1):
            session.add(
                Instance(
                    sop_instance_uid=f"1.2.3.4.1.{number}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    series_id=series.id,
                    study_version=instance_version,
                    storage_path=f"a/b/{number}.dcm",
                    size_bytes=10,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    calling_ae="CT1",
                    received_at=now,
                )
            )
        job = AnalysisJob(study_id=study.id, study_version=version, queue="analysis", state=JobState.QUEUED)
        session.add(job)
        session.flush()
        return job.id


def a_draft(prompt: str = "ct-chest/v1") -> DraftRecord:
    return DraftRecord(
        model_id="smoke/llava",
        model_revision="abc123",
        model_family="llava",
        prompt_version=prompt,
        structured=True,
        findings={"findings": [{"text": "Normal", "images": [1]}]},
        text="AI-generated draft, not verified by a radiologist.\n...",
        raw_output="{}",
        evidence=[{"image": 1, "sop_instance_uid": "1.2.3.4.1.1", "frame": 1}],
        timings={"generate_s": 1.0},
        tokens_in=100,
        tokens_out=20,
    )


def states(url: str, job_id: int) -> tuple[str, str, int]:
    with session_scope(url) as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None
        study = session.get(Study, job.study_id)
        assert study is not None
        return study.state.value, job.state.value, job.attempts


def test_claim_record_and_redelivery_make_exactly_one_draft(url: str) -> None:
    job_id = queued_study(url)
    with session_scope(url) as session:
        claimed = claim_job(session, job_id, max_attempts=3, now=utcnow())
    assert isinstance(claimed, ClaimedJob) and claimed.attempt == 1 and claimed.calling_ae == "CT1"
    assert states(url, job_id) == ("running", "running", 1)
    with session_scope(url) as session:
        first = record_draft(session, job_id, a_draft(), utcnow())
    with session_scope(url) as session:  # a redelivered task that got this far again
        second = record_draft(session, job_id, a_draft(), utcnow())
    assert first == second
    assert states(url, job_id) == ("drafted", "done", 1)
    with session_scope(url) as session:
        assert session.scalar(select(func.count(Report.id))) == 1
        report = session.get(Report, first)
        assert report is not None
        assert (report.status.value, report.ai_generated, report.verification) == ("draft", True, "UNVERIFIED")
        again = claim_job(session, job_id, max_attempts=3, now=utcnow())
    assert again == SkippedJob(job_id, "job already done")


def test_a_job_that_keeps_losing_its_worker_ends_failed_with_the_reason(url: str) -> None:
    job_id = queued_study(url)
    for attempt in (1, 2, 3):  # each delivery claims; the worker "dies" before finishing
        with session_scope(url) as session:
            claimed = claim_job(session, job_id, max_attempts=3, now=utcnow())
        assert isinstance(claimed, ClaimedJob) and claimed.attempt == attempt
    with session_scope(url) as session:
        fourth = claim_job(session, job_id, max_attempts=3, now=utcnow())
    assert isinstance(fourth, SkippedJob) and fourth.reason.startswith("gave up after 3 attempts")
    assert "worker was lost" in fourth.reason
    assert states(url, job_id) == ("failed", "failed", 4)


def test_fail_job_keeps_the_reason(url: str) -> None:
    job_id = queued_study(url)
    with session_scope(url) as session:
        claim_job(session, job_id, max_attempts=3, now=utcnow())
        fail_job(session, job_id, "no image for the model in this study", utcnow())
    assert states(url, job_id)[:2] == ("failed", "failed")
    with session_scope(url) as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None and job.last_error == "no image for the model in this study"


def test_a_job_superseded_while_running_keeps_its_draft_as_superseded(url: str) -> None:
    job_id = queued_study(url)
    with session_scope(url) as session:
        claim_job(session, job_id, max_attempts=3, now=utcnow())
    with session_scope(url) as session:  # a late instance arrived: new version, old job superseded
        job = session.get(AnalysisJob, job_id)
        assert job is not None
        study = session.get(Study, job.study_id)
        assert study is not None
        study.version, study.state = 2, StudyState.RECEIVING
        job.state = JobState.SUPERSEDED
    with session_scope(url) as session:
        report_id = record_draft(session, job_id, a_draft(), utcnow())
        report = session.get(Report, report_id)
        assert report is not None and report.status.value == "superseded"
    assert states(url, job_id)[:2] == ("receiving", "superseded")


def test_a_new_version_draft_supersedes_the_older_draft(url: str) -> None:
    job_id = queued_study(url)
    with session_scope(url) as session:
        claim_job(session, job_id, max_attempts=3, now=utcnow())
        old = record_draft(session, job_id, a_draft(), utcnow())
    with session_scope(url) as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None
        study = session.get(Study, job.study_id)
        assert study is not None
        study.version, study.state = 2, StudyState.QUEUED
        newer = AnalysisJob(study_id=study.id, study_version=2, queue="analysis", created_at=utcnow() + timedelta(1))
        session.add(newer)
        session.flush()
        newer_id = newer.id
    with session_scope(url) as session:
        claimed = claim_job(session, newer_id, max_attempts=3, now=utcnow())
        assert isinstance(claimed, ClaimedJob)
        assert [f.sop_instance_uid for f in instance_files(session, claimed.study_id, 1)] == [
            "1.2.3.4.1.1",
            "1.2.3.4.1.2",
        ]
        assert len(instance_files(session, claimed.study_id, 2)) == 3
        new = record_draft(session, newer_id, a_draft(), utcnow())
    with session_scope(url) as session:
        statuses = {r.id: r.status.value for r in session.scalars(select(Report))}
    assert statuses == {old: "superseded", new: "draft"}
