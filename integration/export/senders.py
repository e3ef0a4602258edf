"""Sending one document to one destination: C-STORE SCU, STOW-RS, a folder, an HTTP endpoint.

Each sender raises :class:`DeliveryFailed` with a short reason (no patient data) when the
destination did not take the document; the delivery task turns that into a retry or a dead letter.
Sending the same document again sends the same bytes (the same SR SOP Instance UID; the same file
name in a folder), so a destination never holds duplicates.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

from integration.destinations import Destination
from integration.dicom.tls import TlsConfigError, association_tls
from integration.durable import replace_file

#: Statuses a C-STORE SCP may answer that still mean "stored" (success and warnings, PS3.4 B.2.3).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class DeliveryFailed(Exception):
    """The destination did not take the document (the reason is safe to log and store)."""


@dataclass(frozen=True)
class OutgoingDocument:
    """A document ready to send.

    Attributes
    ----------
    kind : str
        ``sr``, ``fhir`` or ``hl7``.
    content : bytes
        The bytes (a Part 10 file for ``sr``).
    filename : str
        Stable file name for folder destinations (same document, same name).
    media_type : str
        MIME type for HTTP.
    sop_class_uid, sop_instance_uid : str
        For ``sr``: the SR's UIDs.
    """

    kind: str
    content: bytes
    filename: str
    media_type: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def send(destination: Destination, document: OutgoingDocument, *, calling_ae: str) -> str:
    """Send a document to a destination.

    Parameters
    ----------
    destination : Destination
        Where to.
    document : OutgoingDocument
        What.
    calling_ae : str
        Our AE title (for C-STORE).

    Returns
    -------
    str
        A short receipt for the log (status, HTTP code or file name).

    Raises
    ------
    DeliveryFailed
        The destination did not take it.
    """
    if destination.kind == "dicom":
        return _c_store(destination, document, calling_ae)
    if destination.kind == "dicomweb":
        return _stow_rs(destination, document)
    if destination.kind == "folder":
        return _to_folder(destination, document)
    return _http_post(destination, document)


def _c_store(destination: Destination, document: OutgoingDocument, calling_ae: str) -> str:
    from io import BytesIO

    from pydicom import dcmread
    from pynetdicom import AE

    dataset = dcmread(BytesIO(document.content))
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = destination.timeout
    ae.add_requested_context(document.sop_class_uid, [syntax])
    assert destination.host is not None and destination.port is not None
    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    try:
        tls_args = association_tls(destination)
    except TlsConfigError as exc:
        raise DeliveryFailed(f"TLS settings of destination {destination.name}: {exc}") from None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title or "", tls_args=tls_args)
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        if tls_args is not None and not assoc.is_rejected:
            state += " (over TLS: see the log for the handshake's reason)"
        raise DeliveryFailed(f"association with {peer} {state}")
    try:
        answer = assoc.send_c_store(dataset)
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in answer:
        raise DeliveryFailed("no C-STORE response (the association ended or timed out)")
    code = int(answer.Status)
    if code not in STORED_STATUSES:
        raise DeliveryFailed(f"C-STORE refused with status 0x{code:04X}")
    return f"C-STORE status 0x{code:04X}"


def _stow_rs(destination: Destination, document: OutgoingDocument) -> str:
    assert destination.url is not None
    boundary = f"pacsvlm-{uuid.uuid4().hex}"
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            document.content,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    url = destination.url.rstrip("/") + "/studies"
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=destination.timeout)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"STOW-RS to {url}: {type(exc).__name__}") from exc
    if response.status_code not in (200, 202):
        raise DeliveryFailed(f"STOW-RS to {url} answered HTTP {response.status_code}")
    return f"STOW-RS HTTP {response.status_code}"


def _to_folder(destination: Destination, document: OutgoingDocument) -> str:
    assert destination.folder is not None
    final = destination.folder / document.filename
    try:
        replace_file(final, document.content)  # same document, same name: a re-send replaces, never duplicates
    except OSError as exc:
        raise DeliveryFailed(f"cannot write to folder {destination.folder}: {exc.strerror or exc}") from exc
    return f"wrote {final.name}"


def _http_post(destination: Destination, document: OutgoingDocument) -> str:
    assert destination.url is not None
    headers = {"Content-Type": document.media_type, "Idempotency-Key": document.filename}
    try:
        response = httpx.post(destination.url, content=document.content, headers=headers, timeout=destination.timeout)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"POST to {destination.url}: {type(exc).__name__}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"POST to {destination.url} answered HTTP {response.status_code}")
    return f"HTTP {response.status_code}"
