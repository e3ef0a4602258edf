"""FHIR ServiceRequest -> order message: the mapping of each element, statuses, and refusals that name no value."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from integration.orders.fhir_in import (
    DCM,
    V2_0203,
    InvalidServiceRequest,
    operation_outcome,
    order_message,
    read_service_request,
    service_request_json,
)
from integration.orders.order import OrderControl, OrderPriority
from integration.store.order_tables import Order

PATIENT = "PAT-0042"


def identifier(code: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": V2_0203, "code": code}]}, "value": value}


def service_request(**changes: Any) -> dict[str, Any]:
    """A complete R4 ServiceRequest for a CT chest (a contained Patient), with ``changes`` applied."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": "sr-1",
        "meta": {"versionId": "2"},
        "identifier": [identifier("PLAC", "PL-9"), identifier("ACSN", "ACC-1001"), identifier("FILL", "FI-7")],
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "category": [{"coding": [{"system": DCM, "code": "CT"}]}],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}],
            "text": "CT chest",
        },
        "contained": [
            {
                "resourceType": "Patient",
                "id": "pat",
                "identifier": [
                    {"system": "http://example.org/ssn", "value": "123-45-678"},
                    {
                        "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                        "system": "urn:oid:1.2.826.0.1.99",
                        "value": PATIENT,
                    },
                ],
            }
        ],
        "subject": {"reference": "#pat"},
        "occurrenceDateTime": "2026-12-05T10:30:00+01:00",
        "requester": {"display": "Dr. Ada Lovelace"},
        "reasonCode": [{"text": "Persistent cough,\x07 rule out mass"}, {"coding": [{"display": "Weight loss"}]}],
        "note": [{"text": "claustrophobic"}],
    }
    resource.update(changes)
    return resource


def read(resource: dict[str, Any]) -> Any:
    return read_service_request(json.dumps(resource).encode())


def test_every_element_maps_onto_the_order_message() -> None:
    parsed = read(service_request())
    assert (parsed.resource_id, parsed.version_id, parsed.status) == ("sr-1", "2", "active")
    message = order_message(parsed, exists=False, message_id="sr-1/_history/2")
    assert message.control is OrderControl.NEW
    assert (message.accession_number, message.placer_order_number, message.filler_order_number) == (
        "ACC-1001",
        "PL-9",
        "FI-7",
    )
    # The contained Patient's MR identifier, not its first; the issuer is the OID without urn:oid:.
    assert (message.patient_id, message.issuer_of_patient_id) == (PATIENT, "1.2.826.0.1.99")
    assert (message.procedure_code, message.procedure_coding_system, message.procedure_text) == (
        "24627-2",
        "http://loinc.org",
        "CT chest",
    )
    # reasonCode texts, else displays, cleaned (the BEL is gone); the note is not the indication.
    assert message.indication == "Persistent cough, rule out mass; Weight loss"
    assert message.priority is OrderPriority.ROUTINE and message.modality == "CT"
    assert message.ordering_provider == "Dr. Ada Lovelace"
    assert message.scheduled_at == datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    assert message.message_id == "sr-1/_history/2"
    assert order_message(parsed, exists=True).control is OrderControl.CHANGE


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("stat", "stat"), ("asap", "stat"), ("urgent", "stat"), ("routine", "routine"), (None, "routine")],
)
def test_priority(priority: str | None, expected: str) -> None:
    resource = service_request(priority=priority)
    if priority is None:
        del resource["priority"]
    assert order_message(read(resource), exists=False).priority == expected


def test_statuses_map_onto_order_controls() -> None:
    assert order_message(read(service_request(status="draft")), exists=False).control is OrderControl.NEW
    for status in ("revoked", "entered-in-error"):
        assert order_message(read(service_request(status=status)), exists=True).control is OrderControl.CANCEL
    assert read(service_request(status="completed")).changes_nothing
    with pytest.raises(InvalidServiceRequest, match="on-hold is not supported") as held:
        read(service_request(status="on-hold"))
    assert held.value.code == "not-supported"
    for status in ("unknown", "bogus"):
        with pytest.raises(InvalidServiceRequest, match="status must be"):
            read(service_request(status=status))
    with pytest.raises(InvalidServiceRequest, match="intent is not an order"):
        read(service_request(intent="proposal"))


def test_patient_from_a_logical_reference_and_its_issuer() -> None:
    subject = {"reference": "Patient/77", "identifier": {"system": "http://hospital.example/mrn", "value": PATIENT}}
    message = order_message(read(service_request(subject=subject, contained=[])), exists=False)
    assert (message.patient_id, message.issuer_of_patient_id) == (PATIENT, "http://hospital.example/mrn")
    # An assigner's display is the namespace a DICOM header's Issuer of Patient ID carries: it wins.
    subject["identifier"]["assigner"] = {"display": "NORTHHOSP"}  # type: ignore[index]
    message = order_message(read(service_request(subject=subject)), exists=False)
    assert message.issuer_of_patient_id == "NORTHHOSP"


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"subject": {"reference": "Patient/77"}}, "subject is a reference without an identifier"),
        ({"subject": {"reference": "#missing"}}, "contained Patient that is not there"),
        ({"contained": [{"resourceType": "Patient", "id": "pat"}]}, "contained Patient has no identifier"),
        ({"identifier": [identifier("PLAC", "PL-9")]}, "no identifier of type ACSN"),
        ({"identifier": [identifier("ACSN", "A" * 17)]}, "accession number longer than 16"),
    ],
)
def test_mapping_refusals_name_the_element(changes: dict[str, Any], refusal: str) -> None:
    with pytest.raises(InvalidServiceRequest, match=refusal) as refused:
        order_message(read(service_request(**changes)), exists=False)
    assert PATIENT not in str(refused.value)


@pytest.mark.parametrize(
    ("body", "refusal", "code"),
    [
        (b"\xff\xfe", "not JSON", "structure"),
        (b"{not json", "not JSON", "structure"),
        (b"[]", "not a JSON object", "structure"),
        (json.dumps({"resourceType": "Patient"}).encode(), "resourceType is not ServiceRequest", "structure"),
        (json.dumps(service_request(priority=5)).encode(), "priority: Input should be a valid string", "invalid"),
        (json.dumps(service_request(surprise=1)).encode(), "surprise: Extra inputs", "invalid"),
        (json.dumps({**service_request(), "status": None}).encode(), "status", "invalid"),
    ],
)
def test_validation_refusals(body: bytes, refusal: str, code: str) -> None:
    with pytest.raises(InvalidServiceRequest, match=refusal) as refused:
        read_service_request(body)
    assert refused.value.code == code


def test_a_validation_message_never_quotes_the_value_sent() -> None:
    resource = service_request(occurrenceDateTime="Smith^John 1970")
    with pytest.raises(InvalidServiceRequest) as refused:
        read(resource)
    assert "occurrenceDateTime" in str(refused.value) and "Smith" not in str(refused.value)
    naive = service_request(occurrenceDateTime="2026-12-05T10:30:00")  # a time needs a zone in FHIR
    with pytest.raises(InvalidServiceRequest, match="occurrenceDateTime"):
        read(naive)


def test_a_date_alone_is_not_a_scheduled_time() -> None:
    resource = service_request(occurrenceDateTime="2026-12-05")
    assert order_message(read(resource), exists=False).scheduled_at is None
    period = service_request(occurrencePeriod={"start": "2026-12-05T08:00:00Z"})
    del period["occurrenceDateTime"]
    assert order_message(read(period), exists=False).scheduled_at == datetime(2026, 12, 5, 8, tzinfo=UTC)


def test_the_stored_order_reads_back_as_a_valid_service_request() -> None:
    message = order_message(read(service_request(priority="stat")), exists=False)
    fields: tuple[str, ...] = ("accession_number", "patient_id", "issuer_of_patient_id", "placer_order_number")
    fields += ("filler_order_number", "procedure_code", "procedure_coding_system", "procedure_text", "indication")
    fields += ("ordering_provider",)
    order = Order(
        **{name: getattr(message, name) for name in (*fields, "modality", "scheduled_at")},
        priority="stat",
        status="scheduled",
        fhir_id="sr-1",
        created_at=datetime(2026, 12, 5, tzinfo=UTC),
    )
    resource = service_request_json(order)
    assert resource["id"] == "sr-1" and resource["status"] == "active" and resource["priority"] == "stat"
    again = order_message(read(copy.deepcopy(resource)), exists=True)
    assert again.control is OrderControl.CHANGE
    assert all(getattr(again, name) == getattr(message, name) for name in (*fields, "modality", "scheduled_at"))
    order.status = "cancelled"
    assert service_request_json(order)["status"] == "revoked"


def test_operation_outcome_is_valid_r4() -> None:
    from fhir.resources.R4B.operationoutcome import OperationOutcome

    outcome = operation_outcome("the body is not JSON (UTF-8)", "structure")
    assert OperationOutcome.model_validate(outcome).issue[0].diagnostics == "the body is not JSON (UTF-8)"
