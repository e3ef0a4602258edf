"""Retention: which studies go, the purge's steps (a crash between them finished next time), and its CLI."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from integration.config import Settings, install_settings
from integration.purge import PurgeTotals, finish, mark_eligible, plan, purge
from integration.retention_settings import RetentionPolicy, policy_for
from integration.store.retention_tables import PurgeScope, StudyPurge
from integration.store.session import session_scope
from integration.store.tables import (
    ROLE_PRIOR,
    AuditEvent,
    Instance,
    ReportStatus,
    Series,
    Site,
    Study,
    StudyPrior,
    StudyState,
    utcnow,
)
from tests.support.report_rows import reading_revision, report_row

NOW = utcnow()
OLD = NOW - timedelta(days=40)


def _settings(url: str, tmp_path: Path, policies: list[RetentionPolicy]) -> Settings:
    return Settings(database_url=url, data_dir=tmp_path / "data", retention=policies)


def add_study(
    settings: Settings,
    uid: str,
    *,
    state: StudyState = StudyState.SIGNED,
    report: ReportStatus | None = ReportStatus.SIGNED,
    read_at: datetime = OLD,
    site: str | None = None,
    source: str = "dicom",
    role: str = "current",
    instances: int = 2,
) -> int:
    """A study with instance files on disk and, when ``report`` is given, a primary report read at ``read_at``."""
    with session_scope(settings.database_url) as session:
        site_id = None
        if site is not None:
            site_id = session.scalar(select(Site.id).where(Site.code == site))
            if site_id is None:
                site_row = Site(code=site, name=site)
                session.add(site_row)
                session.flush()
                site_id = site_row.id
        study = Study(
            study_uid=uid,
            state=state,
            calling_ae="CT1",
            first_received_at=OLD,
            last_received_at=OLD,
            stable_after=OLD,
            site_id=site_id,
            source=source,
            role=role,
        )
        session.add(study)
        session.flush()
        series = Series(series_uid=f"{uid}.1", study_id=study.id)
        session.add(series)
        session.flush()
        for n in range(instances):
            path = f"{uid}/{uid}.1/{uid}.1.{n}.dcm"
            file = settings.instance_root / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(b"DICM" * 10)
            session.add(
                Instance(
                    sop_instance_uid=f"{uid}.1.{n}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    series_id=series.id,
                    study_version=1,
                    storage_path=path,
                    size_bytes=40,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    calling_ae="CT1",
                    received_at=OLD,
                )
            )
        if report is not None:
            sr = f"reports/{uid}/{uid}.9.dcm"
            (settings.data_dir / sr).parent.mkdir(parents=True, exist_ok=True)
            (settings.data_dir / sr).write_bytes(b"SR")
            row = report_row(study, report, study_version=1, sr_path=sr, sr_sop_instance_uid=f"{uid}.9")
            session.add(row)
            session.flush()
            if report in (ReportStatus.SIGNED, ReportStatus.REJECTED):
                session.add(reading_revision(row, read_at))
        return study.id


def uids(candidates: list) -> set[str]:  # type: ignore[type-arg]
    return {c.study_uid for c in candidates}


def count(settings: Settings, table: type) -> int:
    with session_scope(settings.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_policies_pick_the_most_specific() -> None:
    every = RetentionPolicy(instance_days=30)
    tele = RetentionPolicy(site="TELE", instance_days=7)
    upload = RetentionPolicy(site="TELE", source="upload", instance_days=1)
    stow = RetentionPolicy(source="dicomweb", instance_days=3)
    policies = [every, tele, upload, stow]
    assert policy_for(policies, "TELE", "upload") is upload
    assert policy_for(policies, "TELE", "dicom") is tele
    assert policy_for(policies, "MAIN", "stow") is stow
    assert policy_for(policies, None, "dicom") is every
    assert policy_for([], "TELE", "dicom") is None
    with pytest.raises(ValueError, match="report_days"):
        RetentionPolicy(instance_days=10, report_days=5)
    with pytest.raises(ValueError, match="two retention policies"):
        Settings(retention=[every, RetentionPolicy(instance_days=3)])


def test_no_policy_keeps_everything(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, [])
    add_study(settings, "1.2.1")
    assert plan(settings, NOW) == []


def test_eligibility_excludes_live_and_unread_studies(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, [RetentionPolicy(instance_days=30)])
    add_study(settings, "1.2.1")  # signed 40 days ago
    add_study(settings, "1.2.2", state=StudyState.DRAFTED, report=ReportStatus.REJECTED)
    add_study(settings, "1.2.3", read_at=NOW - timedelta(days=5))  # too recent
    for n, state in enumerate(
        (StudyState.RECEIVING, StudyState.STABLE, StudyState.QUEUED, StudyState.RUNNING, StudyState.HELD), 10
    ):
        add_study(settings, f"1.2.{n}", state=state)  # a late instance made it live again
    add_study(settings, "1.2.20", state=StudyState.DRAFTED, report=ReportStatus.DRAFT)  # awaiting review
    add_study(settings, "1.2.21", state=StudyState.FAILED, report=None)  # never read
    assert uids(plan(settings, NOW)) == {"1.2.1", "1.2.2"}
    assert {c.scope for c in plan(settings, NOW)} == {PurgeScope.INSTANCES}


def test_policy_per_site_and_source_and_report_days(url: str, tmp_path: Path) -> None:
    policies = [
        RetentionPolicy(site="TELE", source="upload", instance_days=7, report_days=20),
        RetentionPolicy(site="MAIN", instance_days=60),
    ]
    settings = _settings(url, tmp_path, policies)
    add_study(settings, "1.3.1", site="TELE", source="upload")  # 40 > 20: all goes
    add_study(settings, "1.3.2", site="TELE", source="dicom")  # no policy for it
    add_study(settings, "1.3.3", site="MAIN")  # 40 < 60
    add_study(settings, "1.3.4", site="MAIN", read_at=NOW - timedelta(days=61))
    got = {c.study_uid: c.scope for c in plan(settings, NOW)}
    assert got == {"1.3.1": PurgeScope.STUDY, "1.3.4": PurgeScope.INSTANCES}


def test_priors_go_with_their_current_study(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, [RetentionPolicy(instance_days=30)])
    done = add_study(settings, "1.4.1")
    live = add_study(settings, "1.4.2", state=StudyState.DRAFTED, report=ReportStatus.DRAFT)
    prior_a = add_study(settings, "1.4.8", role=ROLE_PRIOR, state=StudyState.RECEIVING, report=None)
    prior_b = add_study(settings, "1.4.9", role=ROLE_PRIOR, state=StudyState.RECEIVING, report=None)
    with session_scope(settings.database_url) as session:
        session.add(
            StudyPrior(study_id=done, prior_study_id=prior_a, prior_study_uid="1.4.8", source="local", state="ready")
        )
        session.add(
            StudyPrior(study_id=done, prior_study_id=prior_b, prior_study_uid="1.4.9", source="local", state="ready")
        )
        session.add(
            StudyPrior(study_id=live, prior_study_id=prior_b, prior_study_uid="1.4.9", source="local", state="ready")
        )
    # prior_b is still a prior of a study awaiting review
    assert uids(plan(settings, NOW)) == {"1.4.1", "1.4.8"}


def test_dry_run_changes_nothing_and_purge_removes_rows_and_files(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, [RetentionPolicy(instance_days=30, report_days=35)])
    add_study(settings, "1.5.1")
    kept = add_study(settings, "1.5.2", read_at=NOW - timedelta(days=31))
    install_settings(settings)
    from worker.cli import app

    result = CliRunner().invoke(app, ["purge", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1.5.1" in result.output and "2 studies" in result.output
    assert count(settings, Instance) == 4 and count(settings, StudyPurge) == 0
    assert (settings.instance_root / "1.5.1").is_dir()

    result = CliRunner().invoke(app, ["purge"])
    assert result.exit_code == 0, result.output
    assert "purged 2 studies (1 whole), 4 instances" in result.output
    assert not (settings.instance_root / "1.5.1").exists() and not (settings.data_dir / "reports/1.5.1").exists()
    assert not (settings.instance_root / "1.5.2").exists()
    assert (settings.data_dir / "reports/1.5.2/1.5.2.9.dcm").exists()  # the report outlives the images
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(Study.study_uid)).all() == ["1.5.2"]
        assert session.get(Study, kept) is not None and count(settings, Instance) == 0
        events = {e.action: e.detail for e in session.scalars(select(AuditEvent))}
    assert events["retention.purge"] == {
        "studies": 2,
        "whole_studies": 1,
        "instances": 4,
        "bytes": 162,
        "report_files": 1,
        "resumed": 0,
        "called_off": 0,
    }
    assert "retention.purged" in events
    assert "1.5" not in str(events["retention.purge"])  # counts only


def test_a_purge_stopped_between_steps_is_finished_next_time(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, [RetentionPolicy(instance_days=30)])
    add_study(settings, "1.6.1")
    assert mark_eligible(settings, NOW) == 1  # step 1 committed, then a crash
    # a crash inside step 2 after one file went: the rows were rolled back, the mark stays
    (settings.instance_root / "1.6.1/1.6.1.1/1.6.1.1.0.dcm").unlink()
    totals = purge(settings, NOW)
    assert totals.resumed == 1 and totals.studies == 1 and totals.instances == 2
    assert count(settings, StudyPurge) == 0 and count(settings, Instance) == 0
    assert not (settings.instance_root / "1.6.1").exists()


def test_an_instance_received_after_the_mark_calls_the_purge_off(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, [RetentionPolicy(instance_days=30)])
    study_id = add_study(settings, "1.7.1")
    mark_eligible(settings, NOW - timedelta(seconds=5))
    with session_scope(settings.database_url) as session:  # what the intake does with a late arrival
        study = session.get(Study, study_id)
        assert study is not None
        study.version, study.state, study.last_received_at = 2, StudyState.RECEIVING, NOW
        series = session.scalars(select(Series)).one()
        session.add(
            Instance(
                sop_instance_uid="1.7.1.1.5",
                sop_class_uid="1.2",
                series_id=series.id,
                study_version=2,
                storage_path="1.7.1/1.7.1.1/1.7.1.1.5.dcm",
                size_bytes=1,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                calling_ae="CT1",
                received_at=NOW,
            )
        )
    (settings.instance_root / "1.7.1/1.7.1.1/1.7.1.1.5.dcm").write_bytes(b"x")
    with session_scope(settings.database_url) as session:
        purge_id = session.scalars(select(StudyPurge.id)).one()
    totals = PurgeTotals()
    finish(settings, purge_id, totals)
    assert totals.called_off == 1 and totals.studies == 0
    assert count(settings, Instance) == 3 and count(settings, StudyPurge) == 0
    assert len(list((settings.instance_root / "1.7.1/1.7.1.1").iterdir())) == 3
    assert plan(settings, NOW) == []  # receiving again: not eligible


def test_purge_without_policies_says_so(url: str, tmp_path: Path) -> None:
    install_settings(_settings(url, tmp_path, []))
    from worker.cli import app

    result = CliRunner().invoke(app, ["purge"])
    assert result.exit_code == 0 and "no retention policy" in result.output
    assert CliRunner().invoke(app, ["purge", "--help"]).exit_code == 0
