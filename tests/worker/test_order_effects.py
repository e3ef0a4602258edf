"""What a RIS order changes in the flow, with real parts: listener (storescu), PostgreSQL, Redis, the tiny model.

The order is applied with the store's :func:`~integration.store.orders.apply_order` (what the HL7 and FHIR
endpoints call; their own tests send it over MLLP and HTTP).  The study then arrives over C-STORE at the real
listener, which links it to the order, completes it and sends its job to a queue.  The analysis task runs in
this process (``analyze_study``, the worker's code as it is) so the exact prompt can be captured: on the tiny
real transformers model (trusted), and through a real OpenAI-compatible server (``transformers serve``) behind
a recording proxy for a model server outside the trust boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from integration.config import Settings, install_settings
from integration.orders.order import OrderControl, OrderMessage, OrderPriority
from integration.samples import write_ct_series
from integration.store.orders import OrderResult, apply_order
from integration.store.session import session_scope
from integration.store.tables import utcnow
from models.backend import VisionLanguageBackend
from models.openai_backend import OpenAICompatibleBackend
from tests.imaging.test_clinical_question import PromptRecordingBackend
from tests.support.model_server import RecordingProxy, TransformersServe
from tests.support.peers import ListenerProcess, storescu, wait_until
from tests.support.records import db_rows
from worker.tasks import analysis

INDICATION = "Fall from a ladder; rib fracture?"
HEADER_QUESTION = "Routine follow-up"
PATIENT = "MRN-4711"

RunTask = Callable[[int, VisionLanguageBackend], str]


def ordered_study(directory: Path, accession: str, patient: str = PATIENT) -> list[Path]:
    """Two CT slices carrying the accession number and patient ID, and a clinical question of their own."""
    files = write_ct_series(directory, 2, rows=32, columns=32)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.AccessionNumber, ds.PatientID, ds.IssuerOfPatientID = accession, patient, "NORTH"
        item = Dataset()
        item.ReasonForTheRequestedProcedure = HEADER_QUESTION
        ds.RequestAttributesSequence = DicomSequence([item])
        ds.save_as(path)
    return files


def order(url: str, accession: str, control: str = "NW", stat: bool = False) -> OrderResult:
    message = OrderMessage(
        control=OrderControl(control),
        accession_number=accession,
        patient_id=PATIENT,
        issuer_of_patient_id="NORTH",
        indication=INDICATION,
        priority=OrderPriority.STAT if stat else OrderPriority.ROUTINE,
        modality="CT",
    )
    with session_scope(url) as session:
        return apply_order(session, message, source="hl7", sender="RIS^NORTH", site_id=None, now=utcnow())


def sent_job(url: str, accession: str) -> tuple[int, str, str, str]:
    """Wait until the listener sent the study's job; return its id, queue, priority and the study's priority."""
    query = (
        "SELECT j.id, j.queue, j.priority, s.priority FROM analysis_jobs j JOIN studies s ON s.id = j.study_id"
        " WHERE s.accession_number = :accession AND j.sent_at IS NOT NULL"
    )
    wait_until(lambda: len(db_rows(url, query, accession=accession)) == 1, timeout=60, message="the job sent")
    [(job_id, queue, priority, study_priority)] = db_rows(url, query, accession=accession)
    return job_id, queue, priority, study_priority


@pytest.fixture
def run_task(listener: ListenerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunTask]:
    """Run ``analyze_study`` here, against the listener's database and files, with the given backend."""

    def run(job_id: int, backend: VisionLanguageBackend) -> str:
        monkeypatch.setattr(analysis, "model_backend", lambda settings, name: (backend, 0.0))
        return str(analysis.analyze_study(job_id))

    install_settings(
        Settings(
            database_url=listener.database_url,
            broker_url=listener.broker_url,
            data_dir=listener.data_dir,
            max_new_tokens=4,
            image_size=64,
        )
    )
    yield run
    install_settings(None)


def test_a_stat_order_goes_to_the_stat_queue_and_its_indication_into_the_prompt(
    listener: ListenerProcess, run_task: RunTask, smoke_model_dir: Path, tmp_path: Path
) -> None:
    url = listener.database_url
    placed = order(url, "ACC-STAT-1", stat=True)
    assert placed.outcome == "created" and placed.studies == []
    assert storescu(listener.port, ordered_study(tmp_path / "ct", "ACC-STAT-1")).returncode == 0
    job_id, queue, priority, study_priority = sent_job(url, "ACC-STAT-1")
    assert (queue, priority, study_priority) == ("analysis.stat", "stat", "stat")
    broker = redis.Redis.from_url(listener.broker_url)
    assert broker.llen("analysis.stat") == 1 and broker.llen("analysis") == 0  # the stat queue has it
    assert db_rows(url, "SELECT order_id, order_problem FROM studies") == [(placed.order_id, None)]

    backend = PromptRecordingBackend(smoke_model_dir, device="cpu", max_new_tokens=4)
    assert run_task(job_id, backend).startswith("report ")
    (prompt,) = backend.rendered
    assert f'The referring clinician asks: "{INDICATION}"' in prompt  # the order's, not the header's
    assert HEADER_QUESTION not in prompt
    assert db_rows(url, "SELECT status FROM reports") == [("draft",)]
    assert INDICATION not in listener.log()  # patient data stays out of the log


@pytest.fixture
def server(smoke_model_server: TransformersServe) -> TransformersServe:
    """The session's ``transformers serve`` (tests/conftest.py)."""
    return smoke_model_server


def test_an_untrusted_model_server_never_gets_the_indication(
    listener: ListenerProcess, run_task: RunTask, server: TransformersServe, smoke_model_dir: Path, tmp_path: Path
) -> None:
    url = listener.database_url
    order(url, "ACC-OUT-1")
    assert storescu(listener.port, ordered_study(tmp_path / "ct", "ACC-OUT-1")).returncode == 0
    job_id, queue, _, _ = sent_job(url, "ACC-OUT-1")
    assert queue == "analysis"
    proxy = RecordingProxy(server.url)
    try:
        backend = OpenAICompatibleBackend(
            proxy.url, model=str(smoke_model_dir), family="llava", max_new_tokens=4, outside_trust_boundary=True
        )
        assert run_task(job_id, backend).startswith("report ")
        [sent] = proxy.chat_requests()
    finally:
        proxy.close()
    for text in (INDICATION, "ladder", "rib fracture", HEADER_QUESTION, PATIENT, "ACC-OUT-1"):
        assert text.encode() not in sent.body, f"{text!r} left the trust boundary"
    [(findings,)] = db_rows(url, "SELECT findings FROM reports")
    assert any("clinical question was not sent" in p for p in findings["problems"])


def test_a_cancel_before_drafting_means_no_draft(
    listener: ListenerProcess, run_task: RunTask, smoke_model_dir: Path, tmp_path: Path
) -> None:
    url = listener.database_url
    # cancelled while its job waits in the queue: the job is cancelled, its delivery drafts nothing
    order(url, "ACC-CA-1")
    assert storescu(listener.port, ordered_study(tmp_path / "one", "ACC-CA-1")).returncode == 0
    job_id, _, _, _ = sent_job(url, "ACC-CA-1")
    cancelled = order(url, "ACC-CA-1", control="CA")
    assert cancelled.outcome == "cancelled" and len(cancelled.studies) == 1 and cancelled.withdrawn_reports == []
    backend = PromptRecordingBackend(smoke_model_dir, device="cpu", max_new_tokens=4)
    assert run_task(job_id, backend) == "job already cancelled"
    assert not hasattr(backend, "rendered")  # the model was never asked

    # cancelled before the study arrived: the study is complete but never queued
    order(url, "ACC-CA-2")
    order(url, "ACC-CA-2", control="CA")
    assert storescu(listener.port, ordered_study(tmp_path / "two", "ACC-CA-2")).returncode == 0
    wait_until(
        lambda: db_rows(url, "SELECT state FROM studies WHERE accession_number = 'ACC-CA-2'") == [("cancelled",)],
        timeout=60,
        message="the study cancelled on completion",
    )
    assert db_rows(url, "SELECT j.state FROM analysis_jobs j ORDER BY j.id") == [("cancelled",)]
    assert db_rows(url, "SELECT count(*) FROM reports") == [(0,)]
    assert db_rows(url, "SELECT state FROM studies ORDER BY id") == [("cancelled",), ("cancelled",)]
