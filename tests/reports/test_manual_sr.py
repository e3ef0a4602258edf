"""A report written by hand is signed like an AI draft, but none of its documents claims an AI author.

Why: IHE AI Results makes the device observer and TID 4019 say "an algorithm wrote this"; a radiologist's own
report must not carry them, nor "AI" wording in its series or text, nor key images of what a model saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from integration.config import Settings
from integration.reports.drafts import ensure_draft_sr, sign_report
from integration.reports.manual import MANUAL_MODEL_ID, ManualReportRefused, start_manual_report
from integration.reports.report_objects import ensure_signed_measurement
from integration.reports.review import reject_draft
from integration.reports.sr import read_sr
from integration.reports.sr_measurement import read_measurement_report
from integration.samples import write_ct_series
from integration.store.migrate import upgrade
from integration.store.revisions import report_of_record
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Report, ReportRevision, ReportStatus, Study, StudyState, utcnow
from integration.store.viewer_tables import ReportObject, ReportObjectKind
from tests.reports.test_signing import store_study
from tests.support.sr_tools import check_with_tools


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'pacs-vlm.sqlite'}"
    upgrade(url)
    return Settings(data_dir=data_dir, database_url=url)


@pytest.fixture
def failed_study(settings: Settings, tmp_path: Path) -> int:
    study_id, _ = store_study(settings, write_ct_series(tmp_path / "ct", 2, rows=16, columns=16), StudyState.FAILED)
    return study_id


def start(settings: Settings, study_id: int) -> int:
    with session_scope(settings.database_url) as session:
        study = session.get(Study, study_id)
        assert study is not None
        return start_manual_report(session, study, actor="jdoe", now=utcnow(), source="test")


def test_a_manual_report_is_the_report_of_record_and_is_audited(settings: Settings, failed_study: int) -> None:
    report_id = start(settings, failed_study)
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        assert (report.ai_generated, report.job_id, report.model_id) == (False, None, MANUAL_MODEL_ID)
        assert report.status == ReportStatus.DRAFT and report.findings["findings"] == []
        assert report_of_record(session, failed_study) == report_id
        study = session.get(Study, failed_study)
        assert study is not None and study.state == StudyState.DRAFTED
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "report.manual_start")).one()
        assert (event.actor, event.object_id) == ("jdoe", str(report_id))
    with pytest.raises(ManualReportRefused, match="draft of record"):
        start(settings, failed_study)


def test_a_second_manual_report_after_a_rejected_one_does_not_collide(settings: Settings, failed_study: int) -> None:
    first = start(settings, failed_study)
    reject_draft(settings, first, actor="jdoe", reason="started on the wrong study")
    second = start(settings, failed_study)
    assert second != first
    with session_scope(settings.database_url) as session:
        assert report_of_record(session, failed_study) == second


def signed_manual(settings: Settings, study_id: int) -> tuple[int, ReportRevision]:
    report_id = start(settings, study_id)
    findings: list[dict[str, Any]] = [{"text": "Small right pleural effusion.", "images": []}]
    revision_id = sign_report(
        settings,
        report_id,
        author="Doe^Jane",
        organization="St Elsewhere",
        findings=findings,
        impression="Small effusion.",
    )
    with session_scope(settings.database_url) as session:
        revision = session.get(ReportRevision, revision_id)
        assert revision is not None
        session.expunge(revision)
    return report_id, revision


def test_the_signed_sr_names_the_radiologist_and_no_algorithm(settings: Settings, failed_study: int) -> None:
    report_id, revision = signed_manual(settings, failed_study)
    assert revision.sr_path is not None
    signed_path = settings.data_dir / revision.sr_path
    check_with_tools(signed_path)
    signed = read_sr(pydicom.dcmread(signed_path))
    assert (signed.completion_flag, signed.verification_flag) == ("COMPLETE", "VERIFIED")
    assert signed.algorithm_name == "" and signed.algorithm_version == "" and signed.device_observer_uid == ""
    assert signed.person_observers == ("Doe^Jane",)
    assert [o.name for o in signed.verifying_observers] == ["Doe^Jane"]
    assert "AI" not in signed.series_description
    assert [f.text for f in signed.findings] == ["Small right pleural effusion."]
    assert "AI-assisted" not in revision.text and "without AI" in revision.text
    dataset = pydicom.dcmread(signed_path)
    assert "Algorithm" not in str(dataset) and "Device" not in str(dataset.ContentSequence)

    draft_path = ensure_draft_sr(settings, report_id)  # its predecessor: the manual draft, no AI either
    check_with_tools(draft_path)
    draft = read_sr(pydicom.dcmread(draft_path))
    assert draft.device_observer_uid == "" and "AI" not in draft.series_description
    assert signed.predecessors == (draft.sop_instance_uid,)


def test_the_signed_measurement_report_has_no_algorithm_and_no_key_images_exist(
    settings: Settings, failed_study: int
) -> None:
    report_id, revision = signed_manual(settings, failed_study)
    path = ensure_signed_measurement(settings, revision.id)
    check_with_tools(path)
    reading = read_measurement_report(pydicom.dcmread(path))
    assert reading.algorithm_name == ""
    assert "AI" not in str(pydicom.dcmread(path).SeriesDescription)
    with session_scope(settings.database_url) as session:
        kinds = set(session.scalars(select(ReportObject.kind).where(ReportObject.report_id == report_id)))
    assert ReportObjectKind.KEY_IMAGES not in kinds
