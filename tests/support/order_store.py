"""Orders in the store, for tests: order messages applied, studies recorded by the real ingest, drafts."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from integration.intake.header import InstanceHeader
from integration.orders.order import OrderControl, OrderMessage
from integration.store.ingest import record_instance
from integration.store.jobs import complete_stable_studies, mark_sent
from integration.store.orders import OrderResult, apply_order
from integration.store.reports import DraftRecord, SkippedJob, claim_job, record_draft
from integration.store.session import engine_for, session_scope
from integration.store.tables import Study, utcnow

ACCESSION = "ACC100"
PATIENT = "MRN1"


def message(control: str = "NW", **fields: object) -> OrderMessage:
    values: dict[str, object] = {"accession_number": ACCESSION, "patient_id": PATIENT, "message_id": "m1"}
    values.update(fields)
    return OrderMessage(control=OrderControl(control), **values)  # type: ignore[arg-type]


def apply(url: str, msg: OrderMessage, site_id: int | None = None, sender: str = "RIS^NORTH") -> OrderResult:
    with session_scope(url) as session:
        return apply_order(session, msg, source="hl7", sender=sender, site_id=site_id, now=utcnow())


def ingest(
    url: str,
    *,
    accession: str | None = ACCESSION,
    patient: str | None = PATIENT,
    issuer: str | None = None,
    received_at: datetime | None = None,
    site_id: int | None = None,
    study_uid: str | None = None,
    storage_path: str | None = None,
) -> int:
    """Record one instance of a new study through the real ingest; return the study's id."""
    header = InstanceHeader(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=generate_uid(),
        study_uid=study_uid or generate_uid(),
        series_uid=generate_uid(),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        modality="CT",
        patient_key="k",
        accession_number=accession,
        patient_id=patient,
        issuer_of_patient_id=issuer,
    )
    with engine_for(url).connect() as connection:
        receipt = record_instance(
            connection,
            header,
            storage_path=storage_path or f"{header.sop_instance_uid}.dcm",
            size_bytes=10,
            calling_ae="CT1",
            received_at=received_at or utcnow() - timedelta(minutes=5),
            stable_seconds=1,
            site_id=site_id,
        )
    assert receipt.added
    return receipt.study_id


def study(url: str, study_id: int) -> Study:
    with session_scope(url) as session:
        row = session.get(Study, study_id)
        assert row is not None
        session.expunge(row)
        return row


def complete(url: str) -> list[int]:
    with session_scope(url) as session:
        return complete_stable_studies(session, utcnow(), "analysis", stat_queue="analysis.stat")


def a_draft() -> DraftRecord:
    return DraftRecord(
        model_id="smoke/llava",
        model_revision="abc",
        model_family="llava",
        prompt_version="ct/v1",
        structured=True,
        findings={},
        text="Normal.",
        raw_output="Normal.",
        evidence=[],
        timings={},
        tokens_in=1,
        tokens_out=1,
    )


def drafted(url: str, study_id: int) -> int:
    """Complete the study, claim its job and record a draft (as the worker does); return the report id."""
    (job_id,) = complete(url)
    with session_scope(url) as session:
        mark_sent(session, job_id, utcnow())
    with session_scope(url) as session:
        claimed = claim_job(session, job_id, max_attempts=3, now=utcnow())
        assert not isinstance(claimed, SkippedJob)
    with session_scope(url) as session:
        return record_draft(session, job_id, a_draft(), utcnow())
