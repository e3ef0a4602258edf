"""Delivering report documents with real peers: Orthanc by C-STORE and by STOW-RS, a folder, an HTTP endpoint.

A DICOM destination takes a draft's SR, its TID 1500 and its key images by default.

A Celery worker for the delivery queue runs as a subprocess (`pacs-vlm worker --queues delivery`) against
PostgreSQL and Redis; Orthanc (Debian package, orthanc-dicomweb plugin) is started by the tests.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from integration.config import Settings
from integration.destinations import Destination
from integration.export.outbox import queue_deliveries
from integration.export.outgoing import OutgoingDocument
from integration.export.senders import send
from integration.reports.drafts import ensure_draft_sr
from integration.reports.kos import read_key_images
from integration.reports.sr_measurement import read_measurement_report
from integration.samples import pydicom_test_file
from integration.store.reports import ClaimedJob, DraftRecord, claim_job, record_draft
from integration.store.session import session_scope
from integration.store.tables import (
    AnalysisJob,
    AuditEvent,
    Instance,
    JobState,
    Series,
    Study,
    StudyState,
    utcnow,
)
from tests.support.orthanc import DICOMWEB_PLUGIN, OrthancServer
from tests.support.peers import WorkerProcess, wait_until
from tests.support.records import db_rows
from tests.support.services import free_port


def stored_report(settings: Settings) -> int:
    """A study with one stored instance (pydicom's CT_small) and a draft report on it, as the worker leaves it."""
    source = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    relative = f"{source.StudyInstanceUID}/{source.SeriesInstanceUID}/{source.SOPInstanceUID}.dcm"
    (settings.instance_root / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(pydicom_test_file("CT_small.dcm"), settings.instance_root / relative)
    now = utcnow()
    with session_scope(settings.database_url) as session:
        study = Study(
            study_uid=str(source.StudyInstanceUID),
            state=StudyState.QUEUED,
            version=1,
            calling_ae="CT1",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
        )
        session.add(study)
        session.flush()
        series = Series(series_uid=str(source.SeriesInstanceUID), study_id=study.id, modality="CT")
        session.add(series)
        session.flush()
        session.add(
            Instance(
                sop_instance_uid=str(source.SOPInstanceUID),
                sop_class_uid=str(source.SOPClassUID),
                series_id=series.id,
                study_version=1,
                storage_path=relative,
                size_bytes=1,
                transfer_syntax_uid=str(source.file_meta.TransferSyntaxUID),
                calling_ae="CT1",
                received_at=now,
            )
        )
        job = AnalysisJob(study_id=study.id, study_version=1, queue="analysis", state=JobState.QUEUED)
        session.add(job)
        session.flush()
        job_id = job.id
    with session_scope(settings.database_url) as session:
        assert isinstance(claim_job(session, job_id, max_attempts=3, now=now), ClaimedJob)
        draft = DraftRecord(
            model_id="smoke/llava",
            model_revision="sha256:abc",
            model_family="llava",
            prompt_version="ct/v1",
            structured=True,
            findings={"findings": [{"text": "No acute abnormality.", "images": [1]}], "impression": "Normal."},
            text="AI-generated draft, not verified by a radiologist.\n\nFINDINGS:\n- No acute abnormality.",
            raw_output="{}",
            evidence=[
                {
                    "image": 1,
                    "sop_class_uid": str(source.SOPClassUID),
                    "sop_instance_uid": str(source.SOPInstanceUID),
                    "series_uid": str(source.SeriesInstanceUID),
                    "frame": 1,
                    "window": None,
                }
            ],
            timings={"generate_s": 1.0},
            tokens_in=10,
            tokens_out=5,
        )
        return record_draft(session, job_id, draft, now)


class Collector(BaseHTTPRequestHandler):
    """An HTTP endpoint that keeps what is POSTed (an EHR's FHIR/HL7 intake)."""

    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def http_endpoint() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/intake", Collector.received
    server.shutdown()


@pytest.fixture
def orthanc() -> Iterator[OrthancServer]:
    with OrthancServer(plugins=[DICOMWEB_PLUGIN]) as server:
        yield server


def delivery_env(settings: Settings, destinations: list[dict[str, object]]) -> dict[str, str]:
    return {
        "PACSVLM_DESTINATIONS": json.dumps(destinations),
        "PACSVLM_DELIVERY_MAX_ATTEMPTS": "3",
        "PACSVLM_DELIVERY_BACKOFF_SECONDS": "0.2",
        "PACSVLM_DELIVERY_BACKOFF_MAX_SECONDS": "1",
        "PACSVLM_STORAGE_DIR": str(settings.instance_root),
    }


def states(url: str) -> dict[str, tuple[str, int]]:
    rows = db_rows(url, "SELECT destination, document, state, attempts FROM deliveries ORDER BY id")
    return {f"{d}/{doc}": (state, attempts) for d, doc, state, attempts in rows}


def orthanc_sr(orthanc: OrthancServer, sop_instance_uid: str) -> pydicom.Dataset:
    found = orthanc.post_json("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}})
    assert len(found) == 1, found
    return pydicom.dcmread(BytesIO(orthanc.request("GET", f"/instances/{found[0]}/file")))


def test_draft_sr_by_c_store_and_stow_rs_and_fhir_hl7_to_folder_and_http(
    migrated_postgres_url: str,
    redis_url: str,
    tmp_path: Path,
    orthanc: OrthancServer,
    http_endpoint: tuple[str, list[tuple[str, bytes]]],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    url, received = http_endpoint
    destinations: list[dict[str, object]] = [
        {"name": "pacs", "kind": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
         "reports": "both"},
        {"name": "vna", "kind": "dicomweb", "url": f"{orthanc.url}/dicom-web", "reports": "drafts"},
        {"name": "drop", "kind": "folder", "folder": str(tmp_path / "drop"), "documents": ["fhir", "hl7"],
         "reports": "both"},
        {"name": "ehr", "kind": "http", "url": url, "documents": ["fhir", "hl7"], "reports": "drafts"},
        {"name": "signed-only", "kind": "folder", "folder": str(tmp_path / "signed"), "reports": "signed"},
    ]  # fmt: skip
    settings = Settings(
        data_dir=tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url, destinations=destinations
    )
    report_id = stored_report(settings)
    sr_path = ensure_draft_sr(settings, report_id)
    worker = worker_factory(
        settings.data_dir, migrated_postgres_url, redis_url, None, queues="delivery",
        extra_env=delivery_env(settings, destinations),
    )  # fmt: skip
    sent = queue_deliveries(settings, report_id, None, "draft")
    assert len(sent) == 10  # pacs and vna: sr, tid1500, kos; drop, ehr: fhir, hl7; signed-only takes none
    wait_until(
        lambda: all(state == "delivered" for state, _ in states(migrated_postgres_url).values()),
        timeout=90,
        message=f"all delivered: {states(migrated_postgres_url)}\n{worker.log()[-2000:]}",
    )
    sr = pydicom.dcmread(sr_path)
    at_orthanc = orthanc_sr(orthanc, str(sr.SOPInstanceUID))  # C-STORE and STOW-RS sent the same instance
    assert at_orthanc.StudyInstanceUID == sr.StudyInstanceUID and at_orthanc.VerificationFlag == "UNVERIFIED"
    assert at_orthanc.ContentSequence == sr.ContentSequence
    # beside the SR, the draft's TID 1500 and key images, as written under the data folder
    [(tid1500_uid,)] = db_rows(
        migrated_postgres_url, "SELECT sop_instance_uid FROM report_objects WHERE kind = 'tid1500'"
    )
    [(kos_uid,)] = db_rows(migrated_postgres_url, "SELECT sop_instance_uid FROM report_objects WHERE kind = 'kos'")
    measurement = read_measurement_report(orthanc_sr(orthanc, tid1500_uid))
    assert [f.text for f in measurement.findings] == ["No acute abnormality."]
    assert (measurement.completion_flag, measurement.verification_flag) == ("PARTIAL", "UNVERIFIED")
    key_images = read_key_images(orthanc_sr(orthanc, kos_uid))
    assert key_images.documents == (str(sr.SOPInstanceUID),) and len(key_images.images) == 1
    fhir = json.loads((tmp_path / "drop" / f"draft-{report_id}.fhir.json").read_text())
    assert "preliminary" in json.dumps(fhir)
    hl7 = (tmp_path / "drop" / f"draft-{report_id}.hl7").read_text()
    assert hl7.startswith("MSH|^~\\&|") and "ORU^R01" in hl7
    assert sorted(media for media, _ in received) == ["application/fhir+json", "x-application/hl7-v2+er7"]
    # the same report queued again: nothing new is created or sent, no duplicate at the destination
    assert queue_deliveries(settings, report_id, None, "draft") == []
    assert len(db_rows(migrated_postgres_url, "SELECT id FROM deliveries")) == 10
    assert orthanc.get("/statistics")["CountInstances"] == 3  # the SR, its TID 1500, its key images


def test_a_destination_down_goes_dead_letter_and_a_retry_delivers_once_it_is_back(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    destinations: list[dict[str, object]] = [
        {"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": port, "reports": "drafts",
         "documents": ["sr"]}
    ]  # fmt: skip
    settings = Settings(
        data_dir=tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url, destinations=destinations
    )
    report_id = stored_report(settings)
    worker = worker_factory(
        settings.data_dir, migrated_postgres_url, redis_url, None, queues="delivery",
        extra_env=delivery_env(settings, destinations),
    )  # fmt: skip
    assert len(queue_deliveries(settings, report_id, None, "draft")) == 1
    wait_until(
        lambda: states(migrated_postgres_url) == {"pacs/sr": ("dead_letter", 3)},
        timeout=90,
        message=f"dead letter after 3 attempts: {states(migrated_postgres_url)}\n{worker.log()[-2000:]}",
    )
    [(error,)] = db_rows(migrated_postgres_url, "SELECT last_error FROM deliveries")
    assert "association with ORTHANC@127.0.0.1" in error
    server = OrthancServer()
    server.dicom_port = server.config["DicomPort"] = port  # the PACS comes back where it was configured
    with server:
        worker.retry_dead_letters()
        wait_until(
            lambda: states(migrated_postgres_url) == {"pacs/sr": ("delivered", 1)},
            timeout=60,
            message=f"delivered after retry: {states(migrated_postgres_url)}",
        )
        assert server.get("/statistics")["CountInstances"] == 1
    with session_scope(migrated_postgres_url) as session:  # the operator's retry is audited, one event a delivery
        retried = session.scalars(select(AuditEvent.actor).where(AuditEvent.action == "delivery.retry")).all()
    assert len(retried) == 1 and retried[0].startswith("cli")


def test_sending_the_same_sr_twice_leaves_one_instance(
    migrated_postgres_url: str, tmp_path: Path, orthanc: OrthancServer
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=migrated_postgres_url)
    report_id = stored_report(settings)
    path = ensure_draft_sr(settings, report_id)
    sr = pydicom.dcmread(path)
    document = OutgoingDocument(
        "sr", path.read_bytes(), path.name, "application/dicom", str(sr.SOPClassUID), str(sr.SOPInstanceUID)
    )
    pacs = Destination(name="pacs", kind="dicom", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port)
    vna = Destination(name="vna", kind="dicomweb", url=f"{orthanc.url}/dicom-web")
    for _ in range(2):
        assert send(pacs, document, calling_ae="PACSVLM").startswith("C-STORE status 0x0000")
        assert send(vna, document, calling_ae="PACSVLM").startswith("STOW-RS HTTP 200")
    assert orthanc.get("/statistics")["CountInstances"] == 1
    assert ensure_draft_sr(settings, report_id) == path  # the SR and its UID are fixed once
