"""What an association is: who is on the other end, what it asks of the listener, and what it may hold.

The value types and the two interfaces between an association
(:mod:`integration.dicom.association`) and the listener that serves it: the
storage service (admission by AE title, storing, audit) and the gatekeeper
(slots, pending connections, rejections, negotiation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from integration.dicom import dimse
from integration.dicom import upper_layer as ul
from integration.dicom.negotiation import Negotiated
from integration.intake.spool import DatasetSpool


@dataclass(frozen=True)
class Rejection:
    """Why an association request is refused, with the A-ASSOCIATE-RJ fields."""

    reason: str
    result: int = ul.REJECTED_PERMANENT
    source: int = ul.SOURCE_SERVICE_USER
    diagnostic: int = ul.REASON_NO_REASON
    #: Counts towards turning the host away even though it is transient (a host over its request budget).
    abusive: bool = False


@dataclass
class Peer:
    """Who is on the other end of an association."""

    calling_ae: str
    address: str
    port: int
    statuses: Counter[str] = field(default_factory=Counter)
    #: Negotiated TLS version (``TLSv1.3``); empty on plain TCP.
    tls_version: str = ""
    #: Subject of the peer's verified client certificate (``CN=...,O=...``); empty when it sent none.
    tls_subject: str = ""

    @property
    def source(self) -> str:
        """``address:port`` for logs and audit events."""
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class StoreRequest:
    """A complete C-STORE: the request's fields and the data set, as bytes or in a spool file.

    Attributes
    ----------
    dataset : bytearray
        The data set as received, gathered once (empty when it was spooled).
    spool : DatasetSpool or None
        The instance file with the data set, for data sets past :data:`SPOOL_THRESHOLD`; the service
        closes it.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes | bytearray
    calling_ae: str
    spool: DatasetSpool | None = None


class AssociationService(Protocol):
    """What an association asks of the listener (implemented by :class:`~integration.dicom.storage_scp.StorageSCP`)."""

    def admit(self, request: ul.RequestHeader, peer: Peer) -> Rejection | None:
        """Return why a requestor is refused (AE titles, hosts), or None to go on; from the fixed fields only."""

    def open_spool(self, command: dimse.Command, transfer_syntax: str, calling_ae: str) -> DatasetSpool:
        """Start the instance file of a large C-STORE data set (blocking; raises OSError when it cannot)."""

    def store_instance(self, request: StoreRequest) -> tuple[int, str]:
        """Store one instance; return the DIMSE status and an outcome label (blocking)."""

    def ended(self, peer: Peer, how: str) -> None:
        """Log and audit what an association did when it ends (blocking)."""


class Gatekeeper(Protocol):
    """The listener's shared resources as an association takes and gives them back (event-loop thread)."""

    def take_slot(self, calling_ae: str, host: str) -> str | None:
        """Take an association slot; return why none is free, or None."""

    def release_slot(self, calling_ae: str, host: str) -> None:
        """Give a slot back."""

    def spend(self, host: str, size: int) -> str | None:
        """Charge an association request's size to its host; return why it is refused, or None."""

    def settled(self, host: str) -> None:
        """The connection is no longer waiting to associate (accepted, rejected or gone)."""

    def rejected(self, peer: Peer, rejection: Rejection) -> None:
        """Count, log and audit a refused association (aggregated; never blocks)."""

    def negotiate(self, body: bytes) -> Awaitable[Negotiated]:
        """Decode and negotiate an A-ASSOCIATE-RQ's variable field off the listener's interpreter."""


@dataclass(frozen=True)
class Limits:
    """Protocol limits and timeouts, from the settings."""

    max_pdu_length: int
    acse_timeout: float
    #: Longest wait for any PDU; and, when shorter, for the next PDU of a DIMSE message under way.
    network_timeout: float
    dimse_timeout: float
    max_dataset_bytes: int
