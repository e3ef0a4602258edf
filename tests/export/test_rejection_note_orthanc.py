"""Orthanc receives a draft SR (with its TID 1500 and key images) and then their IOCM rejection notes.

A Celery worker for the delivery queue runs as a subprocess against PostgreSQL and Redis; Orthanc (Debian
package, 1.10) is the PACS, reached by C-STORE; a folder destination takes the FHIR and HL7 documents.

What Orthanc does with the rejection note (checked here): it has no IOCM support, so it stores the Key
Object Selection document as one more instance of the study, in its own series (modality KO), and keeps
the draft SR, which stays retrievable.  Hiding the rejected SR is left to an IOCM Image Manager or to a
viewer that reads the note; the note itself is what IOCM asks a change requester to send.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select

from integration.config import Settings
from integration.export.corrections import withdraw_reports
from integration.export.outbox import queue_deliveries
from integration.reports.drafts import ensure_draft_sr
from integration.reports.review import reject_draft
from integration.store.session import session_scope
from integration.store.tables import Delivery
from integration.store.viewer_tables import ReportObject
from tests.export.test_delivery import delivery_env, stored_report
from tests.support.orthanc import OrthancServer
from tests.support.peers import WorkerProcess, wait_until
from tests.support.services import free_port

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def pacs() -> Iterator[OrthancServer]:
    """Orthanc as the receiving PACS (C-STORE), one for the module."""
    with OrthancServer() as server:
        yield server


def rows(settings: Settings) -> dict[str, tuple[str, int]]:
    with session_scope(settings.database_url) as session:
        return {
            f"{d.subject.split(':')[0]}/{d.destination}/{d.document}": (d.state.value, d.attempts)
            for d in session.scalars(select(Delivery))
        }


def study_instances(orthanc: OrthancServer, study_uid: str) -> dict[str, pydicom.Dataset]:
    """SOP Instance UID -> the instance Orthanc returns, for each instance of the study."""
    found = orthanc.post_json("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
    files = [pydicom.dcmread(BytesIO(orthanc.request("GET", f"/instances/{i}/file"))) for i in found]
    return {str(ds.SOPInstanceUID): ds for ds in files}


def referenced(note: pydicom.Dataset) -> set[str]:
    """The SOP Instance UIDs a note's evidence names."""
    return {
        str(ref.ReferencedSOPInstanceUID)
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


def instances_of(orthanc: OrthancServer, study_uid: str) -> dict[str, pydicom.Dataset]:
    """SOP Class UID -> the instance Orthanc returns, for each instance of the study."""
    return {str(ds.SOPClassUID): ds for ds in study_instances(orthanc, study_uid).values()}


def start_worker(
    worker_factory: Callable[..., WorkerProcess], settings: Settings, destinations: list[dict[str, object]], **env: str
) -> WorkerProcess:
    return worker_factory(
        settings.data_dir,
        settings.database_url,
        settings.broker_url,
        None,
        queues="delivery",
        extra_env={**delivery_env(settings, destinations), **env},
    )


def test_orthanc_keeps_the_draft_sr_and_stores_its_rejection_note_beside_it(
    migrated_postgres_url: str,
    redis_url: str,
    tmp_path: Path,
    pacs: OrthancServer,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    destinations: list[dict[str, object]] = [
        {"name": "pacs", "kind": "dicom", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
         "reports": "both"},
        {"name": "drop", "kind": "folder", "folder": str(tmp_path / "drop"), "documents": ["fhir", "hl7"],
         "reports": "both"},
    ]  # fmt: skip
    settings = Settings(
        data_dir=tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url, destinations=destinations
    )
    report_id = stored_report(settings)
    sr = pydicom.dcmread(ensure_draft_sr(settings, report_id))
    with session_scope(settings.database_url) as session:
        companions = {o.kind.value: o.sop_instance_uid for o in session.scalars(select(ReportObject))}
    worker = start_worker(worker_factory, settings, destinations)
    assert len(queue_deliveries(settings, report_id, None, "draft")) == 5  # pacs: sr, tid1500, kos; drop: fhir, hl7
    wait_until(
        lambda: all(state == "delivered" for state, _ in rows(settings).values()),
        timeout=90,
        message=f"the draft delivered: {rows(settings)}\n{worker.log()[-2000:]}",
    )
    sent = {str(sr.SOPInstanceUID), companions["tid1500"], companions["kos"]}
    assert set(study_instances(pacs, str(sr.StudyInstanceUID))) == sent

    reject_draft(settings, report_id, actor="rad", reason="Hallucinated finding.")
    assert len(withdraw_reports(settings, [report_id], "rejected")) == 5
    wait_until(
        lambda: len(rows(settings)) == 10 and all(state == "delivered" for state, _ in rows(settings).values()),
        timeout=90,
        message=f"the withdrawals delivered: {rows(settings)}\n{worker.log()[-2000:]}",
    )
    at_pacs = study_instances(pacs, str(sr.StudyInstanceUID))
    kept = at_pacs[str(sr.SOPInstanceUID)]  # Orthanc stores the notes and keeps what they reject
    assert kept.ContentSequence == sr.ContentSequence and sent < set(at_pacs)
    notes = [hd.ko.KeyObjectSelectionDocument.from_dataset(ds) for uid, ds in at_pacs.items() if uid not in sent]
    assert len(notes) == 3 and all(note.SOPClassUID == KOS_CLASS for note in notes)
    assert {note.ConceptNameCodeSequence[0].CodeValue for note in notes} == {"113001"}
    assert [len(referenced(note)) for note in notes] == [1, 1, 1]  # each note takes back one document
    assert {uid for note in notes for uid in referenced(note)} == sent
    sr_note = next(note for note in notes if referenced(note) == {str(sr.SOPInstanceUID)})
    assert sr_note.resolve_reference(str(sr.SOPInstanceUID))[1] == str(sr.SeriesInstanceUID)
    assert sr_note.SeriesInstanceUID != sr.SeriesInstanceUID and sr_note.Modality == "KO"
    series = pacs.get(f"/studies/{pacs.studies()[0]}")["Series"]
    assert len(series) == 6  # the SR, its TID 1500, its key images, and each note in a series of its own
    # the FHIR receiver: the same resource, now entered-in-error; the RIS: a C/W result after the P one
    drop = tmp_path / "drop"
    draft = json.loads((drop / f"draft-{report_id}.fhir.json").read_text())
    withdrawn = json.loads((drop / f"withdrawn-{report_id}.fhir.json").read_text())
    assert (draft["id"], draft["status"]) == (f"pacsvlm-report-{report_id}", "preliminary")
    assert (withdrawn["id"], withdrawn["status"]) == (draft["id"], "entered-in-error")
    obr = next(s for s in (drop / f"withdrawn-{report_id}.hl7").read_bytes().decode().split("\r") if s[:3] == "OBR")
    assert obr.split("|")[25] == "C"
    # sent again (a duplicate message, an operator's retry): still one note at Orthanc
    assert withdraw_reports(settings, [report_id], "rejected") == []
    assert pacs.get("/statistics")["CountInstances"] == 6


def test_a_withdrawal_waits_for_its_drafts_retry_and_is_sent_when_an_attempt_may_have_arrived(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess]
) -> None:
    """The PACS is down while the draft is retried; the draft is rejected meanwhile.

    The withdrawal waits (no attempt counted) while the draft's retry is due; that retry finds the report closed
    and cancels the draft (it is never sent again).  The draft was attempted, and an attempt may reach a receiver
    whose answer is lost, so the withdrawal is sent when the PACS is back: Orthanc gets the rejection note only.
    """
    port = free_port()
    destinations: list[dict[str, object]] = [
        {"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": port, "reports": "both",
         "documents": ["sr"]}
    ]  # fmt: skip
    settings = Settings(
        data_dir=tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url, destinations=destinations
    )
    report_id = stored_report(settings)
    sr = pydicom.dcmread(ensure_draft_sr(settings, report_id))
    worker = start_worker(
        worker_factory,
        settings,
        destinations,
        PACSVLM_DELIVERY_MAX_ATTEMPTS="50",
        PACSVLM_DELIVERY_BACKOFF_SECONDS="0.5",
        PACSVLM_DELIVERY_BACKOFF_MAX_SECONDS="1",
    )
    queue_deliveries(settings, report_id, None, "draft")
    wait_until(
        lambda: rows(settings)["draft/pacs/sr"][1] >= 1,
        timeout=60,
        message=f"a failed attempt: {rows(settings)}\n{worker.log()[-2000:]}",
    )
    reject_draft(settings, report_id, actor="rad", reason="Wrong study.")
    assert len(withdraw_reports(settings, [report_id], "rejected")) == 1
    wait_until(lambda: "waits" in worker.log(), timeout=30, message=f"the withdrawal waiting\n{worker.log()[-2000:]}")
    assert rows(settings)["withdrawn/pacs/sr"] == ("pending", 0)  # no attempt counted while it waits
    server = OrthancServer()
    server.dicom_port = server.config["DicomPort"] = port  # the PACS comes back where it was configured
    with server:
        wait_until(
            lambda: rows(settings)["withdrawn/pacs/sr"][0] == "delivered",
            timeout=90,
            message="the withdrawal delivered",
        )
        assert set(instances_of(server, str(sr.StudyInstanceUID))) == {KOS_CLASS}
    assert rows(settings) == {"draft/pacs/sr": ("cancelled", 1), "withdrawn/pacs/sr": ("delivered", 1)}
