"""Corrections: a draft that left is withdrawn from each receiver that got it; one that did not is cancelled.

Store level against PostgreSQL, with Redis as the broker (the withdrawals' messages are only queued: no
worker runs here; tests/export/test_rejection_note_orthanc.py delivers to Orthanc).  The documents are
built as the delivery task builds them (:func:`integration.export.documents.load_document`): FHIR statuses
and the one resource id per report, HL7 result statuses and control ids, and the IOCM rejection note, which
dicom3tools' dciodvfy validates and highdicom reads back.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import highdicom as hd
import hl7
import pydicom
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from integration.config import Settings
from integration.export.corrections import withdraw_reports
from integration.export.documents import load_document
from integration.reports.drafts import ensure_draft_sr, sign_report
from integration.reports.rejection_note import rejection_note_uids
from integration.reports.review import reject_draft
from integration.store.deliveries import (
    Deferred,
    DeliveryTarget,
    PlannedDelivery,
    create_deliveries,
    retry_deliveries,
    start_attempt,
)
from integration.store.reports import DraftRecord, record_draft_superseding
from integration.store.session import session_scope
from integration.store.tables import (
    AnalysisJob,
    AuditEvent,
    Delivery,
    DeliveryState,
    JobState,
    Report,
    ReportStatus,
    Study,
    User,
    UserRole,
    utcnow,
)
from integration.store.users import create_user
from integration.web.api.review_actions import Review
from integration.web.deps import CurrentUser
from tests.export.test_delivery import stored_report
from tests.support.sr_tools import check_with_tools
from worker.cli import app

DESTINATIONS: list[dict[str, object]] = [
    {"name": name, "kind": "folder", "folder": f"/nonexistent/{name}", "documents": ["sr", "fhir", "hl7"]}
    for name in ("sent", "trying", "queued", "dead", "cancelled")
]


@pytest.fixture
def settings(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url, destinations=DESTINATIONS
    )


def draft_deliveries(settings: Settings, report_id: int) -> dict[str, int]:
    """The draft's SR delivery to each destination, put in the state its name says; name -> delivery id."""
    with session_scope(settings.database_url) as session:
        ids = create_deliveries(
            session, report_id, None, [PlannedDelivery(str(d["name"]), "sr") for d in DESTINATIONS], utcnow()
        )
        rows = {d.destination: d for d in session.scalars(select(Delivery).where(Delivery.id.in_(ids)))}
        rows["sent"].state, rows["sent"].attempts = DeliveryState.DELIVERED, 1
        rows["trying"].attempts = 2  # pending after a failed attempt: may be at the receiver
        rows["dead"].state, rows["dead"].attempts = DeliveryState.DEAD_LETTER, 3
        rows["cancelled"].state = DeliveryState.CANCELLED
        return {name: row.id for name, row in rows.items()}


def set_status(settings: Settings, report_id: int, status: ReportStatus) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Report).where(Report.id == report_id).values(status=status))


def deliveries(settings: Settings) -> dict[tuple[str, str], tuple[str, int]]:
    with session_scope(settings.database_url) as session:
        return {
            (d.subject.split(":")[0], d.destination): (d.state.value, d.attempts)
            for d in session.scalars(select(Delivery))
        }


def withdraw_events(settings: Settings) -> list[dict[str, object]]:
    with session_scope(settings.database_url) as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "export.withdraw")).all()
        return [dict(e.detail or {}) | {"report": e.object_id} for e in events]


def test_what_left_is_withdrawn_what_did_not_is_cancelled_and_a_second_call_adds_nothing(settings: Settings) -> None:
    report_id = stored_report(settings)
    draft_deliveries(settings, report_id)
    assert withdraw_reports(settings, [report_id], "rejected") == []  # still a draft: left alone
    set_status(settings, report_id, ReportStatus.REJECTED)
    sent = withdraw_reports(settings, [report_id], "rejected")
    assert len(sent) == 3
    assert deliveries(settings) == {
        ("draft", "sent"): ("delivered", 1),
        ("draft", "trying"): ("pending", 2),  # may be in flight: its withdrawal follows it
        ("draft", "queued"): ("cancelled", 0),
        ("draft", "dead"): ("cancelled", 3),  # never sent again, but an attempt may have arrived ...
        ("draft", "cancelled"): ("cancelled", 0),
        ("withdrawn", "sent"): ("pending", 0),
        ("withdrawn", "trying"): ("pending", 0),
        ("withdrawn", "dead"): ("pending", 0),  # ... (a RIS that stored it and lost its ACK): withdrawn too
    }
    assert withdraw_events(settings) == [
        {"reason": "rejected", "withdrawals": 3, "cancelled": 1, "report": str(report_id)}
    ]
    before = deliveries(settings)
    assert withdraw_reports(settings, [report_id, report_id], "order cancelled") == []
    assert deliveries(settings) == before and len(withdraw_events(settings)) == 1
    with session_scope(settings.database_url) as session:  # an operator's retry never resurrects a cancelled one
        cancelled = session.scalars(select(Delivery.id).where(Delivery.state == DeliveryState.CANCELLED)).all()
        assert retry_deliveries(session, list(cancelled), utcnow()) == []
        assert retry_deliveries(session, None, utcnow()) == []
    assert deliveries(settings) == before


def test_a_withdrawal_waits_for_its_original_and_is_cancelled_when_there_is_nothing_to_take_back(
    settings: Settings,
) -> None:
    report_id = stored_report(settings)
    ids = draft_deliveries(settings, report_id)
    set_status(settings, report_id, ReportStatus.SUPERSEDED)
    withdraw_reports(settings, [report_id], "superseded")
    with session_scope(settings.database_url) as session:
        withdrawal = {
            d.destination: d.id
            for d in session.scalars(select(Delivery).where(Delivery.subject.startswith("withdrawn:")))
        }
        due = utcnow() + timedelta(seconds=30)
        session.execute(update(Delivery).where(Delivery.id == ids["trying"]).values(next_attempt_at=due))
    now = utcnow()
    with session_scope(settings.database_url) as session:
        waiting = start_attempt(session, withdrawal["trying"], now=now, min_wait=2.0)
        assert isinstance(waiting, Deferred) and 30 <= waiting.wait_seconds <= 33
        sending = start_attempt(session, withdrawal["sent"], now=now)  # its original was delivered
        assert isinstance(sending, DeliveryTarget) and sending.subject == f"withdrawn:{report_id}"
    assert deliveries(settings)[("withdrawn", "trying")] == ("pending", 0)  # no attempt counted while waiting
    with session_scope(settings.database_url) as session:  # the original gives up after attempts that may have
        session.execute(update(Delivery).where(Delivery.id == ids["trying"]).values(state=DeliveryState.DEAD_LETTER))
    with session_scope(settings.database_url) as session:  # arrived (an ACK lost): the withdrawal is sent
        after_attempts = start_attempt(session, withdrawal["trying"])
        assert isinstance(after_attempts, DeliveryTarget) and after_attempts.attempt == 1
    with session_scope(settings.database_url) as session:  # an original never attempted: nothing to take back
        session.execute(update(Delivery).where(Delivery.id == ids["trying"]).values(attempts=0))
        session.execute(update(Delivery).where(Delivery.id == withdrawal["trying"]).values(attempts=0))
    with session_scope(settings.database_url) as session:
        assert start_attempt(session, withdrawal["trying"]) is None
    assert deliveries(settings)[("withdrawn", "trying")] == ("cancelled", 0)


def test_an_unattempted_draft_delivery_of_a_closed_report_is_cancelled_when_its_task_runs(settings: Settings) -> None:
    report_id = stored_report(settings)
    with session_scope(settings.database_url) as session:
        [delivery_id] = create_deliveries(session, report_id, None, [PlannedDelivery("queued", "fhir")], utcnow())
    reject_draft(settings, report_id, actor="rad", reason="Wrong series.")  # committed before the task ran
    with session_scope(settings.database_url) as session:
        assert start_attempt(session, delivery_id) is None
    assert deliveries(settings) == {("draft", "queued"): ("cancelled", 0)}


def test_the_superseding_draft_names_the_drafts_it_superseded(settings: Settings) -> None:
    old = stored_report(settings)
    now = utcnow()
    with session_scope(settings.database_url) as session:
        report = session.get(Report, old)
        assert report is not None
        study = session.get(Study, report.study_id)
        assert study is not None
        study.version = 2
        job = AnalysisJob(study_id=study.id, study_version=2, queue="analysis", state=JobState.RUNNING)
        session.add(job)
        session.flush()
        record = DraftRecord(**{**_draft_fields(report), "model_id": "smoke/llava-v2"})
        recorded = record_draft_superseding(session, job.id, record, now)
        again = record_draft_superseding(session, job.id, record, now)
    assert recorded.superseded == [old] and recorded.report_id != old
    assert again == replace(recorded, superseded=[])  # idempotent: nothing superseded twice


def _draft_fields(report: Report) -> dict[str, object]:
    names = DraftRecord.__dataclass_fields__
    return {name: getattr(report, name) for name in names}


def test_reject_paths_withdraw_what_was_sent(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    by_api = stored_report(settings)
    with session_scope(settings.database_url) as session:
        create_user(session, "admin1", "correct horse battery staple", UserRole.ADMIN, None)
    with session_scope(settings.database_url) as session:
        user = session.scalars(select(User).where(User.username == "admin1")).one()
        current = CurrentUser(id=user.id, username=user.username, role=user.role, site_ids=frozenset())
    draft_deliveries(settings, by_api)
    Review(settings, current, by_api, "127.0.0.1:1").reject("Wrong patient position.", None)  # web API and page
    assert deliveries(settings)[("withdrawn", "sent")] == ("pending", 0)
    assert deliveries(settings)[("draft", "queued")] == ("cancelled", 0)
    by_cli = _second_draft(settings)  # the command line: another draft, sent to one destination
    with session_scope(settings.database_url) as session:
        [delivery_id] = create_deliveries(session, by_cli, None, [PlannedDelivery("sent", "hl7")], utcnow())
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(state=DeliveryState.DELIVERED))
    monkeypatch.setenv("PACSVLM_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PACSVLM_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PACSVLM_BROKER_URL", settings.broker_url)
    args = ["report", "reject", str(by_cli), "--reason", "Superseded by hand.", "--author", "rad"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "withdrawals queued" in result.output
    with session_scope(settings.database_url) as session:
        subjects = session.scalars(select(Delivery.subject).where(Delivery.report_id == by_cli)).all()
    assert sorted(subjects) == [f"draft:{by_cli}", f"withdrawn:{by_cli}"]


def _second_draft(settings: Settings) -> int:
    """Another draft of the same study (another model), as a second primary draft would be recorded."""
    with session_scope(settings.database_url) as session:
        first = session.scalars(select(Report).order_by(Report.id)).first()
        assert first is not None
        report = Report(
            study_id=first.study_id,
            study_version=first.study_version,
            status=ReportStatus.DRAFT,
            created_at=utcnow(),
            **{**_draft_fields(first), "model_id": "smoke/other"},
        )
        session.add(report)
        session.flush()
        return int(report.id)


def _target(
    settings: Settings, subject: str, document: str, report_id: int, revision_id: int | None, destination: str = "sent"
) -> DeliveryTarget:
    """A delivery row and its target, as the task's start_attempt gives it."""
    with session_scope(settings.database_url) as session:
        row = Delivery(
            report_id=report_id,
            revision_id=revision_id,
            subject=subject,
            destination=destination,
            document=document,
            state=DeliveryState.PENDING,
            attempts=1,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return DeliveryTarget(row.id, report_id, revision_id, subject, destination, document, 1)


def _hl7_statuses(content: bytes) -> tuple[str, str, set[str]]:
    message = hl7.parse(content.decode())
    obx = {str(segment[11]) for segment in message.segments("OBX")}
    return str(message.segment("MSH")[10]), str(message.segment("OBR")[25]), obx


def test_fhir_and_hl7_statuses_and_one_fhir_id_per_report(settings: Settings) -> None:
    report_id = stored_report(settings)
    draft = load_document(settings, _target(settings, f"draft:{report_id}", "fhir", report_id, None))
    draft_hl7 = load_document(settings, _target(settings, f"draft:{report_id}", "hl7", report_id, None))
    first = sign_report(settings, report_id, author="Doe^Jane", organization="North")
    second = sign_report(settings, report_id, author="Roe^Rich", organization="North", impression="Changed.")
    versions = {
        "signed": (f"signed:{first}", first),
        "amended": (f"signed:{second}", second),
    }
    built = {
        name: (
            load_document(settings, _target(settings, subject, "fhir", report_id, revision)),
            load_document(settings, _target(settings, subject, "hl7", report_id, revision)),
        )
        for name, (subject, revision) in versions.items()
    }
    withdrawn_fhir = load_document(settings, _target(settings, f"withdrawn:{report_id}", "fhir", report_id, None))
    withdrawn_hl7 = load_document(settings, _target(settings, f"withdrawn:{report_id}", "hl7", report_id, None))
    fhir = {
        "draft": draft,
        "signed": built["signed"][0],
        "amended": built["amended"][0],
        "withdrawn": withdrawn_fhir,
    }
    resources = {name: json.loads(doc.content) for name, doc in fhir.items()}
    assert {name: r["status"] for name, r in resources.items()} == {
        "draft": "preliminary",
        "signed": "final",
        "amended": "amended",
        "withdrawn": "entered-in-error",
    }
    assert {r["id"] for r in resources.values()} == {f"pacsvlm-report-{report_id}"}
    assert {doc.resource_id for doc in fhir.values()} == {f"pacsvlm-report-{report_id}"}
    observations = {o["status"] for o in resources["withdrawn"]["contained"] if o["resourceType"] == "Observation"}
    assert observations == {"entered-in-error"}
    assert "withdrawn" in resources["withdrawn"]["text"]["div"]
    statuses = {
        "draft": _hl7_statuses(draft_hl7.content),
        "signed": _hl7_statuses(built["signed"][1].content),
        "amended": _hl7_statuses(built["amended"][1].content),
        "withdrawn": _hl7_statuses(withdrawn_hl7.content),
    }
    assert {name: (obr, obx) for name, (_, obr, obx) in statuses.items()} == {
        "draft": ("P", {"P"}),
        "signed": ("F", {"F"}),
        "amended": ("C", {"C"}),
        "withdrawn": ("C", {"W"}),
    }
    control_ids = [control for control, _, _ in statuses.values()]
    assert len(set(control_ids)) == 4 and f"PVLM-withdrawn-{report_id}" in control_ids
    assert b"must not be used" in withdrawn_hl7.content


def test_a_withdrawal_document_is_the_same_bytes_on_every_send(settings: Settings) -> None:
    report_id = stored_report(settings)
    for document in ("fhir", "hl7", "sr"):
        target = _target(settings, f"withdrawn:{report_id}", document, report_id, None)
        assert load_document(settings, target) == load_document(settings, target)


def test_the_rejection_note_is_a_valid_kos_referencing_the_draft_sr_with_fixed_uids(settings: Settings) -> None:
    report_id = stored_report(settings)
    sr = pydicom.dcmread(ensure_draft_sr(settings, report_id))
    target = _target(settings, f"withdrawn:{report_id}", "sr", report_id, None)
    document = load_document(settings, target)
    assert document.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
    series_uid, sop_uid = rejection_note_uids(str(sr.SOPInstanceUID))
    assert document.sop_instance_uid == sop_uid
    path = settings.data_dir / "reports" / str(sr.StudyInstanceUID) / f"{sop_uid}.dcm"
    assert path.read_bytes() == document.content  # stored beside the SR, like SR files
    warnings = check_with_tools(path)
    assert not [w for w in warnings if "KeyObject" in w or "Rejected" in w], warnings
    note = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(path))
    title = note.ContentTemplateSequence[0] if "ContentTemplateSequence" in note else None
    assert title is None or title.TemplateIdentifier == "2010"
    concept = note.ConceptNameCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning) == (
        "113001",
        "DCM",
        "Rejected for Quality Reasons",
    )
    assert note.resolve_reference(str(sr.SOPInstanceUID)) == (
        str(sr.StudyInstanceUID),
        str(sr.SeriesInstanceUID),
        str(sr.SOPInstanceUID),
    )
    [study] = note.CurrentRequestedProcedureEvidenceSequence
    [series] = study.ReferencedSeriesSequence
    [instance] = series.ReferencedSOPSequence
    assert instance.ReferencedSOPClassUID == sr.SOPClassUID
    assert (note.SeriesInstanceUID, note.Modality, note.PatientID) == (series_uid, "KO", sr.PatientID)
    assert note.SeriesInstanceUID != sr.SeriesInstanceUID
    path.unlink()  # a lost file is built again as the same instance
    again = load_document(settings, target)
    assert again.sop_instance_uid == sop_uid
    assert pydicom.dcmread(path).SeriesInstanceUID == series_uid
