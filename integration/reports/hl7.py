r"""A report version as an HL7 v2.5.1 ORU^R01 message.

The message is built in hl7apy's ORU_R01 structure (PATIENT_RESULT ->
PATIENT, ORDER_OBSERVATION -> OBSERVATION groups) at strict validation level
and checked with ``Message.validate()`` before it is returned::

    MSH|^~\&|PACSVLM|<organization>|<receiving app>|<receiving facility>|<issued>||ORU^R01^ORU_R01|<control id>|
        P|2.5.1||||||UNICODE UTF-8                                          (one line)
    PID|1||<patient id>^^^<issuer>^MR||<family>^<given>^<middle>^<suffix>^<prefix>||<birth date>|<sex>
    ORC|RE|<accession>|<accession>
    OBR|1|<accession>|<accession>|^<study description>|||<study date/time>|...|<issued>||RAD|P or F|...|<radiologist>
    NTE|1||AI-generated draft, not verified by a radiologist. Model ...        (drafts only)
    OBX|1|ST|110180^Study Instance UID^DCM||<study uid>||||||P or F
    OBX|2|ST|121018^Procedure Study Instance UID^DCM|2.1|<prior study uid>|...  (one per prior compared with)
    OBX|3|TX|18834-2^Radiology Comparison study^LN|2|<comparison line 1>|...    (one OBX per comparison line)
    OBX|4|TX|18748-4^Diagnostic imaging study^LN|1|<report line 1>||||||P or F|||<study date/time>||<radiologist>
    OBX|5|TX|...                                                               (one OBX per report line)

The comparison with prior studies (or the line saying there was none, or why it could not be fetched) has
its own TX observation, coded like the report text with LOINC: 18834-2, the comparison section's code that
DICOM's TID 2000 and the FHIR DiagnosticReport use too; the prior studies it rests on are named by their
Study Instance UIDs in the same observation sub-ID group (2, 2.1, 2.2 ...), as DICOM's Procedure Study
Instance UID (121018).  The report text lines carry it as well (its ``COMPARISON:`` line).

Result status (OBR-25 from HL7 table 0123, OBX-11 from table 0085) says what
the message does to what the receiver holds (``role``):

============================  ======  ======
version                       OBR-25  OBX-11
============================  ======  ======
draft                         ``P``   ``P``
signed (the first signed)     ``F``   ``F``
signed after a signed one     ``C``   ``C``   (correction: replaces the final result)
withdrawn draft               ``C``   ``W``   (post the original as wrong; an NTE says it is withdrawn)
============================  ======  ======

Signed reports name the radiologist as principal result interpreter (OBR-32)
and responsible observer (OBX-16).  The message control id derives from the
report key (a withdrawal's key ``withdrawn:<report id>`` differs from the
draft's ``draft:<report id>``, so each message has its own), and the message
date/time is the version's issue time, so a resend of the same version is
byte-identical.

Every value is escaped by :func:`escape_text` (``\`` first, then ``|^&~``) and
line breaks never reach a segment: the report text is split into one TX OBX
per line, and other fields have line breaks and control characters replaced.
(hl7apy's own escaping leaves ``\H\``-like sequences in the input unescaped, so
escaped ER7 values are handed to it instead.)
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message, Segment

from integration.findings import clean_text
from integration.reports.document import AI_DRAFT_NOTICE, PersonName, ReportDocument, VersionRole

#: MSH-3: our application name.
SENDING_APPLICATION = "PACSVLM"
HL7_VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
#: MSH-18: the message is text; whoever frames it (MLLP) encodes it as UTF-8.
CHARACTER_SET = "UNICODE UTF-8"
#: OBX-3 of the report text lines and of the study UID.
REPORT_TEXT_ID = ("18748-4", "Diagnostic imaging study", "LN")
STUDY_UID_ID = ("110180", "Study Instance UID", "DCM")
#: OBX-3 of the comparison lines and of the prior studies' UIDs.
COMPARISON_ID = ("18834-2", "Radiology Comparison study", "LN")
PRIOR_STUDY_UID_ID = ("121018", "Procedure Study Instance UID", "DCM")
#: MSH-10 is an ST of at most 20 characters in v2.5.1.
MAX_CONTROL_ID = 20
#: The HL7 explicit null, for required fields without a value.
HL7_NULL = '""'

#: (OBR-25, OBX-11) of a version by its status and role.
_RESULT_STATUS = {
    ("draft", "original"): ("P", "P"),
    ("signed", "original"): ("F", "F"),
    ("signed", "amended"): ("C", "C"),
    ("draft", "withdrawn"): ("C", "W"),
}
#: The note a withdrawal carries (NTE), beside the draft's AI notice.
WITHDRAWN_NOTICE = "Withdrawn: this AI-generated draft was withdrawn and must not be used."
_SEX = {"M": "M", "F": "F", "O": "O"}
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_LINE_BREAK = re.compile(r"\r\n|[\r\n]")
_NOT_CONTROL_ID = re.compile(r"[^A-Za-z0-9.-]")


def oru_r01(
    doc: ReportDocument,
    *,
    receiving_application: str = "RIS",
    receiving_facility: str = "",
    role: VersionRole = "original",
) -> str:
    r"""Render a report version as an HL7 v2.5.1 ORU^R01 message.

    Parameters
    ----------
    doc : ReportDocument
        The report version.
    receiving_application, receiving_facility : str
        MSH-5 and MSH-6.
    role : {"original", "amended", "withdrawn"}
        What the message does (see the module docstring's result status table): ``amended`` for a signed
        version after an earlier signed one, ``withdrawn`` for a draft taken back.

    Returns
    -------
    str
        The message in ER7, segments separated by ``\r`` (no MLLP framing); the
        same arguments always give the same string.

    Raises
    ------
    ValueError
        ``amended`` for a draft or ``withdrawn`` for a signed version.
    hl7apy.exceptions.ValidationError
        If the message fails hl7apy's strict structure validation (a bug here).
    """
    doc.check_role(role)
    order_status, status = _RESULT_STATUS[(doc.status, role)]
    message = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _header(message, doc, receiving_application, receiving_facility)
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    _patient(result.add_group("ORU_R01_PATIENT").add_segment("PID"), doc)
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    _order(order, doc, order_status)
    notes = [_draft_note(doc)] if doc.is_draft else []
    if role == "withdrawn":
        notes.append(WITHDRAWN_NOTICE)
    for number, note in enumerate(notes, start=1):
        nte = order.add_segment("NTE")
        nte.nte_1 = str(number)
        nte.nte_3 = escape_text(note)
    _observation(order, 1, "ST", STUDY_UID_ID, "", escape_text(doc.study_uid), status, doc)
    number = 1
    if comparison := report_lines(clean_text(doc.comparison)):
        for rank, prior in enumerate(doc.priors, start=1):
            number += 1
            uid = escape_text(prior.study_uid)
            _observation(order, number, "ST", PRIOR_STUDY_UID_ID, f"2.{rank}", uid, status, doc)
        for line in comparison:
            number += 1
            _observation(order, number, "TX", COMPARISON_ID, "2", escape_text(line), status, doc)
    for line in report_lines(doc.body_text):
        number += 1
        _observation(order, number, "TX", REPORT_TEXT_ID, "1", escape_text(line), status, doc)
    message.validate()
    return str(message.to_er7())


def escape_text(text: str) -> str:
    r"""Escape a value for an ER7 field, component or subcomponent.

    Parameters
    ----------
    text : str
        Untrusted text.

    Returns
    -------
    str
        The text with ``\`` as ``\E\``, ``|`` as ``\F\``, ``^`` as ``\S\``,
        ``&`` as ``\T\``, ``~`` as ``\R\``; line breaks become spaces and other
        control characters are removed, so no value can end a segment.
    """
    text = _LINE_BREAK.sub(" ", clean_text(text, strip=False)).replace("\t", " ")
    for char, sequence in _ESCAPES:
        text = text.replace(char, sequence)
    return text


def report_lines(text: str) -> list[str]:
    """Split report text into the lines that become TX OBX segments.

    Parameters
    ----------
    text : str
        The report text (any line-break convention).

    Returns
    -------
    list of str
        The lines, trailing whitespace removed; blank lines are kept (they
        separate sections); leading and trailing blank lines are dropped.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def control_id(report_key: str) -> str:
    """Return the MSH-10 message control id of a report version.

    Parameters
    ----------
    report_key : str
        For example ``"signed:5"``.

    Returns
    -------
    str
        ``PVLM-`` and the key (``PVLM-signed-5``), characters outside
        ``[A-Za-z0-9.-]`` replaced by ``-``; a hash of the key when that exceeds
        20 characters.
    """
    candidate = "PVLM-" + _NOT_CONTROL_ID.sub("-", report_key)
    if len(candidate) <= MAX_CONTROL_ID:
        return candidate
    return "PVLM-" + hashlib.sha256(report_key.encode("utf-8")).hexdigest()[: MAX_CONTROL_ID - 5]


def hl7_timestamp(moment: datetime | date) -> str:
    """Format a date or an aware datetime as an HL7 DTM (``YYYYMMDDHHMMSS+ZZZZ``).

    Parameters
    ----------
    moment : datetime.datetime or datetime.date
        The value; seconds' fractions are dropped.

    Returns
    -------
    str
        The DTM; ``YYYYMMDD`` for a date.
    """
    if isinstance(moment, datetime):
        return moment.strftime("%Y%m%d%H%M%S%z")
    return moment.strftime("%Y%m%d")


def _components(*values: str, separator: str = "^") -> str:
    return separator.join(escape_text(value.strip()) for value in values).rstrip(separator)


def _person(pn: str, separator: str = "^") -> str:
    """Family, given, middle, suffix, prefix (XPN/XCN order) of a DICOM PN."""
    name = PersonName.from_dicom(pn)
    return _components(name.family, name.given, name.middle, name.suffix, name.prefix, separator=separator)


def _header(message: Message, doc: ReportDocument, receiving_application: str, receiving_facility: str) -> None:
    msh = message.msh
    msh.msh_3 = SENDING_APPLICATION
    if doc.organization.strip():
        msh.msh_4 = escape_text(doc.organization.strip())
    if receiving_application.strip():
        msh.msh_5 = escape_text(receiving_application.strip())
    if receiving_facility.strip():
        msh.msh_6 = escape_text(receiving_facility.strip())
    msh.msh_7 = hl7_timestamp(doc.issued)
    msh.msh_9 = MESSAGE_TYPE
    msh.msh_10 = control_id(doc.report_key)
    msh.msh_11 = "P"
    msh.msh_12 = HL7_VERSION
    msh.msh_18 = CHARACTER_SET


def _patient(pid: Segment, doc: ReportDocument) -> None:
    pid.pid_1 = "1"
    # PID-3 and PID-5 are required: an unknown value is sent as the HL7 null "".
    if doc.patient_id.strip():
        pid.pid_3 = _components(doc.patient_id, "", "", doc.patient_id_issuer, "MR")
    else:
        pid.pid_3 = HL7_NULL
    pid.pid_5 = _person(doc.patient_name) or HL7_NULL
    if doc.patient_birth_date is not None:
        pid.pid_7 = hl7_timestamp(doc.patient_birth_date)
    if doc.patient_sex.strip():
        pid.pid_8 = _SEX.get(doc.patient_sex.strip().upper(), "U")


def _order(group: Group, doc: ReportDocument, status: str) -> None:
    accession = escape_text(doc.accession_number.strip())
    orc = group.add_segment("ORC")
    orc.orc_1 = "RE"
    obr = group.add_segment("OBR")
    obr.obr_1 = "1"
    if accession:
        orc.orc_2 = orc.orc_3 = obr.obr_2 = obr.obr_3 = accession
    description = escape_text(doc.study_description.strip())
    obr.obr_4 = f"^{description}" if description else _components(*REPORT_TEXT_ID)
    if doc.study_datetime is not None:
        obr.obr_7 = hl7_timestamp(doc.study_datetime)
    obr.obr_22 = hl7_timestamp(doc.issued)
    obr.obr_24 = "RAD"
    obr.obr_25 = status
    if not doc.is_draft:
        # OBR-32 is an NDL whose first component (CNN) holds the name as subcomponents.
        obr.obr_32 = "&" + _person(doc.author, separator="&")


def _observation(
    group: Group,
    number: int,
    value_type: str,
    code: tuple[str, str, str],
    sub_id: str,
    value: str,
    status: str,
    doc: ReportDocument,
) -> None:
    obx = group.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
    obx.obx_1 = str(number)
    obx.obx_2 = value_type
    obx.obx_3 = _components(*code)
    if sub_id:
        obx.obx_4 = sub_id
    if value:
        obx.obx_5 = value
    obx.obx_11 = status
    if doc.study_datetime is not None:
        obx.obx_14 = hl7_timestamp(doc.study_datetime)
    if not doc.is_draft:
        obx.obx_16 = "^" + _person(doc.author)


def _draft_note(doc: ReportDocument) -> str:
    model = doc.model_id.strip() or "unknown model"
    parts = [AI_DRAFT_NOTICE, f"Model: {model}"]
    if doc.model_revision.strip():
        parts.append(f"revision {doc.model_revision.strip()}")
    if doc.prompt_version.strip():
        parts.append(f"prompt {doc.prompt_version.strip()}")
    return " ".join(parts[:2]) + "".join(f", {part}" for part in parts[2:]) + "."
