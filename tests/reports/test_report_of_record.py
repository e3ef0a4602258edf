"""One report of record per study: a second opinion is never signed, a study is never signed twice.

Checked at the signing function (a clear refusal, no SR file left behind) and in the database itself (a
CHECK constraint and a partial unique index from migration 0007), on SQLite and PostgreSQL.  Signing the
report of record again is an amendment: the next version of the same report, referencing the last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.exc import IntegrityError

from integration.config import Settings
from integration.reports.drafts import sign_report
from integration.reports.sr import read_sr
from integration.samples import write_ct_series
from integration.store import migrate
from integration.store.revisions import NotReportOfRecord, report_of_record
from integration.store.session import session_scope
from integration.store.tables import Report, ReportPurpose, ReportRevision, ReportStatus
from tests.reports.test_signing import add_report, evidence_of, settings, store_study

__all__ = ["settings"]  # the fixture: SQLite and PostgreSQL


def second_report(settings: Settings, study_id: int, like: int, purpose: ReportPurpose) -> int:
    """Another report of the same study version (another prompt), with the given purpose."""
    with session_scope(settings.database_url) as session:
        model = session.get(Report, like)
        assert model is not None
        columns = {c.key: getattr(model, c.key) for c in Report.__table__.columns if c.key != "id"}
        report = Report(**{**columns, "prompt_version": "general/v1", "purpose": purpose})
        session.add(report)
        session.commit()
        return int(report.id)


@pytest.fixture
def study(settings: Settings, tmp_path: Path) -> tuple[int, int, list[dict[str, Any]]]:
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 2, rows=16, columns=16))
    evidence = evidence_of(headers)
    return study_id, add_report(settings, study_id, evidence), evidence


def sr_files(settings: Settings) -> set[Path]:
    return set((settings.data_dir / "reports").rglob("*.dcm")) if (settings.data_dir / "reports").exists() else set()


def test_a_second_opinion_is_never_signed(settings: Settings, study: tuple[int, int, list[dict[str, Any]]]) -> None:
    study_id, primary, _ = study
    opinion = second_report(settings, study_id, primary, ReportPurpose.SECOND_OPINION)
    with session_scope(settings.database_url) as session:
        assert report_of_record(session, study_id) == primary
    before = sr_files(settings)
    with pytest.raises(NotReportOfRecord, match=rf"report {opinion} is a second opinion.*report {primary}"):
        sign_report(settings, opinion, author="Doe^Jane", organization="X")
    assert sr_files(settings) == before  # refused before any SR is written
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(Report.status).where(Report.id == opinion)) is ReportStatus.DRAFT
        assert session.scalars(select(ReportRevision).where(ReportRevision.report_id == opinion)).all() == []
        # the database refuses it too, whatever code path tries
        with pytest.raises(IntegrityError):
            session.execute(update(Report).where(Report.id == opinion).values(status=ReportStatus.SIGNED))
            session.flush()


def test_a_study_has_one_signed_report_and_signing_again_amends_it(
    settings: Settings, study: tuple[int, int, list[dict[str, Any]]]
) -> None:
    study_id, primary, _ = study
    other = second_report(settings, study_id, primary, ReportPurpose.PRIMARY)
    first = sign_report(settings, primary, author="Doe^Jane", organization="X")
    before = sr_files(settings)
    with pytest.raises(NotReportOfRecord, match=rf"already has a signed report of record \(report {primary}\)"):
        sign_report(settings, other, author="Roe^Richard", organization="X")
    assert sr_files(settings) == before  # nothing written for the refused signature
    with session_scope(settings.database_url) as session:
        assert report_of_record(session, study_id) == primary
        with pytest.raises(IntegrityError):
            session.execute(update(Report).where(Report.id == other).values(status=ReportStatus.SIGNED))
            session.flush()
    # an amendment: version 3 of the same report, its SR referencing version 2's
    amended = sign_report(settings, primary, author="Doe^Jane", organization="X", impression="Amended: no nodule.")
    with session_scope(settings.database_url) as session:
        versions = {r.id: r for r in session.scalars(select(ReportRevision).where(ReportRevision.report_id == primary))}
        assert (versions[first].version, versions[amended].version) == (2, 3)
        v2_uid, v3_path = versions[first].sr_sop_instance_uid, versions[amended].sr_path
        signed = session.scalars(select(Report.id).where(Report.status == ReportStatus.SIGNED)).all()
    assert signed == [primary]
    assert v3_path is not None
    reading = read_sr(pydicom.dcmread(settings.data_dir / v3_path))
    assert v2_uid in reading.predecessors


def test_the_upgrade_stops_on_parallel_finals_already_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    migrate.upgrade(url, "0006")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO studies (id, study_uid, state, version, calling_ae, first_received_at,"
                    " last_received_at, stable_after, updated_at, priority, source)"
                    " VALUES (7, '1.2.3', 'signed', 1, 'CT1', :t, :t, :t, :t, 'routine', 'dicom')"
                ),
                {"t": "2026-01-01 00:00:00"},
            )
            for report_id, prompt in ((11, "mr/v1"), (13, "general/v1")):
                connection.execute(
                    text(
                        "INSERT INTO reports (id, study_id, study_version, status, ai_generated, verification,"
                        " model_id, model_revision, model_family, prompt_version, structured, findings, text,"
                        " raw_output, evidence, timings, tokens_in, tokens_out, created_at)"
                        " VALUES (:id, 7, 1, 'signed', 1, 'UNVERIFIED', 'm', 'r', 'llava', :prompt, 1, '{}', '',"
                        " '', '[]', '{}', 0, 0, :t)"
                    ),
                    {"id": report_id, "prompt": prompt, "t": "2026-01-01 00:00:00"},
                )
    finally:
        engine.dispose()
    with pytest.raises(RuntimeError, match=r"more than one signed report \(study ids \[7\]\)"):
        migrate.upgrade(url)
    assert migrate.current_revision(url) == "0006"
