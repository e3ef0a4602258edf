"""A strict walk over the element structure of an encoded data set.

pydicom reads leniently (a truncated value or an unknown VR becomes a warning);
an archive must not accept such a data set, so the listener walks every
element, sequence item and pixel-data fragment itself, checks that each length
fits, and picks out the few top-level values it needs.  Nothing is decoded
into pydicom objects, which keeps the C-STORE path fast.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pydicom.datadict import dictionary_VR

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
MODALITY = 0x00080060
BODY_PART = 0x00180015
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SERIES_NUMBER = 0x00200011
INSTANCE_NUMBER = 0x00200013
NUMBER_OF_FRAMES = 0x00280008
ACCESSION_NUMBER = 0x00080050
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
PATIENT_BIRTH_DATE = 0x00100030
#: The patient identity an instance must share with the other instances of its study.
PATIENT_IDENTITY = (PATIENT_ID, ISSUER_OF_PATIENT_ID, PATIENT_NAME, PATIENT_BIRTH_DATE)
PIXEL_DATA = 0x7FE00010
#: The top-level tags whose raw values :func:`walk_dataset` returns.
WANTED = frozenset(
    {
        SOP_CLASS_UID,
        SOP_INSTANCE_UID,
        MODALITY,
        BODY_PART,
        STUDY_UID,
        SERIES_UID,
        SERIES_NUMBER,
        INSTANCE_NUMBER,
        NUMBER_OF_FRAMES,
        ACCESSION_NUMBER,
        *PATIENT_IDENTITY,
    }
)

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())


class InvalidInstance(ValueError):
    """The received data set cannot be stored; the message says why (no patient data)."""


@lru_cache(maxsize=4096)
def _is_sequence(tag: int) -> bool:
    """Whether the data dictionary says ``tag`` is a sequence (implicit VR carries no VR)."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


class _Walker:
    def __init__(self, data: bytes | memoryview, implicit: bool, little_endian: bool) -> None:
        self.buf = memoryview(data).cast("B")
        self.implicit = implicit
        order = "<" if little_endian else ">"
        self.tag_len = struct.Struct(order + "HHI")
        self.short_vr = struct.Struct(order + "HH2sH")
        self.long_vr = struct.Struct(order + "HH2s2xI")
        self.item = struct.Struct(order + "HHI")

    def dataset(self, pos: int, end: int, depth: int, wanted: dict[int, bytes] | None) -> int:
        """Walk elements from ``pos``; stop at ``end`` or after an item delimiter."""
        if depth > _MAX_DEPTH:
            raise InvalidInstance("sequences nested too deeply")
        buf = self.buf
        while pos < end:
            if end - pos < 8:
                raise InvalidInstance("data set is truncated")
            group, element, length = self.tag_len.unpack_from(buf, pos)
            tag = group << 16 | element
            if tag == _ITEM_END:
                if depth == 0:
                    raise InvalidInstance("unexpected item delimiter")
                return pos + 8
            if group == 0xFFFE:
                raise InvalidInstance("unexpected item tag in a data set")
            vr: bytes | None = None
            if self.implicit:
                pos += 8
            else:
                _, _, vr, length = self.short_vr.unpack_from(buf, pos)
                if vr in _LONG_VRS:
                    if end - pos < 12:
                        raise InvalidInstance("data set is truncated")
                    _, _, _, length = self.long_vr.unpack_from(buf, pos)
                    pos += 12
                elif vr in _SHORT_VRS:
                    pos += 8
                else:
                    raise InvalidInstance("data set has an element with an unknown VR")
            if length == _UNDEFINED:
                if tag == PIXEL_DATA and vr != b"SQ" and not self.implicit:
                    pos = self.fragments(pos, end)
                elif vr in (None, b"SQ"):
                    pos = self.sequence(pos, end, _UNDEFINED, depth)
                elif vr == b"UN":  # an SQ of unknown VR: its content is implicit VR little endian
                    inner = _Walker(self.buf, implicit=True, little_endian=True)
                    pos = inner.sequence(pos, end, _UNDEFINED, depth)
                else:
                    raise InvalidInstance("undefined length on an element that cannot have one")
                continue
            if length > end - pos:
                raise InvalidInstance("data set is truncated (an element is longer than the data)")
            if vr == b"SQ" or (vr is None and _is_sequence(tag)):
                self.sequence(pos, pos + length, length, depth)
            elif wanted is not None and tag in WANTED:
                wanted[tag] = bytes(buf[pos : pos + length])
            pos += length
        if pos != end and depth == 0:
            raise InvalidInstance("data set is truncated")
        return pos

    def sequence(self, pos: int, end: int, length: int, depth: int) -> int:
        buf = self.buf
        while pos < end:
            if end - pos < 8:
                raise InvalidInstance("sequence is truncated")
            group, element, item_length = self.item.unpack_from(buf, pos)
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_END:
                if length != _UNDEFINED:
                    raise InvalidInstance("sequence delimiter in a sequence of defined length")
                return pos
            if tag != _ITEM:
                raise InvalidInstance("sequence holds something other than items")
            if item_length == _UNDEFINED:
                pos = self.dataset(pos, end, depth + 1, None)
            else:
                if item_length > end - pos:
                    raise InvalidInstance("sequence item is truncated")
                self.dataset(pos, pos + item_length, depth + 1, None)
                pos += item_length
        if length == _UNDEFINED:
            raise InvalidInstance("sequence is not delimited")
        return pos

    def fragments(self, pos: int, end: int) -> int:
        buf = self.buf
        while pos < end:
            if end - pos < 8:
                raise InvalidInstance("encapsulated pixel data is truncated")
            group, element, item_length = self.item.unpack_from(buf, pos)
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM or item_length == _UNDEFINED or item_length > end - pos:
                raise InvalidInstance("encapsulated pixel data is malformed or truncated")
            pos += item_length
        raise InvalidInstance("encapsulated pixel data is not delimited")


def walk_dataset(data: bytes | memoryview, *, implicit: bool, little_endian: bool) -> dict[int, bytes]:
    """Walk a whole encoded data set strictly and return the wanted raw values.

    Parameters
    ----------
    data : bytes-like
        The encoded data set (no preamble or file meta), already inflated.
    implicit : bool
        Implicit VR encoding.
    little_endian : bool
        Byte order.

    Returns
    -------
    dict of int to bytes
        Raw values of the top-level tags in :data:`WANTED` that are present.

    Raises
    ------
    InvalidInstance
        If any element, item or fragment is truncated, undelimited or has an
        unknown VR, or the data set is empty.
    """
    if len(data) == 0:
        raise InvalidInstance("data set is empty")
    wanted: dict[int, bytes] = {}
    walker = _Walker(data, implicit, little_endian)
    walker.dataset(0, len(walker.buf), 0, wanted)
    return wanted
