"""FHIR ServiceRequest in and out: the EHR's way of placing an imaging order, mapped onto :class:`OrderMessage`.

Why a mapping of our own: a ServiceRequest says far more than an order record keeps, and a few things in
more ways than one; this module decides once which element means what, so the API route only moves
bytes.  Validation is fhir.resources' **R4B** model (the installed fhir.resources 8.x ships R5 as its
default, R4B and STU3, no R4; ServiceRequest did not change between R4 and R4B, so an R4 resource
validates as it is).  Every refusal is an :class:`InvalidServiceRequest` naming the element, never its
value, so it can go back to the sender in an OperationOutcome and into no log with patient data.

The mapping (documented in one place, here):

* accession number: the ``identifier`` whose ``type`` has code ``ACSN`` of
  ``http://terminology.hl7.org/CodeSystem/v2-0203``; ``PLAC`` and ``FILL`` give the placer's and filler's
  order numbers.
* patient: ``subject.identifier`` (a logical reference), or else the Patient ``subject.reference`` points
  to among ``contained`` (``#id``): its identifier of type ``MR``, else its first identifier with a value.
  The issuer is the identifier's ``assigner.display`` when sent (the namespace a DICOM header's Issuer of
  Patient ID carries), else its ``system`` without a leading ``urn:oid:`` (an OID, as DICOM keeps it).  A
  bare reference (``Patient/123``) is refused: we hold no patient registry to resolve it.
* procedure: ``code.coding[0]`` (code and system) and ``code.text`` (else that coding's display).
* indication: the ``reasonCode`` texts (else their codings' displays), joined by ``; ``.  ``note`` is not
  the indication (it is for the performer: "claustrophobic", "interpreter needed") and is not kept.
* priority: ``stat``, ``asap`` and ``urgent`` are stat; ``routine`` or none is routine.
* ordering provider: ``requester.display``.
* modality: a coding of the DICOM vocabulary (``http://dicom.nema.org/resources/ontology/DCM``) in
  ``category`` or ``code`` whose code looks like a modality (``CT``, ``MR`` ...).
* scheduled time: ``occurrenceDateTime`` or ``occurrencePeriod.start`` with a time (a date alone is not kept:
  it has no time zone).
* status: ``active`` and ``draft`` are a new order (``NW``), or a change (``XO``) of an order this
  resource id already created; ``revoked`` and ``entered-in-error`` cancel (``CA``); ``completed`` changes
  nothing (the study, not the order, says it was done); ``on-hold`` is refused (we keep no held orders, and
  mapping a pause onto discontinue would withdraw drafts for good), as is ``unknown``.
* intent: ``order`` and its kinds (``original-order``, ``filler-order``, ``instance-order``,
  ``reflex-order``); a proposal or plan is not an order and is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from integration.orders.order import InvalidOrder, OrderControl, OrderMessage, OrderPriority
from integration.store.order_tables import Order, OrderStatus

#: HL7 v2 identifier types (table 0203).
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: The DICOM vocabulary (modality codes).
DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: A FHIR resource id.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: What a modality code looks like.
_MODALITY = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
#: ServiceRequest statuses that are an order to act on.
ACTIVE_STATUSES = frozenset({"active", "draft"})
#: ServiceRequest statuses that cancel the order.
CANCEL_STATUSES = frozenset({"revoked", "entered-in-error"})
#: Intents that are an order.
ORDER_INTENTS = frozenset({"order", "original-order", "filler-order", "instance-order", "reflex-order"})
_STAT_PRIORITIES = frozenset({"stat", "asap", "urgent"})
#: Longest validation message sent back.
_MAX_MESSAGE = 200


class InvalidServiceRequest(InvalidOrder):
    """A ServiceRequest we cannot take; the message names the element, never its value.

    Attributes
    ----------
    code : str
        The OperationOutcome issue type: ``structure`` (not JSON, not a ServiceRequest), ``invalid``
        (fails validation or the mapping), ``required`` (a required element is missing) or ``not-supported``.
    """

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ServiceRequestIn:
    """A validated ServiceRequest and what it asks of us.

    Attributes
    ----------
    resource : ServiceRequest
        The validated resource (R4B model).
    resource_id : str or None
        Its ``id`` (None when the client sent none).
    version_id : str or None
        Its ``meta.versionId``.
    status : str
        Its ``status``.
    """

    resource: ServiceRequest
    resource_id: str | None
    version_id: str | None
    status: str

    @property
    def changes_nothing(self) -> bool:
        """True for a ``completed`` ServiceRequest: nothing to apply."""
        return self.status == "completed"


def read_service_request(body: bytes) -> ServiceRequestIn:
    """Parse and validate a ServiceRequest body (JSON).

    Parameters
    ----------
    body : bytes
        The request body.

    Returns
    -------
    ServiceRequestIn
        The validated resource.

    Raises
    ------
    InvalidServiceRequest
        When the body is not UTF-8 JSON, not a ServiceRequest, fails R4B validation, or has a status or
        intent we do not take.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidServiceRequest("the body is not JSON (UTF-8)", "structure") from None
    if not isinstance(data, dict):
        raise InvalidServiceRequest("the body is not a JSON object", "structure")
    if data.get("resourceType") != "ServiceRequest":
        raise InvalidServiceRequest("resourceType is not ServiceRequest", "structure")
    try:
        resource = ServiceRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidServiceRequest(_validation_message(exc)) from None
    except (TypeError, ValueError):  # fhir.resources' own checks, outside pydantic
        raise InvalidServiceRequest("the ServiceRequest does not validate as FHIR R4") from None
    status = str(resource.status)
    if status == "on-hold":
        raise InvalidServiceRequest(
            "status on-hold is not supported: orders are not held here; send revoked to cancel, or active",
            "not-supported",
        )
    if status not in ACTIVE_STATUSES | CANCEL_STATUSES | {"completed"}:
        raise InvalidServiceRequest("status must be draft, active, revoked, entered-in-error or completed")
    if str(resource.intent) not in ORDER_INTENTS:
        raise InvalidServiceRequest("intent is not an order (use order, original-order or filler-order)")
    version = resource.meta.versionId if resource.meta is not None else None
    return ServiceRequestIn(resource, resource.id, str(version) if version else None, status)


def _validation_message(exc: ValidationError) -> str:
    """Name the failing elements and what is wrong, dropping any message that quotes the value sent."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "ServiceRequest"
        message = str(error.get("msg", "invalid"))
        sent = error.get("input")
        if (isinstance(sent, str) and len(sent) >= 3 and sent in message) or len(message) > _MAX_MESSAGE:
            message = "invalid value"
        parts.append(f"{where}: {message}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def order_message(request: ServiceRequestIn, *, exists: bool, message_id: str | None = None) -> OrderMessage:
    """Map a validated ServiceRequest onto an order message.

    Parameters
    ----------
    request : ServiceRequestIn
        From :func:`read_service_request` (not ``completed``: that changes nothing).
    exists : bool
        Whether this resource already created an order (then ``active`` is a change, ``XO``).
    message_id : str, optional
        What the order's history names the request by (resource id and version).

    Returns
    -------
    OrderMessage
        The order control.

    Raises
    ------
    InvalidServiceRequest
        Without an accession number or patient, for a bare patient reference, or when a value is too long
        for the order record.
    """
    resource = request.resource
    if request.status in CANCEL_STATUSES:
        control = OrderControl.CANCEL
    else:
        control = OrderControl.CHANGE if exists else OrderControl.NEW
    identifiers = {code: value for code, value in _typed_identifiers(resource.identifier or [])}
    accession = identifiers.get("ACSN")
    if not accession:
        raise InvalidServiceRequest(f"no identifier of type ACSN ({V2_0203}): the accession number", "required")
    patient_id, issuer = _patient(resource)
    coding = resource.code.coding[0] if resource.code is not None and resource.code.coding else None
    procedure_text = resource.code.text if resource.code is not None else None
    try:
        return OrderMessage(
            control=control,
            accession_number=accession,
            patient_id=patient_id,
            issuer_of_patient_id=issuer,
            placer_order_number=identifiers.get("PLAC"),
            filler_order_number=identifiers.get("FILL"),
            procedure_code=coding.code if coding is not None else None,
            procedure_coding_system=coding.system if coding is not None else None,
            procedure_text=procedure_text or (coding.display if coding is not None else None),
            indication=_indication(resource),
            priority=OrderPriority.STAT if str(resource.priority or "") in _STAT_PRIORITIES else OrderPriority.ROUTINE,
            ordering_provider=resource.requester.display if resource.requester is not None else None,
            modality=_modality(resource),
            scheduled_at=_scheduled(resource),
            message_id=message_id,
        )
    except InvalidOrder as exc:
        raise InvalidServiceRequest(str(exc)) from None


def _typed_identifiers(identifiers: list[Identifier]) -> list[tuple[str, str]]:
    """``(v2-0203 code, value)`` of the identifiers typed by that table (first of each code wins)."""
    found: list[tuple[str, str]] = []
    for identifier in identifiers:
        if not identifier.value or identifier.type is None:
            continue
        for coding in identifier.type.coding or []:
            if coding.system == V2_0203 and coding.code and all(code != coding.code for code, _ in found):
                found.append((str(coding.code), str(identifier.value)))
    return found


def _patient(resource: ServiceRequest) -> tuple[str, str]:
    """The patient's ID and issuer from ``subject`` (see the module docstring)."""
    subject = resource.subject
    if subject.identifier is not None and subject.identifier.value:
        return str(subject.identifier.value), _issuer(subject.identifier)
    reference = subject.reference or ""
    if reference.startswith("#"):
        patient = next((c for c in resource.contained or [] if isinstance(c, Patient) and c.id == reference[1:]), None)
        if patient is None:
            raise InvalidServiceRequest("subject points to a contained Patient that is not there", "required")
        chosen = _patient_identifier(patient.identifier or [])
        if chosen is None:
            raise InvalidServiceRequest("the contained Patient has no identifier with a value", "required")
        return str(chosen.value), _issuer(chosen)
    raise InvalidServiceRequest(
        "subject is a reference without an identifier: send subject.identifier (value and system) "
        "or a contained Patient with an identifier",
        "required",
    )


def _patient_identifier(identifiers: list[Identifier]) -> Identifier | None:
    with_value = [identifier for identifier in identifiers if identifier.value]
    for identifier in with_value:
        codes = {(c.system, c.code) for c in (identifier.type.coding or [])} if identifier.type else set()
        if (V2_0203, "MR") in codes:
            return identifier
    return with_value[0] if with_value else None


def _issuer(identifier: Identifier) -> str:
    if identifier.assigner is not None and identifier.assigner.display:
        return str(identifier.assigner.display).strip()
    system = str(identifier.system or "")
    return system.removeprefix("urn:oid:")


def _indication(resource: ServiceRequest) -> str | None:
    reasons = []
    for reason in resource.reasonCode or []:
        text = reason.text or "; ".join(c.display for c in reason.coding or [] if c.display)
        if text and text.strip():
            reasons.append(text.strip())
    return "; ".join(reasons) or None


def _modality(resource: ServiceRequest) -> str | None:
    concepts = [*(resource.category or []), *([resource.code] if resource.code is not None else [])]
    for concept in concepts:
        for coding in concept.coding or []:
            if coding.system == DCM and coding.code and _MODALITY.fullmatch(coding.code):
                return str(coding.code)
    return None


def _scheduled(resource: ServiceRequest) -> datetime | None:
    moment = resource.occurrenceDateTime
    if moment is None and resource.occurrencePeriod is not None:
        moment = resource.occurrencePeriod.start
    if isinstance(moment, datetime) and moment.utcoffset() is not None:
        return moment.astimezone(UTC)
    return None  # a date alone (FHIR requires a zone with any time)


#: How each order status is shown as a ServiceRequest status.
_STATUS_OUT = {
    OrderStatus.SCHEDULED.value: "active",
    OrderStatus.CANCELLED.value: "revoked",
    OrderStatus.DISCONTINUED.value: "revoked",
}


def service_request_json(order: Order) -> dict[str, Any]:
    """The stored order as a ServiceRequest (validated with the R4B model), for ``GET`` and the answers.

    Parameters
    ----------
    order : Order
        The order (with a ``fhir_id`` for the resource's id; patient data: sent to the caller, never logged).

    Returns
    -------
    dict
        The resource as JSON data.
    """
    identifiers: list[dict[str, Any]] = [_typed("ACSN", order.accession_number)]
    if order.placer_order_number:
        identifiers.append(_typed("PLAC", order.placer_order_number))
    if order.filler_order_number:
        identifiers.append(_typed("FILL", order.filler_order_number))
    patient: dict[str, Any] = {"value": order.patient_id}
    issuer = order.issuer_of_patient_id
    if issuer and re.fullmatch(r"[0-2](\.\d+)+", issuer):
        patient["system"] = f"urn:oid:{issuer}"
    elif issuer and ":" in issuer:
        patient["system"] = issuer
    elif issuer:
        patient["assigner"] = {"display": issuer}
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": order.fhir_id,
        "meta": {"lastUpdated": (order.updated_at or order.created_at).astimezone(UTC).isoformat()},
        "identifier": identifiers,
        "status": _STATUS_OUT.get(order.status, "unknown"),
        "intent": "order",
        "priority": "stat" if order.priority == OrderPriority.STAT.value else "routine",
        "subject": {"type": "Patient", "identifier": patient},
    }
    code: dict[str, Any] = {}
    if order.procedure_code:
        coding = {"code": order.procedure_code, "system": order.procedure_coding_system}
        code["coding"] = [{k: v for k, v in coding.items() if v}]
    if order.procedure_text:
        code["text"] = order.procedure_text
    if code:
        resource["code"] = code
    if order.modality:
        resource["category"] = [{"coding": [{"system": DCM, "code": order.modality}]}]
    if order.scheduled_at is not None:
        resource["occurrenceDateTime"] = order.scheduled_at.astimezone(UTC).isoformat()
    if order.ordering_provider:
        resource["requester"] = {"display": order.ordering_provider}
    if order.indication:
        resource["reasonCode"] = [{"text": order.indication}]
    validated: dict[str, Any] = ServiceRequest.model_validate(resource).model_dump(mode="json", exclude_none=True)
    return validated


def _typed(code: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": V2_0203, "code": code}]}, "value": value}


def operation_outcome(message: str, code: str = "invalid", severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue (``diagnostics``: the message, which must hold no patient data).

    Parameters
    ----------
    message : str
        What went wrong and what to do.
    code : str
        The issue type (``invalid``, ``required``, ``structure``, ``not-found``, ``security``, ``forbidden``,
        ``conflict``, ``processing``, ``not-supported``, ``login``, ``informational`` ...).
    severity : str
        ``error``, ``warning`` or ``information``.

    Returns
    -------
    dict
        The resource as JSON data.
    """
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": message}]}
