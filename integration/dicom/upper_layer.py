"""The DICOM upper layer (PS3.8): PDU framing, PDV items and the association PDUs we answer with.

The listener reads PDUs straight off an asyncio stream and answers with
pre-encoded bytes; A-ASSOCIATE-RQ decoding, A-ASSOCIATE-AC encoding and the
presentation-context negotiation stay with pynetdicom's codecs
(:mod:`pynetdicom.pdu`, :func:`pynetdicom.presentation.negotiate_as_acceptor`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from pynetdicom import pdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from integration.intake.header import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

ASSOCIATE_RQ: Final = 0x01
ASSOCIATE_AC: Final = 0x02
ASSOCIATE_RJ: Final = 0x03
P_DATA_TF: Final = 0x04
RELEASE_RQ: Final = 0x05
RELEASE_RP: Final = 0x06
ABORT: Final = 0x07
KNOWN_PDU_TYPES: Final = frozenset({ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT})

#: The DICOM application context name (PS3.7 Annex A.2.1).
APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"
# Our implementation class UID and version name, sent in every A-ASSOCIATE-AC, are those of our files' meta
# (:data:`IMPLEMENTATION_CLASS_UID`, a UUID-derived 2.25 UID: the project owns no registered root).

#: Upper bound for an A-ASSOCIATE-RQ: the 128 presentation contexts a request may have (odd IDs 1-255), each
#: with 8 transfer syntaxes of 64-character UIDs, plus role and extended negotiation for each, fit in ~100 KiB;
#: real modalities and PACSs send 1-40 KiB.
MAX_ASSOCIATE_RQ_LENGTH: Final = 128 * 1024
#: The A-ASSOCIATE-RQ's fixed fields (protocol version, called and calling AE, reserved), read and checked
#: before the rest of the request is read or decoded.
ASSOCIATE_RQ_FIXED_LENGTH: Final = 68
#: Upper bound for the small PDUs (release, abort).
MAX_CONTROL_PDU_LENGTH: Final = 64

# A-ASSOCIATE-RJ result / source / reason (PS3.8 9.3.4).
REJECTED_PERMANENT: Final = 1
REJECTED_TRANSIENT: Final = 2
SOURCE_SERVICE_USER: Final = 1
SOURCE_ACSE: Final = 2
SOURCE_PRESENTATION: Final = 3
# ... reasons of the service user (source 1)
REASON_NO_REASON: Final = 1
REASON_APPLICATION_CONTEXT: Final = 2
REASON_CALLING_AE: Final = 3
REASON_CALLED_AE: Final = 7
# ... of the ACSE provider (source 2)
REASON_PROTOCOL_VERSION: Final = 2
# ... and of the presentation provider (source 3)
REASON_LOCAL_LIMIT: Final = 2

# A-ABORT source / reason (PS3.8 9.3.8).
ABORT_SOURCE_USER: Final = 0
ABORT_SOURCE_PROVIDER: Final = 2
ABORT_NOT_SPECIFIED: Final = 0
ABORT_UNRECOGNIZED_PDU: Final = 1
ABORT_UNEXPECTED_PDU: Final = 2
ABORT_INVALID_PARAMETER: Final = 6

_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
_COMMAND_BIT: Final = 0x01
_LAST_BIT: Final = 0x02


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol; the association is aborted.

    Parameters
    ----------
    message : str
        What was wrong (no patient data).
    reason : int
        The A-ABORT reason to send.
    """

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, int]]:
        return (ProtocolError, (str(self), self.reason))  # raised in the negotiation process, re-raised here


@dataclass(frozen=True, slots=True)
class Pdv:
    """One presentation data value item of a P-DATA-TF PDU."""

    context_id: int
    is_command: bool
    is_last: bool
    fragment: memoryview


async def read_pdu_header(reader: asyncio.StreamReader, max_p_data_length: int) -> tuple[int, int]:
    """Read a PDU's 6-byte header; return its type and the length of its variable field.

    Parameters
    ----------
    reader : asyncio.StreamReader
        The association's stream.
    max_p_data_length : int
        The largest P-DATA-TF variable field we accept (our Maximum Length Received).

    Returns
    -------
    tuple of (int, int)
        PDU type and length.

    Raises
    ------
    ProtocolError
        Unknown PDU type or a length above what that type may have.
    asyncio.IncompleteReadError
        The peer closed the connection.
    """
    header = await reader.readexactly(_PDU_HEADER.size)
    pdu_type, length = _PDU_HEADER.unpack(header)
    if pdu_type not in KNOWN_PDU_TYPES:
        raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
    if pdu_type == P_DATA_TF:
        limit = max_p_data_length
    elif pdu_type == ASSOCIATE_RQ:
        limit = MAX_ASSOCIATE_RQ_LENGTH
    else:
        limit = MAX_CONTROL_PDU_LENGTH
    if length > limit:
        raise ProtocolError(f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds the limit of {limit}")
    return pdu_type, length


async def read_pdu(reader: asyncio.StreamReader, max_p_data_length: int) -> tuple[int, bytes]:
    """Read one PDU and return its type and variable field.

    Parameters
    ----------
    reader : asyncio.StreamReader
        The association's stream.
    max_p_data_length : int
        The largest P-DATA-TF variable field we accept (our Maximum Length Received).

    Returns
    -------
    tuple of (int, bytes)
        PDU type and the bytes after the 6-byte header.

    Raises
    ------
    ProtocolError
        Unknown PDU type or a length above what that type may have.
    asyncio.IncompleteReadError
        The peer closed the connection.
    """
    pdu_type, length = await read_pdu_header(reader, max_p_data_length)
    return pdu_type, await reader.readexactly(length)


def iter_pdvs(body: bytes) -> Iterator[Pdv]:
    """Split the variable field of a P-DATA-TF PDU into its PDV items.

    Parameters
    ----------
    body : bytes
        The PDU's variable field.

    Yields
    ------
    Pdv
        Each item, its fragment a view into ``body`` (no copy).

    Raises
    ------
    ProtocolError
        An item length that runs past the PDU or is too short.
    """
    view = memoryview(body)
    offset, end = 0, len(body)
    if end == 0:
        raise ProtocolError("P-DATA-TF PDU without PDV items")
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            raise ProtocolError("truncated PDV item header")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError(f"PDV item length {length} does not fit the PDU")
        fragment = view[offset + 6 : offset + 4 + length]
        yield Pdv(context_id, bool(control & _COMMAND_BIT), bool(control & _LAST_BIT), fragment)
        offset += 4 + length


def p_data(context_id: int, payload: bytes, *, is_command: bool, peer_max_length: int) -> bytes:
    """Encode a whole message part as P-DATA-TF PDUs that respect the peer's maximum length.

    Parameters
    ----------
    context_id : int
        Presentation context ID.
    payload : bytes
        The encoded command set or data set.
    is_command : bool
        Whether ``payload`` is a command set.
    peer_max_length : int
        The peer's Maximum Length Received (0 = unlimited).

    Returns
    -------
    bytes
        One or more PDUs, concatenated.
    """
    room = max(1, len(payload) if peer_max_length == 0 else peer_max_length - _PDV_HEADER.size)
    parts = []
    for start in range(0, max(len(payload), 1), room):
        fragment = payload[start : start + room]
        last = start + room >= len(payload)
        control = (_COMMAND_BIT if is_command else 0) | (_LAST_BIT if last else 0)
        item = _PDV_HEADER.pack(len(fragment) + 2, context_id, control) + fragment
        parts.append(_PDU_HEADER.pack(P_DATA_TF, len(item)) + item)
    return b"".join(parts)


def release_rp() -> bytes:
    """Encode an A-RELEASE-RP PDU."""
    return _PDU_HEADER.pack(RELEASE_RP, 4) + bytes(4)


def abort(source: int, reason: int) -> bytes:
    """Encode an A-ABORT PDU.

    Parameters
    ----------
    source : int
        0 service user, 2 service provider.
    reason : int
        Reason (only meaningful when the provider aborts).

    Returns
    -------
    bytes
        The PDU.
    """
    return _PDU_HEADER.pack(ABORT, 4) + bytes((0, 0, source, reason if source == ABORT_SOURCE_PROVIDER else 0))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """Encode an A-ASSOCIATE-RJ PDU.

    Parameters
    ----------
    result : int
        1 rejected-permanent, 2 rejected-transient.
    source : int
        1 service user, 2 service provider (ACSE), 3 service provider (presentation).
    reason : int
        Reason/diagnostic for that source.

    Returns
    -------
    bytes
        The PDU.
    """
    return _PDU_HEADER.pack(ASSOCIATE_RJ, 4) + bytes((0, result, source, reason))


@dataclass(frozen=True)
class RequestHeader:
    """The fixed fields of an A-ASSOCIATE-RQ, which say who asks before anything is decoded."""

    protocol_version: int
    called_ae: str
    calling_ae: str


def parse_request_header(fixed: bytes) -> RequestHeader:
    """Read the protocol version and the called and calling AE titles from an A-ASSOCIATE-RQ's first 68 bytes.

    Parameters
    ----------
    fixed : bytes
        The first :data:`ASSOCIATE_RQ_FIXED_LENGTH` bytes of the request's variable field.

    Returns
    -------
    RequestHeader
        The fields (AE titles without padding; bytes that are not ASCII become U+FFFD and match no AE).
    """
    version = int.from_bytes(fixed[0:2], "big")
    called = fixed[4:20].decode("ascii", "replace").strip(" \x00")
    calling = fixed[20:36].decode("ascii", "replace").strip(" \x00")
    return RequestHeader(protocol_version=version, called_ae=called, calling_ae=calling)


@dataclass(frozen=True)
class AssociationRequest:
    """What the requestor asked for in its A-ASSOCIATE-RQ."""

    calling_ae: str
    called_ae: str
    application_context: str
    protocol_version: int
    primitive: A_ASSOCIATE
    max_length: int


def decode_associate_rq(body: bytes) -> AssociationRequest:
    """Decode the variable field of an A-ASSOCIATE-RQ PDU.

    Parameters
    ----------
    body : bytes
        The PDU's bytes after its 6-byte header.

    Returns
    -------
    AssociationRequest
        The request.

    Raises
    ------
    ProtocolError
        The PDU cannot be decoded.
    """
    request = pdu.A_ASSOCIATE_RQ()
    try:
        request.decode(_PDU_HEADER.pack(ASSOCIATE_RQ, len(body)) + body)
        primitive = request.to_primitive()
    except Exception as exc:  # pynetdicom raises assorted errors on malformed items
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ ({type(exc).__name__})") from exc
    max_length = 0
    for item in primitive.user_information or []:
        if isinstance(item, MaximumLengthNotification):
            max_length = int(item.maximum_length_received or 0)
    return AssociationRequest(
        calling_ae=str(primitive.calling_ae_title or "").strip(),
        called_ae=str(primitive.called_ae_title or "").strip(),
        application_context=str(primitive.application_context_name or ""),
        protocol_version=int(request.protocol_version),
        primitive=primitive,
        max_length=max_length,
    )


def accept(
    request: AssociationRequest, supported: Sequence[PresentationContext], max_length: int
) -> tuple[bytes, dict[int, PresentationContext]]:
    """Negotiate presentation contexts and encode the A-ASSOCIATE-AC.

    Parameters
    ----------
    request : AssociationRequest
        The decoded request.
    supported : sequence of PresentationContext
        Our acceptor contexts (abstract syntax with the transfer syntaxes we take).
    max_length : int
        Our Maximum Length Received.

    Returns
    -------
    tuple of (bytes, dict)
        The A-ASSOCIATE-AC PDU and the accepted contexts by context ID.
    """
    requested = request.primitive.presentation_context_definition_list
    results, roles = negotiate_as_acceptor(requested, list(supported), roles={})
    answer = A_ASSOCIATE()
    answer.application_context_name = APPLICATION_CONTEXT
    answer.calling_ae_title = request.primitive.calling_ae_title
    answer.called_ae_title = request.primitive.called_ae_title
    answer.result = 0
    answer.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = max_length
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    answer.user_information = [length, class_uid, version, *roles]
    encoded = pdu.A_ASSOCIATE_AC()
    encoded.from_primitive(answer)
    accepted = {int(cx.context_id): cx for cx in results if cx.result == 0 and cx.context_id is not None}
    return encoded.encode(), accepted
