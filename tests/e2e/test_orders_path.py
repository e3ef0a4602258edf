"""The RIS loop end to end: orders over MLLP, studies by storescu, drafts out to a RIS, a FHIR server and a PACS.

Every part is real and separate: ``pacs-vlm listen`` (DICOM and the HL7 order listener) and ``pacs-vlm worker``
(the tiny MedGemma-architecture model) as processes, python-hl7's MLLP client as the RIS that orders, a RIS
endpoint from hl7apy (another library than our sender's) that takes the ORU messages, an HTTP recorder that
checks the FHIR updates (the real FHIR server test is ``tests/export/test_fhir_sender.py``), Orthanc as the
PACS, PostgreSQL and Redis.

Three studies arrive before any worker runs: one without an order, one whose order is STAT, one whose order
was cancelled.  The stat study is drafted first (the stat queue), the cancelled one never; the drafts reach
all three receivers; cancelling the stat order afterwards withdraws its draft from each: ORU with OBX-11 ``W``,
the same DiagnosticReport ``entered-in-error``, and an IOCM rejection note in Orthanc.  That the order's
indication is the prompt's question is asserted on the captured prompt in ``tests/worker/test_order_effects.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import hl7
import pydicom
import pytest
from hl7.client import MLLPClient

from integration.samples import write_ct_series
from tests.support.http_peers import Answer, Recorder, Request
from tests.support.orthanc import ORTHANC, OrthancServer
from tests.support.peers import ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows
from tests.support.ris import Ris
from tests.support.services import free_port, wait_for_port

pytestmark = pytest.mark.skipif(shutil.which(ORTHANC) is None, reason="Orthanc is not installed (make system-deps)")

SENDER = "EPIC_RIS^NORTH_HOSP"
PATIENT = "MRN-2001"
INDICATION = "Sudden dyspnoea after central line placement; pneumothorax?"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


def orm(control_id: str, accession: str, control: str = "NW", priority: str = "R") -> str:
    """An ORM^O01 (v2.5.1) as a RIS sends it: accession number in OBR-18, the indication in OBR-31."""
    obr = ["OBR", "1", f"PL-{accession}", f"FL-{accession}", "71250^CT CHEST^C4"] + [""] * 27
    obr[18], obr[24], obr[31] = accession, "CT", f"^{INDICATION}"
    return "\r".join(
        (
            f"MSH|^~\\&|EPIC_RIS|NORTH_HOSP|PACSVLM|PACSVLM|20261205120000||ORM^O01^ORM_O01|{control_id}|P|2.5.1",
            f"PID|1||{PATIENT}^^^NORTH^MR||DOE^JANE||19600101|F",
            "PV1|1|I",
            f"ORC|{control}|PL-{accession}|FL-{accession}||SC||^^^^^{priority}||20261205120000|||77^HOUSE^GREGORY",
            "|".join(obr),
        )
    )


def send_order(port: int, message: str) -> str:
    """Send one order with python-hl7's MLLP client; return MSA-1."""
    with MLLPClient("127.0.0.1", port) as client:
        client.socket.settimeout(30)
        answer = client.send_message(message)
        while not answer.endswith(b"\x1c\r"):
            answer += client.socket.recv(65536)
    return str(hl7.parse(answer.decode().strip("\x0b\x1c\r\n")).segment("MSA")[1])


def study(folder: Path, accession: str) -> tuple[str, list[Path]]:
    """Two CT slices of the ordered patient with ``accession``; returns the Study Instance UID and the files."""
    files = write_ct_series(folder, 2, rows=32, columns=32)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.AccessionNumber, ds.PatientID, ds.IssuerOfPatientID = accession, PATIENT, "NORTH"
        ds.save_as(path)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


class FhirServer(Recorder):
    """Takes every PUT of a DiagnosticReport (201 the first time, 200 after) and keeps the requests."""

    def __init__(self) -> None:
        super().__init__(self._put)
        self.known: set[str] = set()

    def _put(self, request: Request) -> Answer:
        created = request.path not in self.known
        self.known.add(request.path)
        return (201 if created else 200, {"Content-Type": "application/fhir+json"}, b"{}")


def test_orders_drive_priority_cancellation_and_withdrawals_to_every_receiver(
    listener_factory: Callable[..., ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    smoke_medgemma_dir: Path,
    tmp_path: Path,
) -> None:
    with Ris(["AA"]) as ris, FhirServer() as fhir, OrthancServer(folder=tmp_path / "orthanc") as pacs:
        destinations = [
            {"name": "ris", "kind": "mllp", "host": "127.0.0.1", "port": ris.port, "reports": "both", "timeout": 10},
            {"name": "ehr", "kind": "fhir", "url": fhir.url, "reports": "both"},
            {
                "name": "pacs",
                "kind": "dicom",
                "ae_title": pacs.aet,
                "host": "127.0.0.1",
                "port": pacs.dicom_port,
                "reports": "both",
                "documents": ["sr"],
            },
        ]
        env = {"PACSVLM_DESTINATIONS": json.dumps(destinations), "PACSVLM_DELIVERY_BACKOFF_SECONDS": "0.5"}
        mllp_port = free_port()
        orders = {"PACSVLM_MLLP_PORT": str(mllp_port), "PACSVLM_MLLP_HOST": "127.0.0.1"}
        listener = listener_factory(
            migrated_postgres_url,
            redis_url,
            stable_seconds=0.5,
            extra_env={**env, **orders, "PACSVLM_HL7_SENDERS": json.dumps({SENDER: {}})},
        )
        wait_for_port("127.0.0.1", mllp_port, timeout=30)
        url = listener.database_url

        assert send_order(mllp_port, orm("ORD-1", "ACC-STAT", priority="S")) == "AA"
        assert send_order(mllp_port, orm("ORD-2", "ACC-CANCEL")) == "AA"
        assert send_order(mllp_port, orm("ORD-3", "ACC-CANCEL", control="CA")) == "AA"
        routine_uid, routine = study(tmp_path / "routine", "ACC-NONE")
        stat_uid, stat = study(tmp_path / "stat", "ACC-STAT")
        cancelled_uid, cancelled = study(tmp_path / "cancelled", "ACC-CANCEL")
        for files in (routine, stat, cancelled):  # the routine study first: the stat one must overtake it
            assert storescu(listener.port, files).returncode == 0

        def state(uid: str) -> str:
            return str(db_rows(url, "SELECT state FROM studies WHERE study_uid = :u", u=uid)[0][0])

        wait_until(
            lambda: [state(u) for u in (routine_uid, stat_uid, cancelled_uid)] == ["queued", "queued", "cancelled"],
            timeout=60,
            message=f"two studies queued, one cancelled; listener:\n{listener.log()[-3000:]}",
        )
        worker = worker_factory(listener.data_dir, url, listener.broker_url, smoke_medgemma_dir, extra_env=env)
        jobs = (
            "SELECT s.study_uid, j.queue, j.priority, j.started_at FROM analysis_jobs j"
            " JOIN studies s ON s.id = j.study_id WHERE j.state = 'done' ORDER BY j.started_at"
        )
        wait_until(
            lambda: len(db_rows(url, jobs)) == 2,
            timeout=300,
            message=f"two drafts; worker:\n{worker.log()[-3000:]}",
        )
        done = db_rows(url, jobs)
        assert [(uid, queue, priority) for uid, queue, priority, _ in done] == [
            (stat_uid, "analysis.stat", "stat"),
            (routine_uid, "analysis", "routine"),
        ]
        assert db_rows(
            url,
            "SELECT count(*) FROM analysis_jobs j JOIN studies s ON s.id = j.study_id WHERE s.study_uid = :u",
            u=cancelled_uid,
        ) == [(0,)]
        [(report_id,)] = db_rows(
            url, "SELECT r.id FROM reports r JOIN studies s ON s.id = r.study_id WHERE s.study_uid = :u", u=stat_uid
        )
        stat_draft = f"draft:{report_id}"
        subjects = "SELECT destination, state FROM deliveries WHERE subject = :s ORDER BY destination"
        wait_until(
            lambda: (
                db_rows(url, subjects, s=stat_draft)
                == [("ehr", "delivered"), ("pacs", "delivered"), ("ris", "delivered")]
            ),
            timeout=120,
            message=f"the stat draft delivered everywhere; worker:\n{worker.log()[-3000:]}",
        )

        assert send_order(mllp_port, orm("ORD-4", "ACC-STAT", control="CA", priority="S")) == "AA"
        withdrawn = f"withdrawn:{report_id}"
        wait_until(
            lambda: (
                db_rows(url, subjects, s=withdrawn)
                == [("ehr", "delivered"), ("pacs", "delivered"), ("ris", "delivered")]
            ),
            timeout=120,
            message=f"the withdrawal delivered everywhere; worker:\n{worker.log()[-3000:]}",
        )
        assert db_rows(url, "SELECT status FROM reports WHERE id = :r", r=report_id) == [("withdrawn",)]

        # The RIS: the draft as preliminary results, then the same order's results posted as wrong.
        stat_messages = [r.er7 for r in ris.received if "ACC-STAT" in r.er7 or stat_uid in r.er7]
        statuses = [
            (str(m.segment("OBR")[25]), {str(obx[11]) for obx in m.segments("OBX")})
            for m in (hl7.parse(text.replace("\n", "\r")) for text in stat_messages)
        ]
        assert statuses == [("P", {"P"}), ("C", {"W"})], statuses
        # The FHIR server: one DiagnosticReport, preliminary then entered-in-error.
        puts = [(r.path, json.loads(r.body)) for r in fhir.requests if r.method == "PUT"]
        stat_puts = [(path, body["status"]) for path, body in puts if stat_uid in json.dumps(body)]
        assert [status for _, status in stat_puts] == ["preliminary", "entered-in-error"]
        assert len({path for path, _ in stat_puts}) == 1
        # The PACS: the draft SR and, beside it, the rejection note that references it.
        found = pacs.post_json("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": stat_uid}})
        held = [pydicom.dcmread(BytesIO(pacs.request("GET", f"/instances/{i}/file"))) for i in found]
        [note] = [ds for ds in held if str(ds.SOPClassUID) == KOS_CLASS]
        [sr] = [ds for ds in held if str(ds.SOPClassUID) != KOS_CLASS and ds.Modality == "SR"]
        assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
        evidence = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
        # The routine study's draft stands; the cancelled study was never drafted or sent.
        assert db_rows(url, "SELECT count(*) FROM deliveries WHERE subject LIKE 'withdrawn:%'") == [(3,)]
