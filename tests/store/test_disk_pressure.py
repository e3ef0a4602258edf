"""Disk pressure: the oldest eligible studies go first, only eligible ones, before a write is refused; the
purge lock; the quota; and the row-derived counters of ``/metrics`` never go down when a purge deletes rows."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text

from integration.config import Settings
from integration.disk_pressure import PURGE_LOCK_KEY, PurgeLoop, purge_lock, relieving_intake
from integration.intake.outcome import Origin, Result
from integration.intake.space import StoreSpace, store_space
from integration.intake.storage import InstanceStore, StorageFull
from integration.purge import pressure_candidates, purge
from integration.retention_settings import RetentionPolicy
from integration.samples import pydicom_test_file
from integration.store.session import engine_for, session_scope
from integration.store.shadow_tables import ShadowOutcome
from integration.store.tables import (
    AuditEvent,
    Instance,
    Report,
    ReportPurpose,
    ReportRevision,
    ReportStatus,
    StudyState,
)
from integration.web.ops.metrics import metrics_registry
from integration.web.ops.purge_totals import counter_reader
from integration.web.ops.purged_added import COUNTING_GAUGES
from tests.store.test_retention import NOW, add_study, count

POLICY = [RetentionPolicy(instance_days=30, report_days=60)]
FILE = 40  # bytes of each instance file add_study writes


def _settings(url: str, tmp_path: Path, used: int, *, free: int = 100, **extra: object) -> Settings:
    """Settings whose quota leaves ``free`` bytes once ``used`` bytes are stored; the mark at 150 free bytes."""
    return Settings(
        database_url=url,
        data_dir=tmp_path / "data",
        retention=POLICY,
        min_free_bytes=100,
        purge_free_bytes=150,
        purge_hysteresis_bytes=0,
        storage_quota_bytes=used + free,
        **extra,  # type: ignore[arg-type]
    )


def _instances_of(settings: Settings, study_id: int) -> int:
    from integration.store.tables import Series

    with session_scope(settings.database_url) as session:
        return len(
            session.scalars(
                select(Instance.id).join(Series, Series.id == Instance.series_id).where(Series.study_id == study_id)
            ).all()
        )


def test_pressure_purges_the_study_read_longest_ago_until_the_mark(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, used=6 * FILE)
    newest = add_study(settings, "1.2.3.1", read_at=NOW - timedelta(days=31))
    oldest = add_study(settings, "1.2.3.2", read_at=NOW - timedelta(days=45))
    middle = add_study(settings, "1.2.3.3", read_at=NOW - timedelta(days=35))
    space = store_space(settings)
    assert space.free_bytes() == 100  # the quota, not the file system, is short
    assert [c.study_id for c in pressure_candidates(settings)] == [oldest, middle, newest]
    loop = PurgeLoop(settings, space, counter_reader(settings))
    assert loop.under_pressure()
    assert loop.relieve_pressure() == 1  # 80 bytes freed: 180 free, above the mark (150)
    assert not loop.under_pressure()
    assert (_instances_of(settings, oldest), _instances_of(settings, middle), _instances_of(settings, newest)) == (
        0,
        2,
        2,
    )
    assert not (settings.instance_root / "1.2.3.2").exists()
    with session_scope(settings.database_url) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "retention.purge")).one()
    assert event.detail is not None and event.detail["reason"] == "disk pressure"
    assert (event.detail["studies"], event.detail["instances"]) == (1, 2)


def test_only_eligible_studies_go_and_early_purging_is_a_choice(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recent = NOW - timedelta(days=1)  # read yesterday: not due under the policy
    used = 5 * 2 * FILE
    settings = _settings(url, tmp_path, used=used)
    read = add_study(settings, "1.2.4.1", read_at=recent)
    add_study(settings, "1.2.4.2", report=None)  # never read
    add_study(settings, "1.2.4.3", state=StudyState.RUNNING, report=None)
    add_study(settings, "1.2.4.4", report=ReportStatus.DRAFT)  # awaiting review
    add_study(settings, "1.2.4.5", state=StudyState.RECEIVING, report=None)
    loop = PurgeLoop(settings, store_space(settings), counter_reader(settings))
    with caplog.at_level(logging.ERROR, logger="integration.disk_pressure"):
        assert loop.relieve_pressure() == 0
    assert "no study eligible for purging" in caplog.text
    assert count(settings, Instance) == 10

    early = _settings(url, tmp_path, used=used, purge_early_under_pressure=True)
    loop = PurgeLoop(early, StoreSpace(early.instance_root, early.storage_quota_bytes), counter_reader(early))
    assert [c.study_id for c in pressure_candidates(early)] == [read]
    assert loop.relieve_pressure() == 1
    assert count(settings, Instance) == 8  # only the read study's instances went
    assert count(settings, ReportRevision) == 1  # and its report stayed


def test_a_write_purges_before_it_is_refused_and_is_refused_when_nothing_is_eligible(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, used=4 * FILE, free=120)
    add_study(settings, "1.2.5.1")
    add_study(settings, "1.2.5.2", report=None)  # never read: never purged
    store = InstanceStore(settings.instance_root, fsync=False, min_free_bytes=100, quota_bytes=4 * FILE + 120)
    store.relieve = PurgeLoop(settings, store.space, counter_reader(settings)).relieve
    store.make_room(10)  # 120 - 10 >= 100: no purge
    assert count(settings, Instance) == 4
    store.make_room(50)  # 110 - 50 < 100: the read study goes first, then it fits
    assert count(settings, Instance) == 2
    with pytest.raises(StorageFull, match="no study eligible for purging"):
        store.make_room(10_000)
    assert count(settings, Instance) == 2
    store.close()


def test_two_purges_never_run_at_once(migrated_postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=migrated_postgres_url, data_dir=tmp_path / "data", retention=POLICY)
    with engine_for(migrated_postgres_url).connect() as other_listener:
        assert other_listener.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PURGE_LOCK_KEY}).scalar()
        with purge_lock(settings) as held:
            assert not held
        loop = PurgeLoop(settings, store_space(settings), counter_reader(settings))
        assert loop.scheduled_purge() is None
        other_listener.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PURGE_LOCK_KEY})
    with purge_lock(settings) as held:
        assert held
        with purge_lock(settings) as again:  # another thread of this process
            assert not again


def test_the_quota_counts_what_the_store_holds(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"x" * 300)
    space = StoreSpace(root, quota_bytes=1000, recount_seconds=3600)
    assert space.free_bytes() == 700
    space.admitted(100)
    assert space.free_bytes() == 600
    space.freed(250)
    assert space.free_bytes() == 850
    assert space.recount() == 300  # counted from the files again
    assert StoreSpace(root).free_bytes() > 1000  # no quota: the file system's


def _kept_samples(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    exposition = generate_latest(metrics_registry(settings)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name.startswith("pacsvlm_")
        and (family.type in ("counter", "histogram") or family.name in COUNTING_GAUGES)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def add_shadow_outcome(settings: Settings, study_id: int) -> None:
    """A shadow draft of the study compared with its signed revision (as shadow mode measures it)."""
    with session_scope(settings.database_url) as session:
        primary = session.scalars(select(Report).where(Report.study_id == study_id)).one()
        revision = session.scalars(select(ReportRevision).where(ReportRevision.report_id == primary.id)).one()
        fields = {c: getattr(primary, c) for c in ("study_version", "model_family", "structured", "findings", "text")}
        fields |= {c: getattr(primary, c) for c in ("raw_output", "evidence", "timings", "tokens_in", "tokens_out")}
        shadow = Report(
            study_id=study_id,
            purpose=ReportPurpose.SHADOW,
            model_id="cand",
            model_revision="c1",
            prompt_version="p/v2",
            **fields,
        )
        session.add(shadow)
        session.flush()
        numbers = {"draft_findings": 2, "accepted": 1, "edited": 0, "rejected": 1, "added": 1, "edit_distance": 9}
        session.add(
            ShadowOutcome(
                report_id=shadow.id,
                revision_id=revision.id,
                model_id="cand",
                model_revision="c1",
                prompt_version="p/v2",
                text_similarity=0.5,
                **numbers,
            )
        )


def test_counters_do_not_go_down_when_a_purge_deletes_rows(migrated_postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=migrated_postgres_url, data_dir=tmp_path / "data", retention=POLICY)
    add_shadow_outcome(settings, add_study(settings, "1.2.6.1", read_at=NOW - timedelta(days=70)))  # all goes
    add_study(settings, "1.2.6.2", report=ReportStatus.REJECTED, read_at=NOW - timedelta(days=40))  # its images
    add_study(settings, "1.2.6.3", report=None)  # stays
    before = _kept_samples(settings)
    assert before[("pacsvlm_instances_received_total", ())] == 6
    assert before[("pacsvlm_reports_signed_total", ())] == 1
    shadow_labels = (("model_id", "cand"), ("model_revision", "c1"), ("prompt_version", "p/v2"))
    assert before[("pacsvlm_shadow_outcomes_total", shadow_labels)] == 1
    totals = purge(settings, NOW, measure=counter_reader(settings))
    assert (totals.studies, totals.instances) == (2, 4)
    assert count(settings, Instance) == 2 and count(settings, ReportRevision) == 1  # the rows did go
    after = _kept_samples(settings)
    assert {key: after.get(key, 0.0) for key in before} == before  # a sample of nothing at all may go
    purge(settings, NOW, measure=counter_reader(settings))  # nothing more to purge: nothing added twice
    again = _kept_samples(settings)
    assert {key: again.get(key, 0.0) for key in before} == before


def test_health_says_whether_anything_is_eligible_below_the_minimum(url: str, tmp_path: Path) -> None:
    from integration.web.ops.health import check_disk

    settings = _settings(url, tmp_path, used=2 * FILE, free=50)  # below min_free_bytes (100)
    add_study(settings, "1.2.7.1", report=None)  # never read
    outcome = check_disk(settings)
    assert not outcome.ok and "no study eligible for purging" in outcome.detail
    add_study(settings, "1.2.7.2")  # read long ago: eligible
    outcome = check_disk(settings)
    assert not outcome.ok and "1 studies eligible for purging" in outcome.detail


def test_the_loop_runs_the_scheduled_purge(url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=url,
        data_dir=tmp_path / "data",
        retention=POLICY,
        purge_check_seconds=0.05,
        purge_interval_minutes=0.001,
    )
    add_study(settings, "1.2.8.1")
    loop = PurgeLoop(settings, store_space(settings), counter_reader(settings))
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while count(settings, Instance) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        loop.stop()
    assert count(settings, Instance) == 0
    with session_scope(settings.database_url) as session:
        reasons = {(e.detail or {}).get("reason") for e in session.scalars(select(AuditEvent)).all()}
    assert "schedule" in reasons
    with session_scope(settings.database_url) as session:
        audited = session.scalar(select(func.count()).select_from(AuditEvent))
    loop = PurgeLoop(settings, store_space(settings), counter_reader(settings))
    loop.start()  # nothing left to purge: the scheduled runs leave no event
    time.sleep(0.5)
    loop.stop()
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == audited


def test_the_api_intake_purges_before_it_refuses_an_upload(url: str, tmp_path: Path) -> None:
    # The api process (STOW-RS, photos) runs no purge loop: its intake purges as the listener's C-STORE does.
    part10 = pydicom_test_file("CT_small.dcm").read_bytes()
    settings = _settings(url, tmp_path, used=8 * FILE, free=len(part10) + 50, fsync=False)  # too little
    add_study(settings, "1.2.9.1", instances=6)  # read long ago: eligible
    add_study(settings, "1.2.9.2", report=None)  # never read: kept
    intake = relieving_intake(settings, counter_reader(settings))
    try:
        assert relieving_intake(settings, counter_reader(settings)) is intake  # one relief per store
        origin = Origin(calling_ae="STOW", source="stow", site_id=None, stable_seconds=30.0)
        outcome = intake.store_part10(part10, origin)
        assert outcome.result is Result.STORED, outcome
        assert count(settings, Instance) == 3  # the read study's six went, the upload came
        with session_scope(settings.database_url) as session:
            reasons = [(e.detail or {}).get("reason") for e in session.scalars(select(AuditEvent)).all()]
        assert "disk pressure" in reasons
    finally:
        intake.close()
