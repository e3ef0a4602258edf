"""DIMSE command sets (PS3.7 Chapter 9 and Annex E): decode requests, encode responses.

Command sets are always Implicit VR Little Endian and only hold group 0000
elements, so they are read and written here directly, without building a
pydicom Dataset per message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

C_STORE_RQ: Final = 0x0001
C_GET_RQ: Final = 0x0010
C_FIND_RQ: Final = 0x0020
C_MOVE_RQ: Final = 0x0021
C_ECHO_RQ: Final = 0x0030
C_CANCEL_RQ: Final = 0x0FFF
#: DIMSE-N requests of Modality Performed Procedure Step (PS3.7 10.3.5, 10.3.6).
N_SET_RQ: Final = 0x0120
N_CREATE_RQ: Final = 0x0140
RESPONSE_BIT: Final = 0x8000
#: CommandDataSetType value meaning "no data set follows".
NO_DATASET: Final = 0x0101

_COMMAND_GROUP_LENGTH: Final = 0x00000000
_AFFECTED_SOP_CLASS_UID: Final = 0x00000002
_REQUESTED_SOP_CLASS_UID: Final = 0x00000003
_COMMAND_FIELD: Final = 0x00000100
_MESSAGE_ID: Final = 0x00000110
_MESSAGE_ID_BEING_RESPONDED_TO: Final = 0x00000120
_PRIORITY: Final = 0x00000700
_COMMAND_DATASET_TYPE: Final = 0x00000800
_STATUS: Final = 0x00000900
_AFFECTED_SOP_INSTANCE_UID: Final = 0x00001000
_REQUESTED_SOP_INSTANCE_UID: Final = 0x00001001

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
#: Largest command set we accept (real ones are a few hundred bytes).
MAX_COMMAND_LENGTH: Final = 64 * 1024


class InvalidCommand(ValueError):
    """A command set that cannot be decoded (the association is aborted)."""


@dataclass(frozen=True, slots=True)
class Command:
    """The fields of a request command set that the listener acts on.

    An N-SET-RQ names its object by Requested SOP Class / Instance UID (0000,0003 / 0000,1001); they are
    decoded into the ``affected_*`` fields, which is what its N-SET-RSP carries back (PS3.7 10.3.6.2).
    """

    command_field: int
    message_id: int
    has_dataset: bool
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""


def decode_command(data: bytes) -> Command:
    """Decode a request command set.

    Parameters
    ----------
    data : bytes
        The command set (Implicit VR Little Endian, group 0000).

    Returns
    -------
    Command
        The request's fields.

    Raises
    ------
    InvalidCommand
        Truncated elements, an element outside group 0000, or a missing
        Command Field / Message ID / Command Data Set Type.
    """
    if len(data) > MAX_COMMAND_LENGTH:
        raise InvalidCommand(f"command set of {len(data)} bytes")
    values: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < _ELEMENT.size:
            raise InvalidCommand("truncated command element header")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += _ELEMENT.size
        if group != 0 or offset + length > end:
            raise InvalidCommand(f"command element ({group:04X},{element:04X}) out of place or truncated")
        values[element] = data[offset : offset + length]
        offset += length
    try:
        command_field = _us(values[_COMMAND_FIELD])
        message_id = _us(values.get(_MESSAGE_ID, values.get(_MESSAGE_ID_BEING_RESPONDED_TO, b"")))
        dataset_type = _us(values[_COMMAND_DATASET_TYPE])
    except (KeyError, struct.error) as exc:
        raise InvalidCommand("command set lacks Command Field, Message ID or Command Data Set Type") from exc
    if command_field == N_SET_RQ:
        sop_class = values.get(_REQUESTED_SOP_CLASS_UID, b"")
        sop_instance = values.get(_REQUESTED_SOP_INSTANCE_UID, b"")
    else:
        sop_class = values.get(_AFFECTED_SOP_CLASS_UID, b"")
        sop_instance = values.get(_AFFECTED_SOP_INSTANCE_UID, b"")
    return Command(
        command_field=command_field,
        message_id=message_id,
        has_dataset=dataset_type != NO_DATASET,
        affected_sop_class_uid=_uid(sop_class),
        affected_sop_instance_uid=_uid(sop_instance),
    )


def encode_response(request: Command, status: int) -> bytes:
    """Encode the response command set to a request (no data set follows).

    An N-CREATE-RSP or N-SET-RSP carries the Affected SOP Class and Instance UID of the object (for an
    N-CREATE the SCP made the UID when the request had none: pass a :class:`Command` with it set).

    Parameters
    ----------
    request : Command
        The request being answered.
    status : int
        The DIMSE status.

    Returns
    -------
    bytes
        The command set, group length first.
    """
    body = b"".join(
        (
            _element(_AFFECTED_SOP_CLASS_UID, _uid_value(request.affected_sop_class_uid))
            if request.affected_sop_class_uid
            else b"",
            _element(_COMMAND_FIELD, _US.pack(request.command_field | RESPONSE_BIT)),
            _element(_MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(request.message_id)),
            _element(_COMMAND_DATASET_TYPE, _US.pack(NO_DATASET)),
            _element(_STATUS, _US.pack(status)),
            _element(_AFFECTED_SOP_INSTANCE_UID, _uid_value(request.affected_sop_instance_uid))
            if request.affected_sop_instance_uid
            else b"",
        )
    )
    return _element(_COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


def _us(value: bytes) -> int:
    return int(_US.unpack(value[:2])[0])


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", errors="replace")


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii", errors="replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value
