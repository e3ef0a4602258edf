"""Study assembly on real parts: PostgreSQL + Redis, and the embedded SQLite + file-system broker."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.intake.header import InstanceHeader
from integration.queue import ANALYZE_STUDY
from integration.store.ingest import Conflict, Receipt, record_instance
from integration.store.migrate import ensure_schema
from integration.store.session import engine_for, session_scope
from integration.store.tables import AnalysisJob, AuditEvent, Instance, JobState, Series, Study, StudyState, utcnow
from tests.support.records import decode_message, queued_messages
from tests.support.services import free_port

CALLING_AE = "CT1"


@pytest.fixture
def settings(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=migrated_postgres_url,
        broker_url=redis_url,
        data_dir=tmp_path,
        stable_seconds=2,
        calling_aes={CALLING_AE: {}},
    )


def a_header(study_uid: str, series_uid: str | None = None, number: int = 1) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=generate_uid(),
        study_uid=study_uid,
        series_uid=series_uid or generate_uid(),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        modality="CT",
        series_number=1,
        instance_number=number,
    )


def record(settings: Settings, header: InstanceHeader, received_at: datetime) -> Receipt:
    with engine_for(settings.database_url).connect() as connection:
        return record_instance(
            connection,
            header,
            storage_path=f"{header.study_uid}/{header.series_uid}/{header.sop_instance_uid}.dcm",
            size_bytes=1234,
            calling_ae=CALLING_AE,
            received_at=received_at,
            stable_seconds=settings.stable_seconds_for(CALLING_AE),
        )


def past(seconds: float = 60) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def study_row(settings: Settings, study_uid: str) -> tuple[StudyState, int]:
    with session_scope(settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        return study.state, study.version


def jobs(settings: Settings) -> list[tuple[int, int, JobState, int]]:
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(AnalysisJob.id, AnalysisJob.study_version, AnalysisJob.state, AnalysisJob.send_count).order_by(
                AnalysisJob.id
            )
        ).all()
        return [tuple(row) for row in rows]  # type: ignore[misc]


def counts(settings: Settings) -> tuple[int, int, int]:
    with session_scope(settings.database_url) as session:
        return (
            session.scalar(select(func.count()).select_from(Study)) or 0,
            session.scalar(select(func.count()).select_from(Series)) or 0,
            session.scalar(select(func.count()).select_from(Instance)) or 0,
        )


def assert_is_analyze_message(message: dict[str, Any], job_id: int) -> None:
    assert message["headers"]["task"] == ANALYZE_STUDY
    assert message["args"] == [job_id]
    assert message["kwargs"] == {}


def test_stable_study_is_queued_once(settings: Settings) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    for number in range(1, 4):
        receipt = record(settings, a_header(study_uid, series_uid, number), past())
        assert receipt.duplicate is False
        assert receipt.study_version == 1
    assert study_row(settings, study_uid) == (StudyState.RECEIVING, 1)
    assert counts(settings) == (1, 1, 3)

    assembler = StudyAssembler(settings)
    result = assembler.run_once()
    assert (result.jobs_created, result.sent, result.send_failures) == (1, 1, 0)
    [(job_id, version, state, sends)] = jobs(settings)
    assert (version, state, sends) == (1, JobState.QUEUED, 1)
    assert study_row(settings, study_uid) == (StudyState.QUEUED, 1)
    [message] = queued_messages(settings.broker_url)
    assert_is_analyze_message(message, job_id)
    assert message["headers"]["id"] == f"analysis-job-{job_id}-1"
    with session_scope(settings.database_url) as session:
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.object_id == study_uid)).all()
    assert actions == ["study.queued"]

    again = StudyAssembler(settings).run_once()  # a second pass (also a restarted listener) adds nothing
    assert (again.jobs_created, again.sent) == (0, 0)
    assert len(jobs(settings)) == 1
    assert len(queued_messages(settings.broker_url)) == 1


def test_a_study_still_receiving_is_not_queued(settings: Settings) -> None:
    study_uid = generate_uid()
    record(settings, a_header(study_uid), utcnow())  # stable only after 2 s
    assembler = StudyAssembler(settings)
    assert assembler.run_once().jobs_created == 0
    assert study_row(settings, study_uid) == (StudyState.RECEIVING, 1)
    assert queued_messages(settings.broker_url) == []
    time.sleep(2.2)
    assert assembler.run_once().jobs_created == 1
    assert study_row(settings, study_uid) == (StudyState.QUEUED, 1)


def test_per_ae_stable_seconds_decide(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=migrated_postgres_url,
        broker_url=redis_url,
        data_dir=tmp_path,
        stable_seconds=3600,
        calling_aes={CALLING_AE: {"stable_seconds": 1}},
    )
    study_uid = generate_uid()
    record(settings, a_header(study_uid), past(5))
    assert StudyAssembler(settings).run_once().jobs_created == 1


def test_late_instance_makes_a_new_version_and_supersedes_the_queued_job(settings: Settings) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    record(settings, a_header(study_uid, series_uid, 1), past())
    assembler = StudyAssembler(settings)
    assembler.run_once()
    [(first_job, _, _, _)] = jobs(settings)
    assert study_row(settings, study_uid) == (StudyState.QUEUED, 1)

    late = record(settings, a_header(study_uid, generate_uid(), 1), utcnow())
    assert (late.study_version, late.duplicate) == (2, False)
    assert study_row(settings, study_uid) == (StudyState.RECEIVING, 2)
    more = record(settings, a_header(study_uid, series_uid, 2), utcnow())  # while receiving: same version
    assert more.study_version == 2
    assert assembler.run_once().jobs_created == 0  # not stable yet
    assert study_row(settings, study_uid) == (StudyState.RECEIVING, 2)

    time.sleep(2.2)
    result = assembler.run_once()
    assert (result.jobs_created, result.sent) == (1, 1)
    (job1, v1, state1, _), (job2, v2, state2, sends2) = jobs(settings)
    assert (job1, v1, state1) == (first_job, 1, JobState.SUPERSEDED)
    assert (v2, state2, sends2) == (2, JobState.QUEUED, 1)
    assert study_row(settings, study_uid) == (StudyState.QUEUED, 2)
    messages = queued_messages(settings.broker_url)
    assert sorted(m["args"][0] for m in messages) == [job1, job2]
    with session_scope(settings.database_url) as session:
        versions = session.scalars(select(Instance.study_version).order_by(Instance.id)).all()
    assert versions == [1, 2, 2]


def test_duplicate_instance_changes_nothing(settings: Settings) -> None:
    study_uid = generate_uid()
    header = a_header(study_uid)
    record(settings, header, past())
    StudyAssembler(settings).run_once()
    before = (study_row(settings, study_uid), counts(settings), jobs(settings))
    with session_scope(settings.database_url) as session:
        stable_after = session.scalars(select(Study.stable_after)).one()

    receipt = record(settings, header, utcnow())
    assert receipt.duplicate is True
    assert (study_row(settings, study_uid), counts(settings), jobs(settings)) == before
    assert study_row(settings, study_uid) == (StudyState.QUEUED, 1)
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(Study.stable_after)).one() == stable_after


def test_duplicate_while_receiving_adds_nothing_but_restarts_the_timer(settings: Settings) -> None:
    study_uid = generate_uid()
    header = a_header(study_uid)
    first = record(settings, header, past())
    receipt = record(settings, header, utcnow())
    assert receipt == Receipt(first.study_id, 1, duplicate=True)
    assert counts(settings) == (1, 1, 1)
    assert study_row(settings, study_uid) == (StudyState.RECEIVING, 1)
    assert StudyAssembler(settings).run_once().jobs_created == 0  # the sender is still sending
    time.sleep(settings.stable_seconds_for(CALLING_AE) + 0.5)
    assert StudyAssembler(settings).run_once().jobs_created == 1


@pytest.fixture(params=["postgresql", "sqlite"])
def either_database(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Settings:
    """PostgreSQL (one statement) and SQLite (step by step): the two ways an instance is recorded."""
    if request.param == "postgresql":
        return settings
    url = f"sqlite:///{tmp_path / 'embedded.sqlite'}"
    ensure_schema(url)
    return settings.model_copy(update={"database_url": url})


def test_an_instance_of_another_studys_series_or_sop_instance_is_a_conflict_that_writes_nothing(
    either_database: Settings,
) -> None:
    settings = either_database
    study_uid = generate_uid()
    victim = a_header(study_uid)
    first = record(settings, victim, past())
    before = counts(settings)
    borrowed_series = a_header(generate_uid(), series_uid=victim.series_uid)
    borrowed_instance = dataclasses.replace(a_header(generate_uid()), sop_instance_uid=victim.sop_instance_uid)

    series_receipt = record(settings, borrowed_series, utcnow())
    instance_receipt = record(settings, borrowed_instance, utcnow())

    assert (series_receipt.conflict, series_receipt.other_study_id) == (Conflict.SERIES, first.study_id)
    assert (instance_receipt.conflict, instance_receipt.other_study_id) == (Conflict.INSTANCE, first.study_id)
    assert not series_receipt.added and not instance_receipt.added
    assert counts(settings) == before  # no placeholder study, series or instance
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(Study.study_uid)).all() == [study_uid]


def test_reconciler_resends_a_lost_message(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=migrated_postgres_url,
        broker_url=redis_url,
        data_dir=tmp_path,
        stable_seconds=1,
        resend_after_seconds=0.5,
    )
    study_uid = generate_uid()
    record(settings, a_header(study_uid), past())
    assembler = StudyAssembler(settings)
    assert assembler.run_once().sent == 1
    [(job_id, _, _, sends)] = jobs(settings)
    assert sends == 1

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()  # the broker lost its queue
    finally:
        client.close()
    assert queued_messages(redis_url) == []

    time.sleep(0.7)
    result = assembler.run_once()
    assert (result.jobs_created, result.sent) == (0, 1)
    [message] = queued_messages(redis_url)
    assert_is_analyze_message(message, job_id)
    assert message["headers"]["id"] == f"analysis-job-{job_id}-2"
    [(_, _, state, sends)] = jobs(settings)
    assert (state, sends) == (JobState.QUEUED, 2)
    assert study_row(settings, study_uid) == (StudyState.QUEUED, 1)


def test_an_unreachable_broker_keeps_the_job_for_later(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=migrated_postgres_url,
        broker_url=f"redis://127.0.0.1:{free_port()}/15",  # nothing listens there
        data_dir=tmp_path,
        stable_seconds=1,
    )
    study_uid = generate_uid()
    record(settings, a_header(study_uid), past())
    result = StudyAssembler(settings).run_once()
    assert (result.jobs_created, result.sent, result.send_failures) == (1, 0, 1)
    [(job_id, _, state, sends)] = jobs(settings)
    assert (state, sends) == (JobState.QUEUED, 0)
    assert study_row(settings, study_uid) == (StudyState.STABLE, 1)

    working = settings.model_copy(update={"broker_url": redis_url})
    assert StudyAssembler(working).run_once().sent == 1  # the next pass with a broker sends it
    [message] = queued_messages(redis_url)
    assert_is_analyze_message(message, job_id)
    assert study_row(settings, study_uid) == (StudyState.QUEUED, 1)


def test_embedded_defaults_queue_to_the_file_system(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, stable_seconds=1)
    assert settings.database_url.startswith("sqlite:///")
    assert settings.broker_url == "filesystem://"
    ensure_schema(settings.database_url)
    study_uid = generate_uid()
    for number in (1, 2):
        assert record(settings, a_header(study_uid, number=number), past()).study_version == 1
    duplicate_probe = a_header(study_uid)
    record(settings, duplicate_probe, past())
    assert record(settings, duplicate_probe, past()).duplicate is True

    result = StudyAssembler(settings).run_once()
    assert (result.jobs_created, result.sent) == (1, 1)
    [(job_id, version, state, sends)] = jobs(settings)
    assert (version, state, sends) == (1, JobState.QUEUED, 1)
    assert study_row(settings, study_uid) == (StudyState.QUEUED, 1)
    files = sorted((tmp_path / "broker" / "queue").iterdir())
    assert len(files) == 1
    assert_is_analyze_message(decode_message(files[0].read_bytes()), job_id)

    assert StudyAssembler(settings).run_once().jobs_created == 0
    assert len(list((tmp_path / "broker" / "queue").iterdir())) == 1

    late = record(settings, a_header(study_uid), past())
    assert late.study_version == 2
    assert study_row(settings, study_uid) == (StudyState.RECEIVING, 2)
    assert StudyAssembler(settings).run_once().jobs_created == 1
    assert [(v, s) for _, v, s, _ in jobs(settings)] == [(1, JobState.SUPERSEDED), (2, JobState.QUEUED)]
    assert len(list((tmp_path / "broker" / "queue").iterdir())) == 2


def test_reconciler_resends_an_overdue_pending_delivery_once(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    from integration.store.deliveries import PlannedDelivery, create_deliveries
    from integration.store.tables import Delivery, Report

    settings = Settings(
        database_url=migrated_postgres_url, broker_url=redis_url, data_dir=tmp_path, resend_after_seconds=0.5
    )
    now = utcnow()
    with session_scope(migrated_postgres_url) as session:
        study = Study(
            study_uid=generate_uid(),
            version=1,
            calling_ae="CT1",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
            state=StudyState.DRAFTED,
        )
        session.add(study)
        session.flush()
        report = Report(
            study_id=study.id, study_version=1, model_id="m", model_revision="r", model_family="llava",
            prompt_version="ct/v1", structured=True, findings={}, text="", raw_output="", evidence=[], timings={},
            tokens_in=0, tokens_out=0,
        )  # fmt: skip
        session.add(report)
        session.flush()
        report_id = report.id
    with session_scope(migrated_postgres_url) as session:
        [delivery_id] = create_deliveries(session, report_id, None, [PlannedDelivery("pacs", "sr")], now)
    assembler = StudyAssembler(settings)
    assert assembler.run_once().deliveries_resent == 0  # due now: its own message is still on its way
    time.sleep(0.7)
    assert assembler.run_once().deliveries_resent == 1  # overdue: the message was lost
    [message] = queued_messages(redis_url, "delivery")
    assert message["headers"]["task"] == "pacs_vlm.deliver" and message["args"] == [delivery_id]
    assert assembler.run_once().deliveries_resent == 0  # re-sent now: not again before the grace passes
    with session_scope(migrated_postgres_url) as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None and (delivery.state.value, delivery.attempts) == ("pending", 0)


def test_a_study_gets_the_site_of_its_calling_ae_when_it_becomes_stable(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    from integration.store.tables import Site

    with session_scope(migrated_postgres_url) as session:
        session.add(Site(code="NORTH", name="North hospital"))
    settings = Settings(
        database_url=migrated_postgres_url,
        broker_url=redis_url,
        data_dir=tmp_path,
        stable_seconds=2,
        calling_aes={CALLING_AE: {"site": "north"}, "OTHER": {"site": "NOWHERE"}},
    )
    study_uid = generate_uid()
    record(settings, a_header(study_uid), past())
    assert StudyAssembler(settings).run_once().jobs_created == 1
    with session_scope(migrated_postgres_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        site = session.get(Site, study.site_id) if study.site_id is not None else None
        assert site is not None and site.code == "NORTH"


def test_reconciler_resends_a_job_whose_worker_was_lost_past_the_hard_time_limit(
    settings: Settings, redis_url: str
) -> None:
    from integration.intake.assembly import LOST_WORKER_MARGIN_SECONDS
    from integration.store.reports import claim_job

    study_uid = generate_uid()
    record(settings, a_header(study_uid), past())
    assembler = StudyAssembler(settings)
    assert assembler.run_once().sent == 1
    [(job_id, _, _, _)] = jobs(settings)
    with session_scope(settings.database_url) as session:
        claim_job(session, job_id, max_attempts=3, now=utcnow())  # a worker started it ...
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()  # ... and its machine died with the message (no visibility redelivery for an hour)
    finally:
        client.close()
    assert assembler.run_once().sent == 0  # running within the time limit: left alone

    lost = settings.analysis_time_limit + LOST_WORKER_MARGIN_SECONDS + 1
    with session_scope(settings.database_url) as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None and job.state == JobState.RUNNING
        job.started_at = utcnow() - timedelta(seconds=lost)
        job.sent_at = utcnow() - timedelta(seconds=lost)
        session.commit()
    assert assembler.run_once().sent == 1
    [message] = queued_messages(redis_url)
    assert_is_analyze_message(message, job_id)
    assert assembler.run_once().sent == 0  # sent once, not on every pass
    with session_scope(settings.database_url) as session:
        again = claim_job(session, job_id, max_attempts=3, now=utcnow())
    assert getattr(again, "attempt", None) == 2  # the new delivery counts as the second attempt


def test_an_instance_of_another_patient_is_a_conflict_that_writes_nothing(either_database: Settings) -> None:
    settings = either_database
    study_uid = generate_uid()
    first = record(settings, dataclasses.replace(a_header(study_uid), patient_key="a" * 64), past())
    before = counts(settings)

    other = record(settings, dataclasses.replace(a_header(study_uid), patient_key="b" * 64), utcnow())
    unknown = record(settings, dataclasses.replace(a_header(study_uid), patient_key=None), utcnow())
    same = record(settings, dataclasses.replace(a_header(study_uid), patient_key="a" * 64), utcnow())

    assert (other.conflict, other.other_study_id) == (Conflict.PATIENT, first.study_id)
    assert unknown.conflict is Conflict.PATIENT
    assert same.added
    assert counts(settings) == (before[0], before[1] + 1, before[2] + 1)


def test_a_re_sent_instance_under_another_series_uid_adds_no_series_row(either_database: Settings) -> None:
    settings = either_database
    header = a_header(generate_uid())
    record(settings, header, past())
    before = counts(settings)
    receipt = record(settings, dataclasses.replace(header, series_uid=generate_uid()), utcnow())
    assert receipt.duplicate and receipt.conflict is None
    assert counts(settings) == before  # only the timer moved
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(Study.stable_after)).one() > utcnow()
