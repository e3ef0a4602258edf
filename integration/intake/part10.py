"""Taking a Part 10 file apart (a STOW-RS part, a converted photo): its transfer syntax and its data set.

The stored file gets our own file meta, as a C-STORE's does, so only the transfer syntax and the
envelope's UIDs (checked against the data set's) are read from the sender's; the data set is a view,
never a copy, so a large part costs no memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from integration.intake.structure import InvalidInstance

_LONG_META_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})


@dataclass(frozen=True)
class Part10:
    """A Part 10 file taken apart.

    Attributes
    ----------
    transfer_syntax_uid : str
        From the file meta.
    sop_class_uid, sop_instance_uid : str or None
        Media Storage SOP Class/Instance UIDs of the file meta, when present.
    dataset : memoryview
        The data set after the file meta, as encoded.
    """

    transfer_syntax_uid: str
    sop_class_uid: str | None
    sop_instance_uid: str | None
    dataset: memoryview


def split_part10(data: bytes | memoryview) -> Part10:
    """Take a Part 10 file apart: 128-byte preamble, ``DICM``, file meta group (explicit VR little endian).

    Parameters
    ----------
    data : bytes-like
        The whole file.

    Returns
    -------
    Part10
        Its transfer syntax, file meta UIDs and data set (a view, not a copy).

    Raises
    ------
    InvalidInstance
        If it is not a Part 10 file or its file meta is malformed or has no transfer syntax.
    """
    view = memoryview(data).cast("B")
    if len(view) < 132 or bytes(view[128:132]) != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 file (no 'DICM' prefix after the preamble)")
    pos, values = 132, {}
    while pos + 8 <= len(view):
        group, element = struct.unpack_from("<HH", view, pos)
        if group != 0x0002:
            break
        vr = bytes(view[pos + 4 : pos + 6])
        if not vr.isalpha() or not vr.isupper():
            raise InvalidInstance("the file meta group is not explicit VR little endian")
        if vr in _LONG_META_VRS:
            if pos + 12 > len(view):
                raise InvalidInstance("the file meta group is truncated")
            (length,), start = struct.unpack_from("<I", view, pos + 8), pos + 12
        else:
            (length,), start = struct.unpack_from("<H", view, pos + 6), pos + 8
        if start + length > len(view):
            raise InvalidInstance("the file meta group is truncated")
        values[element] = bytes(view[start : start + length]).decode("ascii", "replace").strip(" \x00") or None
        pos = start + length
    transfer_syntax = values.get(0x0010)
    if not transfer_syntax:
        raise InvalidInstance("the file meta has no Transfer Syntax UID")
    return Part10(transfer_syntax, values.get(0x0002), values.get(0x0003), view[pos:])
