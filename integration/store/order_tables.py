"""Tables of the RIS side: orders with their history, inbound HL7 messages (idempotency), MPPS steps.

An order is what the RIS asked for (accession number, patient, procedure, indication, priority); a study
links to it by accession number and patient ID with issuer (``studies.order_id``).  Each HL7 message or
FHIR ServiceRequest that changed an order is an :class:`OrderEvent`.  :class:`InboundMessage` remembers the
ACK of every HL7 message by sender and message control id, so a message sent again gets the same answer and
changes nothing.  :class:`PerformedStep` is one Modality Performed Procedure Step (N-CREATE / N-SET).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from integration.store.tables import AE_LENGTH, UID_LENGTH, Base, UTCDateTime, utcnow


class OrderStatus(enum.StrEnum):
    """Where an order stands (set by its order controls)."""

    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"
    DISCONTINUED = "discontinued"


class StepStatus(enum.StrEnum):
    """Performed Procedure Step Status (0040,0252) of an MPPS."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class Order(Base):
    """One RIS order (an imaging service request), keyed by accession number and patient with issuer.

    ``issuer_of_patient_id`` is ``""`` when the RIS sent none, so the key is unique on every database.
    Patient data: never logged.
    """

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accession_number: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    placer_order_number: Mapped[str | None] = mapped_column(String(64))
    filler_order_number: Mapped[str | None] = mapped_column(String(64))
    procedure_code: Mapped[str | None] = mapped_column(String(64))
    procedure_coding_system: Mapped[str | None] = mapped_column(String(64))
    procedure_text: Mapped[str | None] = mapped_column(String(256))
    #: Reason for exam / indication (cleaned, at most 500 characters): goes into the prompt.
    indication: Mapped[str | None] = mapped_column(Text)
    #: ``routine`` or ``stat``.
    priority: Mapped[str] = mapped_column(String(8), default="routine", server_default="routine")
    ordering_provider: Mapped[str | None] = mapped_column(String(256))
    modality: Mapped[str | None] = mapped_column(String(16))
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.SCHEDULED.value)
    #: ``hl7`` or ``fhir``: how the order arrived first.
    source: Mapped[str] = mapped_column(String(8))
    #: Who sent it: HL7 ``<sending application>^<sending facility>`` or the API user.
    sender: Mapped[str] = mapped_column(String(128))
    #: The FHIR ServiceRequest id, when it came (or was last changed) over FHIR.
    fhir_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("accession_number", "patient_id", "issuer_of_patient_id", name="uq_orders_key"),
        Index("ix_orders_accession_number", "accession_number"),
    )


class OrderEvent(Base):
    """One order control applied to an order (NW, XO, CA, DC), from HL7 or FHIR: the order's history."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    control: Mapped[str] = mapped_column(String(2))
    source: Mapped[str] = mapped_column(String(8))
    sender: Mapped[str] = mapped_column(String(128))
    #: HL7 MSH-10 or the FHIR request's id/version.
    message_id: Mapped[str | None] = mapped_column(String(199))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: What changed: the names of changed fields and the status before and after (no values).
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class InboundMessage(Base):
    """The ACK given to one inbound HL7 message: a message sent again is answered the same and changes nothing."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sender: Mapped[str] = mapped_column(String(128))
    control_id: Mapped[str] = mapped_column(String(199))
    message_type: Mapped[str] = mapped_column(String(16))
    #: ``AA``, ``AE`` or ``AR``.
    ack_code: Mapped[str] = mapped_column(String(2))
    ack_text: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("sender", "control_id", name="uq_inbound_messages_sender_control_id"),)


class PerformedStep(Base):
    """One Modality Performed Procedure Step (MPPS SOP instance) and the instances it says were made."""

    __tablename__ = "performed_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    study_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=StepStatus.IN_PROGRESS.value)
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH))
    #: SOP Instance UIDs listed in the Performed Series Sequence (Referenced Image / Non-Image Composite).
    instance_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    #: When it became COMPLETED or DISCONTINUED.
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
