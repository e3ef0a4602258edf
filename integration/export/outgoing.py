"""What a sender is given and what it raises: the document ready to send, and the refusal of a destination.

Its own module so that each transport (C-STORE, STOW-RS, MLLP, FHIR, a folder) can live in a module of its own
without importing the dispatcher in :mod:`integration.export.senders`.
"""

from __future__ import annotations

from dataclasses import dataclass


class DeliveryFailed(Exception):
    """The destination did not take the document (the reason is safe to log and store)."""


@dataclass(frozen=True)
class OutgoingDocument:
    """A document ready to send.

    Attributes
    ----------
    kind : str
        ``sr``, ``tid1500``, ``kos``, ``fhir`` or ``hl7``.
    content : bytes
        The bytes (a Part 10 file for ``sr``, ``tid1500`` and ``kos``).
    filename : str
        Stable file name for folder destinations (same document, same name).
    media_type : str
        MIME type for HTTP.
    sop_class_uid, sop_instance_uid : str
        For the DICOM kinds: the instance's UIDs.
    resource_id : str
        For ``fhir``: the DiagnosticReport's id, the same for every version of a report (``PUT`` target).
    """

    kind: str
    content: bytes
    filename: str
    media_type: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    resource_id: str = ""
