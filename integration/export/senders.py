"""Sending one document to one destination: C-STORE SCU, STOW-RS, a folder, an HTTP endpoint, a RIS, a FHIR server.

Each sender raises :class:`DeliveryFailed` with a short reason (no patient data) when the
destination did not take the document; the delivery task turns that into a retry or a dead letter.
Sending the same document again sends the same bytes (the same SR SOP Instance UID; the same file
name in a folder; the same MSH-10 to a RIS; the same DiagnosticReport id to a FHIR server), so a
destination never holds duplicates.  HTTP calls carry the destination's auth and client certificate
(:mod:`integration.export.auth`); the MLLP sender, which waits for the RIS's ACK, is
:mod:`integration.export.mllp`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from integration.destinations import Destination
from integration.dicom.tls import TlsConfigError, association_tls
from integration.durable import replace_file
from integration.export.auth import AuthUnavailable, http_client, http_failure
from integration.export.outgoing import DeliveryFailed, OutgoingDocument

#: Statuses a C-STORE SCP may answer that still mean "stored" (success and warnings, PS3.4 B.2.3).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


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
    if destination.kind == "mllp":
        from integration.export.mllp import send_mllp

        return send_mllp(destination, document)
    if destination.kind == "fhir":
        return _fhir_put(destination, document)
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
        with authenticated(destination) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"STOW-RS to {url}: {http_failure(exc)}") from None
    if response.status_code not in (200, 202):
        raise DeliveryFailed(f"STOW-RS to {url} answered HTTP {response.status_code}")
    return f"STOW-RS HTTP {response.status_code}"


@contextmanager
def authenticated(destination: Destination) -> Iterator[httpx.Client]:
    """Open the httpx client of one attempt (auth, client certificate); unusable credentials fail the attempt.

    Raises
    ------
    DeliveryFailed
        A secret or TLS file cannot be used, or the OAuth2 token endpoint issued no token.
    """
    try:
        with http_client(destination) as client:
            yield client
    except AuthUnavailable as exc:
        raise DeliveryFailed(str(exc)) from None


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
        with authenticated(destination) as client:
            response = client.post(destination.url, content=document.content, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"POST to {destination.url}: {http_failure(exc)}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"POST to {destination.url} answered HTTP {response.status_code}")
    return f"HTTP {response.status_code}"


_RESOURCE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR R4 id


def fhir_resource_id(document: OutgoingDocument) -> str:
    """Return the DiagnosticReport id a FHIR document is ``PUT`` to: ``resource_id``, else the JSON's ``id``.

    Raises
    ------
    DeliveryFailed
        Neither gives a valid FHIR id.
    """
    value = document.resource_id
    if not value:
        try:
            body = json.loads(document.content)
        except ValueError:
            body = None
        value = body.get("id", "") if isinstance(body, dict) else ""
    if not isinstance(value, str) or not _RESOURCE_ID.fullmatch(value):
        raise DeliveryFailed("the FHIR document has no valid resource id to PUT")
    return value


def _fhir_put(destination: Destination, document: OutgoingDocument) -> str:
    """``PUT {url}/DiagnosticReport/{id}`` (update-as-create: one resource per report across its versions)."""
    assert destination.url is not None
    url = f"{destination.url.rstrip('/')}/DiagnosticReport/{fhir_resource_id(document)}"
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    try:
        with authenticated(destination) as client:
            response = client.put(url, content=document.content, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"PUT {url}: {http_failure(exc)}") from None
    if response.status_code not in (200, 201):
        raise DeliveryFailed(f"PUT {url} answered HTTP {response.status_code}{_outcome(response)}")
    return f"FHIR PUT HTTP {response.status_code}"


def _outcome(response: httpx.Response) -> str:
    """The first issue's code of an OperationOutcome answer, e.g. `` (invalid)`` (never its free text)."""
    try:
        body = response.json()
        code = body["issue"][0]["code"] if body.get("resourceType") == "OperationOutcome" else ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return f" ({code})" if isinstance(code, str) and re.fullmatch(r"[a-z-]{1,32}", code) else ""
