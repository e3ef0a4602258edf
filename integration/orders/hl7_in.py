"""HL7 v2 orders in: ORM^O01 (v2.3 to v2.5.1) and OMI^O23 (v2.5, v2.5.1) to :class:`OrderMessage`.

The MSH checks and the ACK are in :mod:`integration.orders.hl7_header` (re-exported here).  hl7apy holds the
message structures of every version: it checks that the segments come in an order and number the message
type allows and places them in their groups (see :func:`_layout`).  Field values are then read by position
(the components we read sit at the same positions in v2.3 to v2.5.1): hl7apy's full parse builds an object
per component, about 20 ms a message, which alone would miss the 50 ms p99 goal under load.

The RIS is trusted to know its orders, not to send well-formed messages, so every step names what is wrong
in the ACK (MSA-3 and ERR, HL7 table 0357 codes) and nothing is applied from a message that is not fully
understood:

* **AR** (rejected: not understood, or not from an allowed sender; not remembered, so it may be sent again):
  unsupported message type (200), event (201) or version (203); missing MSH-9/10/12 (101); bad encoding
  characters, an undeclared or unknown character set (102); segments out of order or missing (100); an
  unknown sender, a message too large, or our own failure (207).
* **AE** (understood, cannot be applied; remembered with the control id): no accession number or patient ID
  (101), a value too long or a date/time that is not one (102), an order control other than NW/XO/CA/DC
  (103), an order we do not hold or that belongs to another site (204), a change to a stopped order (206).

Where the fields come from (IHE Scheduled Workflow conventions):

* accession number: OMI ``IPC-1`` (the Imaging Procedure Control segment); ORM ``OBR-18`` (placer field 1,
  the accession number of IHE SWF's ORM); OMI without IPC falls back to ``OBR-18``.
* patient: ``PID-3`` (first repetition with an ID); issuer: its CX-4 namespace id (else universal id).
* requested procedure: ``OBR-4`` (universal service ID: code^text^system, alternate triplet as fallback),
  else ``OBR-44``.
* priority: ``TQ1-9``, else ``ORC-7.6`` / ``OBR-27.6`` (quantity/timing), else ``OBR-5``; ``S``/``STAT``/
  ``A``/``ASAP`` are stat, anything else routine.
* indication: ``OBR-31`` (reason for study; each repetition's text, else its code), else ``OBR-13``.
  ``ORC-16`` is the reason for the order control (why it was cancelled), not an indication.
* ordering provider: ``ORC-12``, else ``OBR-16`` (XCN as "prefix given middle family suffix degree").
* modality: OMI ``IPC-5``, else ``OBR-24`` (diagnostic service section; table 0074 ``NMR``/``NMS`` become
  ``MR``/``NM``; values that are not a modality, such as ``RAD``, are dropped).
* scheduled time: ``TQ1-7``, else ``OBR-36``, else ``ORC-7.4`` / ``OBR-27.4``.  A time without a zone offset
  is taken as UTC (HL7 leaves it to the sender's local time, which we cannot know; configure the RIS to send
  offsets).

Character sets: MSH-18 names it (ASCII, 8859/1..9, 8859/15, UNICODE UTF-8).  Without MSH-18 the message is
taken when it is valid UTF-8 (ASCII is, and many RIS send UTF-8 without saying so) and refused otherwise
("undeclared character set"): guessing Latin-1 could silently garble a name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Element
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from integration.orders.hl7_header import (
    CHARSETS,
    ERROR_TEXT,
    SUPPORTED,
    Header,
    HL7Error,
    build_ack,
    check_header,
    decode,
    read_header,
    reject,
)
from integration.orders.order import InvalidOrder, OrderControl, OrderMessage, OrderPriority

__all__ = [
    "CHARSETS",
    "ERROR_TEXT",
    "SUPPORTED",
    "HL7Error",
    "Header",
    "build_ack",
    "check_header",
    "decode",
    "parse_orders",
    "parse_timestamp",
    "read_header",
]

#: DICOM modalities an order may name (others, such as table 0074's ``RAD``, say nothing about the modality).
MODALITIES = frozenset(
    ["CR", "CT", "DX", "ES", "IO", "MG", "MR", "NM", "OT", "PT", "PX", "RF", "RG", "SC", "US", "XA", "XC"]
)
MODALITY_SYNONYMS = {"NMR": "MR", "NMS": "NM", "RX": "DX", "VUS": "US", "XRC": "XA"}
STAT_PRIORITIES = frozenset({"S", "STAT", "A", "ASAP"})
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


@dataclass(frozen=True)
class _Layout:
    """Where a message's segments sit in its structure: the first PID, and each order group's segments."""

    pid: int | None
    orders: tuple[tuple[int, ...], ...]


@lru_cache(maxsize=256)
def _layout(message_type: str, version: str, names: tuple[str, ...]) -> _Layout:
    """Check the segment order against hl7apy's structure of the message type and version; place the segments.

    hl7apy groups a skeleton of the message (MSH with type and version, then the segment names alone):
    building its objects for every component costs about 20 ms a message, the skeleton a few, and the
    answer depends only on the names, so it is cached.  Raises HL7Error (AR 100) for a wrong order.
    """
    skeleton = "\r".join([f"MSH|^~\\&|||||||{message_type}||P|{version}", *names[1:]])
    try:
        message = parse_message(skeleton, find_groups=True, validation_level=VALIDATION_LEVEL.TOLERANT)
    except HL7apyException as exc:
        raise reject(100, f"the message cannot be parsed ({type(exc).__name__})") from None
    _check_sequence(message)
    placed = list(_walk(message, None))
    if [name for name, _ in placed] != list(names):
        raise reject(100, "the segments do not fit the message structure")
    groups: dict[int, list[int]] = {}
    for index, (_name, group) in enumerate(placed):
        if group is not None:
            groups.setdefault(group, []).append(index)
    pid = next((index for index, (name, _) in enumerate(placed) if name == "PID"), None)
    return _Layout(pid, tuple(tuple(indices) for indices in groups.values()))


def warm_up() -> None:
    """Load hl7apy's structures of the usual layouts now, so the first orders do not wait for them."""
    for message_type, versions in SUPPORTED.items():
        middle = ("ORC", "TQ1", "OBR", "IPC") if message_type == "OMI^O23" else ("ORC", "OBR")
        for version in versions:
            _layout(message_type, version, ("MSH", "PID", "PV1", *middle))
            _layout(message_type, version, ("MSH", "PID", *middle))


def _walk(element: Element, group: int | None) -> Iterator[tuple[str, int | None]]:
    """Segment names depth first, each with the id of the top-level order group it is in (None outside)."""
    for child in element.children:
        if child.classname == "Segment":
            yield str(child.name), group
        else:
            order_group = group if group is not None or not child.name.endswith("_ORDER") else id(child)
            yield from _walk(child, order_group)


def _check_sequence(element: Element) -> None:
    """Each group's segments in the order and number its structure allows."""
    entries = element.reference[1]
    names = [entry[0] for entry in entries]
    position, count = 0, 0
    for child in element.children:
        found = next((j for j in range(position, len(entries)) if names[j] == child.name), None)
        first = child.name if child.classname == "Segment" else _first_segment(child)
        if found is None:
            raise reject(100, f"segment {first} is out of order or not allowed here")
        count = count + 1 if found == position else 1
        maximum = entries[found][2][1]
        if maximum != -1 and count > maximum:
            raise reject(100, f"segment {first} is repeated where it may appear once")
        position = found
        if child.classname == "Group":
            _check_sequence(child)


def _first_segment(group: Element) -> str:
    for child in group.children:
        return str(child.name) if child.classname == "Segment" else _first_segment(child)
    return str(group.name)


Segment = list[str]  # a segment's fields by number: [name, field 1, field 2, ...]


class _Fields:
    """Positional, unescaped field values (component positions are the same in every version we take)."""

    def __init__(self, header: Header) -> None:
        self.field = header.field
        chars = header.encoding
        self.component, self.repetition, self.escape, self.sub = chars[0], chars[1], chars[2], chars[3]

    def parts(self, segment: Segment | None, n: int) -> list[list[list[str]]]:
        """Repetitions of field ``n`` of ``segment``: components, each a list of its subcomponents."""
        if segment is None or len(segment) <= n:
            return []
        out = []
        for repetition in segment[n].split(self.repetition):
            components = repetition.split(self.component)
            out.append([[self.unescape(s).strip() for s in c.split(self.sub)] for c in components])
        return [r for r in out if any(any(c) for c in r)]

    def reps(self, segment: Segment | None, n: int) -> list[list[str]]:
        """Repetitions of field ``n`` of ``segment``, each a list of its components (first subcomponents)."""
        return [[c[0] for c in rep] for rep in self.parts(segment, n)]

    def get(self, segment: Segment | None, n: int, component: int = 1) -> str:
        """Component ``component`` of the first repetition of field ``n`` ('' when absent)."""
        reps = self.reps(segment, n)
        return _at(reps[0], component) if reps else ""

    def unescape(self, value: str) -> str:
        """Resolve HL7 escape sequences (delimiters, hex); formatting commands become a space or nothing."""
        e = self.escape
        if e not in value:
            return value
        named = {"F": self.field, "S": self.component, "T": self.sub, "R": self.repetition, "E": e}

        def one(match: re.Match[str]) -> str:
            code = match.group(1)
            if code in named:
                return named[code]
            if code.startswith("X") and re.fullmatch(r"X([0-9A-Fa-f]{2})+", code):
                return bytes.fromhex(code[1:]).decode("latin-1")
            return " " if code == ".br" else ""

        return re.sub(re.escape(e) + r"([^" + re.escape(e) + r"]*)" + re.escape(e), one, value)


def _at(components: list[str], n: int) -> str:
    return components[n - 1] if len(components) >= n else ""


def parse_orders(text: str, header: Header) -> list[OrderMessage]:
    """Parse a decoded ORM^O01 / OMI^O23 into one :class:`OrderMessage` per order (ORC) group.

    The segment structure is checked with hl7apy (:func:`_layout`); Z segments are ignored.

    Raises
    ------
    HL7Error
        AR for a structure that cannot be parsed (segment order, missing segments); AE for an order
        that cannot be applied (see the module docstring).
    """
    lines = [line for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line.strip()]
    segments = [line.split(header.field) for line in lines if not line.startswith("Z")]
    names = tuple(segment[0] for segment in segments)
    if not names or names[0] != "MSH":
        raise reject(100, "MSH is not the first segment")
    bad = next((name for name in names if not _SEGMENT_NAME.fullmatch(name)), None)
    if bad is not None:
        raise reject(100, "a segment name is not three letters or digits")
    layout = _layout(header.message_type, header.version, names)
    if layout.pid is None:
        raise reject(100, "the message has no PID segment")
    if not layout.orders or any(names[group[0]] != "ORC" for group in layout.orders):
        raise reject(100, "the message has no ORC segment")
    fields = _Fields(header)
    patient_id, issuer = _patient(fields, segments[layout.pid])
    orders = []
    for group in layout.orders:
        members = [segments[index] for index in group]
        orders.append(_order(fields, members, patient_id, issuer, header))
    return orders


def _patient(fields: _Fields, pid: Segment) -> tuple[str, str]:
    """PID-3: the first repetition with an ID, and its issuer (CX-4 namespace id, else universal id)."""
    for identifier in fields.parts(pid, 3):
        if identifier[0][0]:
            issuer = identifier[3] if len(identifier) >= 4 else [""]
            return identifier[0][0], issuer[0] or (issuer[1] if len(issuer) > 1 else "")
    raise HL7Error("AE", 101, "the order has no patient ID (PID-3)")


def _order(fields: _Fields, group: list[Segment], patient_id: str, issuer: str, header: Header) -> OrderMessage:
    orc = group[0]
    obr, ipc, tq1 = (next((s for s in group if s[0] == name), None) for name in ("OBR", "IPC", "TQ1"))
    control = fields.get(orc, 1).upper()
    if control not in {c.value for c in OrderControl}:
        raise HL7Error("AE", 103, f"order control {control[:4] or '(none)'} not supported (NW, XO, CA, DC)")
    accession = fields.get(ipc, 1) or fields.get(obr, 18)
    if not accession:
        where = "IPC-1" if header.message_type == "OMI^O23" else "OBR-18"
        raise HL7Error("AE", 101, f"the order has no accession number ({where})")
    procedure = next(iter(fields.reps(obr, 4)), None) or next(iter(fields.reps(obr, 44)), None) or []
    code, system, text = _at(procedure, 1), _at(procedure, 3), _at(procedure, 2)
    if not code and not text:
        code, text, system = _at(procedure, 4), _at(procedure, 5), _at(procedure, 6)
    priority = (fields.get(tq1, 9) or fields.get(orc, 7, 6) or fields.get(obr, 27, 6) or fields.get(obr, 5)).upper()
    reasons = [_at(r, 2) or _at(r, 1) for r in fields.reps(obr, 31)]
    indication = "; ".join(r for r in reasons if r) or fields.get(obr, 13)
    provider = next(iter(fields.reps(orc, 12) or fields.reps(obr, 16)), None)
    raw_modality = (fields.get(ipc, 5) or fields.get(obr, 24)).upper()
    modality = MODALITY_SYNONYMS.get(raw_modality, raw_modality)
    scheduled = (
        ("TQ1-7", fields.get(tq1, 7)),
        ("OBR-36", fields.get(obr, 36)),
        ("ORC-7", fields.get(orc, 7, 4)),
        ("OBR-27", fields.get(obr, 27, 4)),
    )
    where, when = next(((w, v) for w, v in scheduled if v), ("", ""))
    try:
        return OrderMessage(
            control=OrderControl(control),
            accession_number=accession,
            patient_id=patient_id,
            issuer_of_patient_id=issuer,
            placer_order_number=fields.get(orc, 2) or fields.get(obr, 2) or None,
            filler_order_number=fields.get(orc, 3) or fields.get(obr, 3) or None,
            procedure_code=code or None,
            procedure_coding_system=system or None,
            procedure_text=text or None,
            indication=indication or None,
            priority=OrderPriority.STAT if priority in STAT_PRIORITIES else OrderPriority.ROUTINE,
            ordering_provider=_display_name(provider) if provider else None,
            modality=modality if modality in MODALITIES else None,
            scheduled_at=parse_timestamp(when, where) if when else None,
            message_id=header.control_id,
        )
    except InvalidOrder as exc:
        raise HL7Error("AE", 101 if str(exc).startswith("the order has no") else 102, str(exc)) from None


def _display_name(xcn: list[str]) -> str:
    """XCN as display text: prefix, given, middle, family, suffix, degree; the ID when no name is sent."""
    parts = [_at(xcn, 6), _at(xcn, 3), _at(xcn, 4), _at(xcn, 2), _at(xcn, 5), _at(xcn, 7)]
    return " ".join(p for p in parts if p) or _at(xcn, 1)


def parse_timestamp(value: str, where: str = "date/time") -> datetime:
    """HL7 TS/DTM (``YYYY[MM[DD[HH[MM[SS[.SSSS]]]]]][+/-ZZZZ]``) as an aware datetime; no zone means UTC.

    Raises
    ------
    HL7Error
        AE 102 when the value is not an HL7 date/time.
    """
    match = _TS.match(value.strip())
    if match is None:
        raise HL7Error("AE", 102, f"{where} is not an HL7 date/time")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    tz = UTC
    if zone:
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        return datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]), tzinfo=tz,
        ).astimezone(UTC)  # fmt: skip
    except ValueError:
        raise HL7Error("AE", 102, f"{where} is not a valid date/time") from None
