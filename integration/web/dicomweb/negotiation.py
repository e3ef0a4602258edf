"""What a DICOMweb client asks for in its ``Accept`` header, and the transfer syntaxes we can answer it with.

WADO-RS clients say in one header both the media type and the transfer syntax they want
(``multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1``), often several
alternatives, quoted or not, with ``q`` weights (dicomweb-client, Orthanc's DICOMweb plugin, OHIF and
browsers all write it differently).  :func:`media_ranges` parses the header once into ordered
:class:`MediaRange` values; the routes then pick the first alternative they can satisfy and answer 406,
naming what they offer, when none fits.  A missing ``transfer-syntax`` or ``*`` means "as stored"; the one
syntax we convert to is Explicit VR Little Endian.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fastapi import HTTPException, status

from integration.web.dicomweb.multipart_related import parse_media_type

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: Transfer syntaxes whose pixel data is not encapsulated (frames are plain bytes).
NATIVE_SYNTAXES = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN}
)
#: Media type of an encapsulated frame, by transfer syntax (PS3.18 table 8.7.4-1).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
}
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
#: The longest ``Accept`` header read (a longer one is cut; browsers send a few hundred bytes).
MAX_ACCEPT_CHARS = 8192
_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')  # commas outside quoted strings


@dataclass(frozen=True)
class MediaRange:
    """One alternative of an ``Accept`` header.

    Attributes
    ----------
    essence : str
        ``type/subtype`` in lower case (``*/*`` and ``type/*`` included).
    params : dict of str to str
        Its parameters, names in lower case (``type``, ``transfer-syntax``, ``q``...).
    """

    essence: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def quality(self) -> float:
        """The ``q`` weight (1 when absent or unreadable)."""
        try:
            return min(max(float(self.params.get("q", "1")), 0.0), 1.0)
        except ValueError:
            return 1.0

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter; None for absent or ``*`` (as stored)."""
        value = self.params.get("transfer-syntax", "").strip()
        return None if value in ("", "*") else value

    @property
    def part_type(self) -> str | None:
        """For ``multipart/related``: the ``type`` parameter in lower case, None when absent."""
        value = self.params.get("type")
        return value.strip().lower() if value else None


def media_ranges(accept: str | None) -> list[MediaRange]:
    """Parse an ``Accept`` header into its alternatives, the most wanted first (``q=0`` ones dropped).

    Parameters
    ----------
    accept : str, optional
        The header; missing or empty means ``*/*``.

    Returns
    -------
    list of MediaRange
        Sorted by ``q``, ties in the order written; never empty when the header is missing.
    """
    if not accept or not accept.strip():
        return [MediaRange("*/*")]
    ranges = []
    for piece in _SPLIT.split(accept[:MAX_ACCEPT_CHARS]):
        media = parse_media_type(piece.strip())
        if media is not None:
            ranges.append(MediaRange(media.essence, media.params))
    ranges = [item for item in ranges if item.quality > 0]
    return sorted(ranges, key=lambda item: -item.quality)


def matches(item: MediaRange, media_type: str) -> bool:
    """Tell whether a media range admits a concrete media type (``*/*``, ``type/*`` or equal)."""
    if item.essence in ("*/*", media_type):
        return True
    kind, _, subtype = item.essence.partition("/")
    return subtype == "*" and media_type.startswith(kind + "/")


def part_type_of(item: MediaRange) -> str | None:
    """The media type of each part a range asks for, or None when it asks for no multipart answer.

    ``multipart/related`` with a ``type`` gives that type; without one (or with ``*/*``) ``*/*``; ``*/*`` and
    ``multipart/*`` themselves admit any part type.
    """
    if item.essence in (MULTIPART, "multipart/*"):
        return item.part_type or "*/*"
    if item.essence == "*/*":
        return "*/*"
    return None


def not_acceptable(offered: str) -> HTTPException:
    """The 406 answer, naming what this resource offers."""
    return HTTPException(status.HTTP_406_NOT_ACCEPTABLE, f"not acceptable: this resource is offered as {offered}")


def can_convert(stored: str, wanted: str | None) -> bool:
    """Tell whether an object stored in ``stored`` can be sent in ``wanted`` (None: as stored).

    The one conversion offered is to Explicit VR Little Endian.
    """
    return wanted is None or wanted in (stored, EXPLICIT_VR_LITTLE_ENDIAN)
