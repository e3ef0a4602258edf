"""Sending an HL7 ORU to a RIS over MLLP and waiting for its ACK (original acknowledgment mode).

The framing is python-hl7's :class:`hl7.client.MLLPClient` (``<VT> message <FS><CR>``); its constructor
connects without a timeout and its ``send`` reads a single ``recv``, so :class:`_Client` hands it a socket
we connected ourselves (with the destination's ``timeout``, wrapped in TLS when ``tls`` is true) and reads
the answer until the closing ``<FS><CR>``, within what is left of the same ``timeout``.

The ACK decides: MSA-1 ``AA`` or ``CA`` -> delivered; ``AE``/``AR``/``CE``/``CR`` -> :class:`DeliveryFailed`
with the RIS's reason (MSA-3, else ERR-8 or the text of ERR-3 / ERR-1), unescaped, without control
characters and capped; an ACK whose MSA-2 is not our MSH-10 is not an answer to this message and fails the
attempt; no complete ACK within the timeout (or the RIS closing the connection) fails it too.  A failed
attempt is retried by the delivery task with the same message (the same MSH-10), so a RIS that took it
but whose ACK was lost sees a resend it can recognise.
"""

from __future__ import annotations

import re
import socket
import ssl
import time

import hl7  # type: ignore[import-untyped]
from hl7.client import CR, EB, SB, MLLPClient  # type: ignore[import-untyped]

from integration.destinations import Destination
from integration.dicom.tls import TlsConfigError, client_context, handshake_failure
from integration.export.outgoing import DeliveryFailed, OutgoingDocument

#: Longest ACK read (an ACK is a few hundred bytes; more is not an ACK).
MAX_ACK_BYTES = 64 * 1024
#: Longest reason from the RIS kept in ``last_error``.
MAX_REASON = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_ACCEPTED = frozenset({"AA", "CA"})
_REFUSED = frozenset({"AE", "AR", "CE", "CR"})


class _Client(MLLPClient):  # type: ignore[misc]
    """python-hl7's MLLP client over a socket we connected (timeout, TLS); reads one whole framed answer."""

    def __init__(self, connected: socket.socket, deadline: float) -> None:
        self.socket = connected
        self.encoding = "utf-8"
        self._deadline = deadline

    def send(self, data: bytes) -> bytes:
        """Send a framed message and return the framed answer (raises ``TimeoutError``, ``ConnectionError``)."""
        self.socket.sendall(data)
        answer = b""
        while not answer.rstrip(b"\n").endswith(EB + CR):
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.socket.settimeout(left)
            chunk = self.socket.recv(4096)
            if not chunk:
                raise ConnectionResetError("closed without an ACK")
            answer += chunk
            if len(answer) > MAX_ACK_BYTES:
                raise DeliveryFailed(f"the answer exceeds {MAX_ACK_BYTES} bytes: not an ACK")
        return answer


def _connect(destination: Destination, deadline: float) -> socket.socket:
    assert destination.host is not None and destination.port is not None
    context = None
    if destination.tls:
        try:
            context = client_context(
                ca_file=destination.ca_file,
                certificate=destination.certificate,
                private_key=destination.private_key,
                verify_hostname=destination.verify_hostname,
            )
        except TlsConfigError as exc:
            raise DeliveryFailed(f"TLS settings of destination {destination.name}: {exc}") from None
    raw = socket.create_connection((destination.host, destination.port), timeout=destination.timeout)
    if context is None:
        return raw
    try:
        raw.settimeout(max(deadline - time.monotonic(), 0.001))
        return context.wrap_socket(raw, server_hostname=destination.host)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise DeliveryFailed(
            f"TLS handshake with {destination.host}:{destination.port} failed: {handshake_failure(exc)}"
        ) from None


def clean_reason(text: str) -> str:
    """Return a RIS's error text fit for ``last_error``: no control characters, collapsed spaces, capped.

    Parameters
    ----------
    text : str
        MSA-3 or ERR text as the RIS sent it (unescaped).

    Returns
    -------
    str
        At most :data:`MAX_REASON` characters (``...`` marks a cut).
    """
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _reason(ack: hl7.Message) -> str:
    """The RIS's own words: MSA-3, else ERR-8 (user message), ERR-3.2 (error text) or ERR-1.4.2 (v2.3)."""
    fields = [(ack.segment("MSA"), {"field_num": 3})]
    errors = ack.segments("ERR") if any(str(segment(0)) == "ERR" for segment in ack) else []
    for err in errors:
        fields += [
            (err, {"field_num": 8}),
            (err, {"field_num": 3, "component_num": 2}),
            (err, {"field_num": 1, "component_num": 4, "subcomponent_num": 2}),
        ]
    for segment, position in fields:
        try:
            text = clean_reason(str(segment.extract_field(**position)))  # unescaped by python-hl7
        except (IndexError, KeyError, TypeError):
            continue
        if text:
            return text
    return "no reason given"


def read_ack(framed: bytes, control_id: str) -> str:
    """Decide what a RIS's framed answer says about our message.

    Parameters
    ----------
    framed : bytes
        The answer as received (``<VT> ACK <FS><CR>``).
    control_id : str
        Our message's MSH-10.

    Returns
    -------
    str
        The receipt, ``ACK AA`` or ``ACK CA``.

    Raises
    ------
    DeliveryFailed
        The answer is not an ACK, acknowledges another message, or refuses ours (with the RIS's reason).
    """
    text = framed.strip().strip(SB + EB + CR).decode("utf-8", errors="replace")
    try:
        ack = hl7.parse(text.replace("\n", "\r"))
        msa = ack.segment("MSA")
        code, acknowledged = str(msa(1)).upper(), str(msa(2))
    except (KeyError, IndexError, ValueError, hl7.ParseException):
        raise DeliveryFailed("the RIS answered something that is not an HL7 ACK (no MSA segment)") from None
    if acknowledged != control_id:
        raise DeliveryFailed(f"the RIS acknowledged message {clean_reason(acknowledged)[:40]!r}, not ours")
    if code in _ACCEPTED:
        return f"ACK {code}"
    if code in _REFUSED:
        raise DeliveryFailed(f"the RIS answered {code}: {_reason(ack)}")
    raise DeliveryFailed(f"the RIS answered an unknown acknowledgment code {clean_reason(code)[:8]!r}")


def control_id_of(message: bytes) -> str:
    """Return MSH-10 of an ER7 message (raises :class:`DeliveryFailed` when there is none)."""
    try:
        return str(hl7.parse(message.decode("utf-8").replace("\n", "\r")).segment("MSH")(10))
    except (KeyError, IndexError, ValueError, hl7.ParseException):
        raise DeliveryFailed("the HL7 document has no MSH-10 (message control id)") from None


def send_mllp(destination: Destination, document: OutgoingDocument) -> str:
    """Send an HL7 message over MLLP and wait for the RIS's ACK.

    Parameters
    ----------
    destination : Destination
        A ``mllp`` destination (host, port, timeout, TLS).
    document : OutgoingDocument
        The ``hl7`` document (ER7, UTF-8).

    Returns
    -------
    str
        ``ACK AA`` (or ``ACK CA``).

    Raises
    ------
    DeliveryFailed
        Not connected, the TLS handshake failed, no ACK within ``timeout``, or the ACK refuses the message.
    """
    control_id = control_id_of(document.content)
    deadline = time.monotonic() + destination.timeout
    peer = f"{destination.host}:{destination.port}"
    try:
        connected = _connect(destination, deadline)
    except OSError as exc:
        raise DeliveryFailed(f"MLLP connection to {peer}: {type(exc).__name__}") from None
    try:
        with _Client(connected, deadline) as client:
            framed = client.send_message(document.content)
    except TimeoutError:
        raise DeliveryFailed(f"no ACK from {peer} within {destination.timeout:g}s") from None
    except ConnectionError:
        raise DeliveryFailed(f"{peer} closed the MLLP connection without an ACK") from None
    except OSError as exc:
        raise DeliveryFailed(f"MLLP to {peer}: {type(exc).__name__}") from None
    return read_ack(framed, control_id)
