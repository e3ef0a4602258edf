"""HL7 v2 message headers in and ACKs out: MSH read from raw bytes, the first checks, the ACK with MSA and ERR.

The first checks are those every message passes before it is parsed: type, event, version, delimiters and
character set.

The header is read from the bytes before they are decoded, so a message that is refused for its character
set, its size or its delimiters can still be answered to its sender with its control id.  What each refusal
answers (AR/AE, HL7 table 0357 code) is listed in :mod:`integration.orders.hl7_in`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

#: Message types taken, with the versions each exists in.
SUPPORTED = {"ORM^O01": ("2.3", "2.3.1", "2.4", "2.5", "2.5.1"), "OMI^O23": ("2.5", "2.5.1")}
#: MSH-18 values and their Python codecs.
CHARSETS = {"ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "8859/15": "iso8859-15"}
CHARSETS.update({f"8859/{n}": f"iso8859-{n}" for n in range(1, 10)})
#: HL7 table 0357 (message error condition codes) texts.
ERROR_TEXT = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


class HL7Error(Exception):
    """A message answered AE or AR.

    Attributes
    ----------
    ack_code : str
        ``AE`` or ``AR``.
    error_code : int
        HL7 table 0357 code.
    text : str
        Why, safe to send back (names fields, never values).
    """

    def __init__(self, ack_code: str, error_code: int, text: str) -> None:
        super().__init__(text)
        self.ack_code, self.error_code, self.text = ack_code, error_code, text


def reject(code: int, text: str) -> HL7Error:
    """An AR with this table 0357 code and text."""
    return HL7Error("AR", code, text)


@dataclass(frozen=True)
class Header:
    """MSH of an inbound message, read from its bytes (before decoding, so even a refused one can be answered).

    ``field`` and ``encoding`` are the delimiters; the other attributes are the raw MSH values we need.
    """

    field: str = "|"
    encoding: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = ""
    charset: str = ""

    @property
    def sender(self) -> str:
        """``<MSH-3>^<MSH-4>`` namespace ids: whom the allowlist and the idempotency key know."""
        return f"{self.sending_application}^{self.sending_facility}"


def _first(value: str, encoding: str) -> str:
    """First component (and its first subcomponent) of a raw field."""
    return value.split(encoding[0])[0].split(encoding[3])[0].strip()


def read_header(raw: bytes) -> Header:
    """Read MSH from the start of a message (only the first segment is looked at).

    Raises
    ------
    HL7Error
        AR when there is no MSH segment, its delimiters are not usable or MSH-9/10/12 is missing; the
        error's header attribute is set when enough was read to answer the sender.
    """
    segment = raw.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    if not segment.startswith("MSH") or len(segment) < 8:
        raise reject(100, "the message does not start with an MSH segment")
    field, encoding = segment[3], segment[4:8]
    delimiters = field + encoding
    if len(set(delimiters)) != 5 or any(c.isalnum() or c.isspace() for c in delimiters):
        raise reject(102, "bad encoding characters in MSH-1/MSH-2 (expected |^~\\&)")
    values = segment.split(field)  # values[n] is MSH-(n+1) for n >= 2; values[1] is MSH-2
    if len(values) > 1 and values[1] != encoding:
        raise reject(102, "bad encoding characters in MSH-2 (expected four: component, repetition, escape, sub)")

    def msh(n: int) -> str:
        return values[n - 1] if len(values) >= n else ""

    message_type = msh(9).split(encoding[0])
    header = Header(
        field=field,
        encoding=encoding,
        sending_application=_first(msh(3), encoding),
        sending_facility=_first(msh(4), encoding),
        receiving_application=_first(msh(5), encoding),
        receiving_facility=_first(msh(6), encoding),
        message_type="^".join(part.strip() for part in message_type[:2]),
        control_id=msh(10).strip(),
        processing_id=_first(msh(11), encoding) or "P",
        version=_first(msh(12), encoding),
        charset=msh(18).split(encoding[1])[0].strip().upper(),
    )
    return header


def check_header(header: Header) -> None:
    """Refuse (AR) a header we cannot answer for: missing MSH-9/10/12, unsupported type, event or version."""
    if not header.control_id:
        raise reject(101, "MSH-10 (message control id) is missing")
    if len(header.control_id) > 199 or len(header.sender) > 128:
        raise reject(102, "MSH-10 or MSH-3/MSH-4 is too long")
    if not header.message_type.strip("^"):
        raise reject(101, "MSH-9 (message type) is missing")
    if not header.version:
        raise reject(101, "MSH-12 (version id) is missing")
    kind, _, event = header.message_type.partition("^")
    if header.message_type not in SUPPORTED:
        if kind in {name.split("^")[0] for name in SUPPORTED}:
            raise reject(201, f"event {event or '(none)'} of {kind} is not supported (ORM^O01, OMI^O23)")
        raise reject(200, f"message type {header.message_type} is not supported (ORM^O01, OMI^O23)")
    if header.version not in SUPPORTED[header.message_type]:
        versions = ", ".join(SUPPORTED[header.message_type])
        raise reject(203, f"{header.message_type} version {header.version} is not supported ({versions})")


def decode(raw: bytes, header: Header) -> str:
    """Decode a message by its MSH-18 (see the module docstring for messages without one).

    Raises
    ------
    HL7Error
        AR 102 for an unknown character set or bytes that are not in the declared or assumed one.
    """
    if header.charset:
        codec = CHARSETS.get(header.charset)
        if codec is None:
            raise reject(102, f"character set {header.charset[:20]} (MSH-18) is not supported")
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            raise reject(102, f"the message is not valid {header.charset} (MSH-18)") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise reject(102, "undeclared character set: non-ASCII bytes without MSH-18") from None


def _escape(value: str) -> str:
    """Escape text for our ACK (standard delimiters: field, component, repetition, escape, subcomponent)."""
    value = value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    value = value.replace("&", "\\T\\").replace("~", "\\R\\")
    return " ".join(value.split())


def build_ack(header: Header | None, code: str, text: str | None = None, error_code: int | None = None) -> str:
    """The ACK to ``header``'s message: MSH with sender and receiver swapped, MSA, and ERR when it failed.

    The version is the message's when supported (else 2.5.1).  v2.3 to v2.4 carry the error in ERR-1
    (segment^sequence^field^code) and MSA-6; v2.5+ in ERR-3 (code) and ERR-4 (severity ``E``).

    Parameters
    ----------
    header : Header or None
        The message's MSH (None when it could not be read: the ACK then names no receiver or control id).
    code : str
        ``AA``, ``AE`` or ``AR``.
    text : str, optional
        Why (MSA-3, ERR).
    error_code : int, optional
        HL7 table 0357 code (207 when ``code`` is not AA and none is given).

    Returns
    -------
    str
        The ACK, segments separated by carriage returns (without MLLP framing).
    """
    header = header or Header()
    versions = {v for vs in SUPPORTED.values() for v in vs}
    version = header.version if header.version in versions else "2.5.1"
    event = header.message_type.partition("^")[2] or ""
    message_type = "ACK" if not event else f"ACK^{_escape(event)}" + ("" if version == "2.3" else "^ACK")
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    msh = [
        "MSH", "^~\\&", _escape(header.receiving_application), _escape(header.receiving_facility),
        _escape(header.sending_application), _escape(header.sending_facility), now, "", message_type,
        uuid.uuid4().hex[:20], _escape(header.processing_id)[:3] or "P", version,
    ]  # fmt: skip
    if header.charset in CHARSETS:
        msh += ["", "", "", "", "", header.charset]
    text = _escape(text or "")[:200]
    segments = ["|".join(msh)]
    if code == "AA":
        segments.append("|".join(["MSA", "AA", _escape(header.control_id)] + ([text] if text else [])))
        return "\r".join(segments)
    error = error_code or 207
    coded = f"{error}^{ERROR_TEXT.get(error, '')}^HL70357"
    if version in ("2.3", "2.3.1", "2.4"):
        segments.append("|".join(["MSA", code, _escape(header.control_id), text, "", "", coded]))
        segments.append("|".join(["ERR", "^^^" + coded.replace("^", "&")]))
    else:
        segments.append("|".join(["MSA", code, _escape(header.control_id), text]))
        segments.append("|".join(["ERR", "", "", coded, "E", "", "", "", text]))
    return "\r".join(segments)
