"""One order message, whatever carried it: the value object HL7 ORM/OMI and FHIR ServiceRequest both become.

The parsers (:mod:`integration.orders.hl7_in`, :mod:`integration.orders.fhir_in`) build an
:class:`OrderMessage`; :func:`integration.store.orders.apply_order` applies it.  It validates itself, so
nothing half-understood reaches the database: a missing accession number or patient ID raises
:class:`InvalidOrder` with a reason that is safe to send back in an ACK or an HTTP error (it names the field,
never its value).  Free text (indication, procedure, provider) is untrusted: it is cleaned here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from integration.findings import clean_text

#: Column lengths of ``orders`` (see integration/store/order_tables.py).
ACCESSION_LENGTH = 16
#: Longest indication kept (characters), as for a header's clinical question.
MAX_INDICATION_CHARS = 500
PATIENT_ID_LENGTH = 64
CODE_LENGTH = 64
TEXT_LENGTH = 256


class InvalidOrder(ValueError):
    """An order message that cannot be applied; the message names the field and is safe to send back."""


class OrderControl(enum.StrEnum):
    """HL7 ORC-1 order controls we act on (FHIR ServiceRequest statuses map onto them)."""

    NEW = "NW"
    CHANGE = "XO"
    CANCEL = "CA"
    DISCONTINUE = "DC"


class OrderPriority(enum.StrEnum):
    """What the order's priority means here: stat work is queued and listed first."""

    ROUTINE = "routine"
    STAT = "stat"


@dataclass(frozen=True)
class OrderMessage:
    """One order control for one order, as received.

    Attributes
    ----------
    control : OrderControl
        NW (new), XO (change), CA (cancel), DC (discontinue).
    accession_number : str
        The accession number (1-16 characters): the key a study matches on.
    patient_id : str
        The patient's ID (1-64 characters).
    issuer_of_patient_id : str
        Who assigned the ID (``""`` when not sent); IDs of different issuers are different patients.
    placer_order_number, filler_order_number : str or None
        The RIS's and the placer's order numbers.
    procedure_code, procedure_coding_system, procedure_text : str or None
        The requested procedure.
    indication : str or None
        Reason for exam (cleaned; at most 500 characters).
    priority : OrderPriority
        ``stat`` or ``routine``.
    ordering_provider : str or None
        The ordering provider's name as display text.
    modality : str or None
        The ordered modality (e.g. ``CT``).
    scheduled_at : datetime or None
        When the procedure is scheduled (aware UTC).
    message_id : str or None
        HL7 MSH-10 or the FHIR resource id/version.

    Raises
    ------
    InvalidOrder
        When a required field is missing or too long, or a time is naive.
    """

    control: OrderControl
    accession_number: str
    patient_id: str
    issuer_of_patient_id: str = ""
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    procedure_code: str | None = None
    procedure_coding_system: str | None = None
    procedure_text: str | None = None
    indication: str | None = None
    priority: OrderPriority = OrderPriority.ROUTINE
    ordering_provider: str | None = None
    modality: str | None = None
    scheduled_at: datetime | None = None
    message_id: str | None = None

    def __post_init__(self) -> None:
        _required(self.accession_number, "accession number", ACCESSION_LENGTH)
        _required(self.patient_id, "patient ID", PATIENT_ID_LENGTH)
        if len(self.issuer_of_patient_id) > PATIENT_ID_LENGTH:
            raise InvalidOrder(f"issuer of patient ID longer than {PATIENT_ID_LENGTH} characters")
        for name, limit in (
            ("placer_order_number", CODE_LENGTH),
            ("filler_order_number", CODE_LENGTH),
            ("procedure_code", CODE_LENGTH),
            ("procedure_coding_system", CODE_LENGTH),
            ("modality", 16),
        ):
            value = getattr(self, name)
            if value is not None and len(value) > limit:
                raise InvalidOrder(f"{name.replace('_', ' ')} longer than {limit} characters")
        for name, limit in (
            ("procedure_text", TEXT_LENGTH),
            ("ordering_provider", TEXT_LENGTH),
            ("indication", MAX_INDICATION_CHARS),
        ):
            value = getattr(self, name)
            text = clean_text(value, one_line=True)[:limit].strip() if value is not None else ""
            object.__setattr__(self, name, text or None)
        if self.scheduled_at is not None and self.scheduled_at.utcoffset() is None:
            raise InvalidOrder("scheduled time without a time zone")
        object.__setattr__(self, "control", OrderControl(self.control))
        object.__setattr__(self, "priority", OrderPriority(self.priority))


def _required(value: str, what: str, limit: int) -> None:
    if not value or not value.strip():
        raise InvalidOrder(f"the order has no {what}")
    if len(value) > limit:
        raise InvalidOrder(f"{what} longer than {limit} characters")
