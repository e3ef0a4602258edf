"""What the FHIR and HL7 builders need to know about one report version.

:class:`ReportDocument` is a plain value: the store's loader fills it from the
``reports`` / ``report_revisions`` rows and the study's DICOM header, and the
builders (:mod:`integration.reports.fhir`, :mod:`integration.reports.hl7`) turn
it into documents without touching the database or pydicom.
:func:`dicom_study_fields` maps the patient and study attributes of a DICOM
header onto the document's fields; :func:`from_dicom_header` builds a whole
document from a header and the report's own fields.

Every text field may hold untrusted text (model output, free-text DICOM
attributes); the builders escape it for their format.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Literal, TypedDict

from integration.findings import Finding, PriorReference, text_lines

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: Report version states: a model's draft, or a radiologist's signed report.
ReportState = Literal["draft", "signed"]
#: What a rendered version does to what a receiver already holds: the version as first sent (``original``),
#: a signed version replacing an earlier signed one (``amended``), or the withdrawal of a draft (``withdrawn``).
VersionRole = Literal["original", "amended", "withdrawn"]
#: Shown with every draft wherever it is sent.
AI_DRAFT_NOTICE = "AI-generated draft, not verified by a radiologist."

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DICOM_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DICOM_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DICOM_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


@dataclass(frozen=True)
class PersonName:
    """The alphabetic components of a DICOM PN value.

    Attributes
    ----------
    family, given, middle, prefix, suffix : str
        The five components (empty when absent).
    """

    family: str = ""
    given: str = ""
    middle: str = ""
    prefix: str = ""
    suffix: str = ""

    @classmethod
    def from_dicom(cls, value: str) -> PersonName:
        """Split a DICOM PN string (``Family^Given^Middle^Prefix^Suffix[=...]``).

        Only the first (alphabetic) component group is used; a value without
        ``^`` (a user name, say) becomes the family name.

        Parameters
        ----------
        value : str
            The PN value.

        Returns
        -------
        PersonName
            Its components, stripped of padding.
        """
        group = value.split("=", 1)[0]
        parts = [part.strip() for part in group.split("^")[:5]]
        parts += [""] * (5 - len(parts))
        return cls(*parts)

    @property
    def display(self) -> str:
        """The name in reading order (``Dr John A Doe Jr``)."""
        return " ".join(part for part in (self.prefix, self.given, self.middle, self.family, self.suffix) if part)


@dataclass(frozen=True, kw_only=True)
class ReportDocument:
    """One version of a report (a draft or a signed revision), ready to be rendered.

    Attributes
    ----------
    report_key : str
        Identifies this version, e.g. ``"draft:12"`` (report 12) or ``"signed:5"``
        (revision 5); document ids and HL7 message control ids derive from it, so a
        resend of the same version is byte-identical.
    status : {"draft", "signed"}
        A model's draft (preliminary) or a radiologist's signed report (final).
    study_uid : str
        Study Instance UID.
    issued : datetime.datetime
        When this version was made (timezone-aware).
    text : str
        The full report text; when blank, :attr:`body_text` composes it from the sections.
    findings : tuple of Finding
        The findings, in report order.
    impression, limitations : str
        Report sections ('' when absent).
    accession_number, study_description : str
        From the study ('' when absent).
    study_datetime : datetime.datetime or datetime.date, optional
        When the study was performed: an aware datetime, a date when only the date
        is known, or None.
    patient_id, patient_id_issuer : str
        DICOM Patient ID and Issuer of Patient ID ('' when absent).
    patient_name : str
        DICOM PN string (``Family^Given^Middle^Prefix^Suffix``).
    patient_birth_date : datetime.date, optional
        Date of birth.
    patient_sex : str
        DICOM sex code (``M``, ``F``, ``O``) or ''.
    model_id, model_revision, prompt_version : str
        The model and prompt that wrote the draft.
    author : str
        The signing radiologist (DICOM PN string); required for signed reports.
    organization : str
        The institution issuing the report ('' when not configured).
    comparison : str
        The comparison with prior studies, or why there is none ("No prior study available."); '' when the
        version records neither (older reports).
    priors : tuple of PriorReference
        The prior studies compared with.

    Raises
    ------
    ValueError
        From the constructor, when a field is inconsistent (unknown status, naive
        datetime, invalid UID, signed report without author).
    """

    report_key: str
    status: ReportState
    study_uid: str
    issued: datetime
    text: str
    findings: tuple[Finding, ...] = ()
    impression: str = ""
    limitations: str = ""
    accession_number: str = ""
    study_description: str = ""
    study_datetime: datetime | date | None = None
    patient_id: str = ""
    patient_id_issuer: str = ""
    patient_name: str = ""
    patient_birth_date: date | None = None
    patient_sex: str = ""
    model_id: str = ""
    model_revision: str = ""
    prompt_version: str = ""
    author: str = ""
    organization: str = ""
    comparison: str = ""
    priors: tuple[PriorReference, ...] = ()

    def __post_init__(self) -> None:
        if not self.report_key.strip():
            raise ValueError("report_key is empty")
        if self.status not in ("draft", "signed"):
            raise ValueError(f"status must be 'draft' or 'signed', not {self.status!r}")
        if not (0 < len(self.study_uid) <= 64 and _UID.fullmatch(self.study_uid)):
            raise ValueError("study_uid is not a valid DICOM UID")
        if self.issued.tzinfo is None or self.issued.utcoffset() is None:
            raise ValueError("issued must be timezone-aware")
        if isinstance(self.study_datetime, datetime) and self.study_datetime.utcoffset() is None:
            raise ValueError("study_datetime must be timezone-aware (or a date)")
        if self.status == "signed" and not self.author.strip():
            raise ValueError("a signed report needs its author")

    def check_role(self, role: VersionRole) -> None:
        """Refuse a role this version cannot have: only a signed version amends, only a draft is withdrawn.

        Raises
        ------
        ValueError
            ``amended`` for a draft, ``withdrawn`` for a signed version, or an unknown role.
        """
        allowed = {"original": ("draft", "signed"), "amended": ("signed",), "withdrawn": ("draft",)}
        if self.status not in allowed.get(role, ()):
            raise ValueError(f"a {self.status} version cannot be sent as {role!r}")

    @property
    def is_draft(self) -> bool:
        """True for an unverified draft."""
        return self.status == "draft"

    @property
    def body_text(self) -> str:
        """The report text; composed from the sections when :attr:`text` is blank."""
        if self.text.strip():
            return self.text
        notice = AI_DRAFT_NOTICE if self.is_draft else None
        return "\n".join(text_lines(self.findings, self.impression, self.limitations, self.comparison, notice))


class DicomStudyFields(TypedDict):
    """The :class:`ReportDocument` fields that come from the study's DICOM header."""

    study_uid: str
    accession_number: str
    study_description: str
    study_datetime: datetime | date | None
    patient_id: str
    patient_id_issuer: str
    patient_name: str
    patient_birth_date: date | None
    patient_sex: str


def from_dicom_header(
    header: Dataset,
    *,
    report_key: str,
    status: ReportState,
    issued: datetime,
    text: str,
    findings: Iterable[Finding | tuple[str, Iterable[int]]] = (),
    impression: str = "",
    limitations: str = "",
    model_id: str = "",
    model_revision: str = "",
    prompt_version: str = "",
    author: str = "",
    organization: str = "",
    comparison: str = "",
    priors: tuple[PriorReference, ...] = (),
    local_timezone: tzinfo | None = None,
) -> ReportDocument:
    """Build a report document: the report's own fields plus the study's DICOM header.

    Parameters
    ----------
    header : pydicom.dataset.Dataset
        Any instance of the study (pixel data is not read); see :func:`dicom_study_fields`.
    report_key : str
        Identifies the version (``"draft:12"``, ``"signed:5"``).
    status : {"draft", "signed"}
        The version's state.
    issued : datetime.datetime
        When the version was made (timezone-aware).
    text : str
        The full report text.
    findings : iterable of Finding or (str, iterable of int)
        The findings, as :class:`Finding` or ``(text, image numbers)`` pairs.
    impression, limitations, model_id, model_revision, prompt_version, author, organization, comparison : str
        As in :class:`ReportDocument`.
    priors : tuple of PriorReference
        As in :class:`ReportDocument`.
    local_timezone : datetime.tzinfo, optional
        See :func:`dicom_study_fields`.

    Returns
    -------
    ReportDocument
        The document.

    Raises
    ------
    ValueError
        If the header has no Study Instance UID, or the fields are inconsistent.
    """
    return ReportDocument(
        **dicom_study_fields(header, local_timezone=local_timezone),
        report_key=report_key,
        status=status,
        issued=issued,
        text=text,
        findings=tuple(_finding(item) for item in findings),
        impression=impression,
        limitations=limitations,
        model_id=model_id,
        model_revision=model_revision,
        prompt_version=prompt_version,
        author=author,
        organization=organization,
        comparison=comparison,
        priors=priors,
    )


def dicom_study_fields(header: Dataset, *, local_timezone: tzinfo | None = None) -> DicomStudyFields:
    """Map the patient and study attributes of a DICOM header onto report fields.

    Missing or malformed optional attributes give '' or None; nothing is guessed.

    Parameters
    ----------
    header : pydicom.dataset.Dataset
        Any instance of the study (pixel data is not read).
    local_timezone : datetime.tzinfo, optional
        The timezone of the modality's local time, used when the header has no
        Timezone Offset From UTC (0008,0201); by default the host's local
        timezone (with its daylight-saving rules for that date).

    Returns
    -------
    DicomStudyFields
        Study UID, accession number, study description and date/time, patient ID,
        issuer, name (PN string), birth date and sex.

    Raises
    ------
    ValueError
        If the header has no Study Instance UID.
    """
    study_uid = _text(header, "StudyInstanceUID")
    if not study_uid:
        raise ValueError("the header has no Study Instance UID")
    return DicomStudyFields(
        study_uid=study_uid,
        accession_number=_text(header, "AccessionNumber"),
        study_description=_text(header, "StudyDescription"),
        study_datetime=_study_datetime(header, local_timezone),
        patient_id=_text(header, "PatientID"),
        patient_id_issuer=_text(header, "IssuerOfPatientID"),
        patient_name=_text(header, "PatientName"),
        patient_birth_date=_dicom_date(_text(header, "PatientBirthDate")),
        patient_sex=_text(header, "PatientSex").upper(),
    )


def _finding(item: Finding | tuple[str, Iterable[int]]) -> Finding:
    if isinstance(item, Finding):
        return item
    text, images = item
    return Finding(str(text), tuple(int(image) for image in images))


def _text(header: Dataset, keyword: str) -> str:
    value = header.get(keyword)
    if value is None:
        return ""
    return str(value).strip(" \x00")


def _dicom_date(value: str) -> date | None:
    match = _DICOM_DATE.fullmatch(value.replace(".", "").replace("-", ""))
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _dicom_time(value: str) -> time | None:
    match = _DICOM_TIME.fullmatch(value.replace(":", ""))
    if match is None:
        return None
    fraction = (match[4] or "").ljust(6, "0")
    try:
        return time(int(match[1]), int(match[2] or 0), int(match[3] or 0), int(fraction or 0))
    except ValueError:
        return None


def _dicom_offset(value: str) -> timezone | None:
    match = _DICOM_OFFSET.fullmatch(value)
    if match is None:
        return None
    delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
    try:
        return timezone(-delta if match[1] == "-" else delta)
    except ValueError:
        return None


def _study_datetime(header: Dataset, local_timezone: tzinfo | None) -> datetime | date | None:
    day = _dicom_date(_text(header, "StudyDate"))
    if day is None:
        return None
    moment = _dicom_time(_text(header, "StudyTime"))
    if moment is None:
        return day
    naive = datetime.combine(day, moment)
    offset = _dicom_offset(_text(header, "TimezoneOffsetFromUTC"))
    if offset is not None:
        return naive.replace(tzinfo=offset)
    if local_timezone is not None:
        return naive.replace(tzinfo=local_timezone)
    return naive.astimezone()
