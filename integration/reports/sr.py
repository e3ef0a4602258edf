"""A report as DICOM SR: the model's draft (PARTIAL, UNVERIFIED) and the radiologist's signed version.

Both are Comprehensive SR documents following TID 2000 (content tree: :mod:`integration.reports.sr_content`),
in the source study (same Study Instance UID, patient and study modules copied from one of its instances),
as IHE AI Results asks: the observer is a device (TID 1004, the model) with the algorithm's name and
version (TID 4019), every finding references the instances (and frames) it was inferred from, and the
Current Requested Procedure Evidence Sequence lists every instance of the study that the model saw.

Comparison (:mod:`integration.reports.sr_priors`): each prior study the model was given is described in a
Prior Procedure Descriptions section, the comparison statement (or "No prior study available.", or why the
prior could not be fetched) is a Previous Findings section, and the prior's instances that the model saw are
listed, with the prior's Study Instance UID, in the Pertinent Other Evidence Sequence (0040,A385).

* A **draft** is Completion Flag PARTIAL, Verification Flag UNVERIFIED, Preliminary Flag PRELIMINARY,
  instance 1 of its own series, series number :data:`DRAFT_SERIES_NUMBER`, described as
  "AI draft, not verified".
* A draft also carries each finding's confidence score with its meaning and band, the decoding path, the
  consistency checks and critical matches (:mod:`integration.reports.sr_safety`); a signed version does not.
* A **signed** report is a new SR instance: COMPLETE, VERIFIED, FINAL, with a Verifying Observer (the
  radiologist, the organization and the date-time), the radiologist as a person observer beside the
  device, the edited findings, and its predecessor (the draft or the previous signed version) in the
  Predecessor Documents Sequence.  Signed versions of a report share one series of their own
  (:data:`SIGNED_SERIES_NUMBER`, "Signed report (AI-assisted)"), so the draft's series never holds a
  verified document; the instance number is the report version (2, 3 ...).
* A report **written by hand** (``ReportForSr.algorithm`` None) has no device observer and no TID 4019: its
  signed version's only observer is the radiologist, and its series say nothing of AI
  (:data:`MANUAL_DRAFT_SERIES_DESCRIPTION`, :data:`MANUAL_SIGNED_SERIES_DESCRIPTION`).
"""

from __future__ import annotations

import re
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from integration.findings import Finding, PriorReference, clean_text
from integration.reports.sr_content import (
    MAX_TEXT_CHARS,
    ReadFinding,
    SeenFrame,
    algorithm_items,
    coding_schemes,
    language_items,
    read_content,
    report_sections,
    root_container,
)
from integration.reports.sr_priors import ReadComparison, comparison_sections, read_comparison
from integration.reports.sr_safety import DraftSafety, ReadSafety, finding_extras, read_safety, safety_sections

DRAFT_SERIES_NUMBER = 9901
SIGNED_SERIES_NUMBER = 9902
DRAFT_SERIES_DESCRIPTION = "AI draft, not verified"
SIGNED_SERIES_DESCRIPTION = "Signed report (AI-assisted)"
MANUAL_DRAFT_SERIES_DESCRIPTION = "Draft report, not verified"
MANUAL_SIGNED_SERIES_DESCRIPTION = "Signed report"
MANUFACTURER = "pacs-vlm"
#: UTF-8, so any text a model or a radiologist writes can be encoded.
CHARACTER_SET = "ISO_IR 192"
#: Type 2 attributes of the patient and study modules that highdicom reads from the source.
_PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_LO = re.compile(r"^[^\\\x00-\x1f\x7f]{1,64}$")


@dataclass(frozen=True)
class Algorithm:
    """The model that drafted a report (TID 4019 and the TID 1004 device observer)."""

    model_id: str
    model_revision: str
    model_family: str
    prompt_version: str

    @property
    def device_uid(self) -> str:
        """A Device Observer UID derived from model id and revision: the same model, the same device."""
        name = f"pacs-vlm device\n{self.model_id}\n{self.model_revision}"
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


@dataclass(frozen=True)
class ReportForSr:
    """What an SR of a report shows.

    Attributes
    ----------
    findings : tuple of Finding
        The findings, each with the image numbers it cites.
    impression, limitations : str
        Free text; '' when none.
    evidence : tuple of SeenFrame
        Every instance frame the model saw, by image number.
    algorithm : Algorithm or None
        The model, its revision and the prompt version; None for a report written by hand (no device observer,
        no TID 4019).
    created_at : datetime
        When the content was made (aware): the draft's creation time for a draft.
    comparison : str
        The comparison with the prior studies ('' when none).
    priors : tuple of PriorReference
        The prior studies the model was given (their images are in ``evidence`` with their ``study_uid``).
    prior_note : str
        Why there is no prior ('' when nothing was recorded: the SR then says "No prior study available.").
    safety : DraftSafety or None
        The draft's confidence method and bands, decoding path, checks and critical matches
        (:mod:`integration.reports.sr_safety`): written into a draft's SR only, never a signed one.
    """

    findings: tuple[Finding, ...]
    impression: str
    limitations: str
    evidence: tuple[SeenFrame, ...]
    algorithm: Algorithm | None
    created_at: datetime
    comparison: str = ""
    priors: tuple[PriorReference, ...] = ()
    prior_note: str = ""
    safety: DraftSafety | None = None


@dataclass(frozen=True)
class Verification:
    """Who verified (signed) a report, for whom and when.

    Attributes
    ----------
    observer_name : str
        The radiologist as a DICOM person name, e.g. ``"Doe^Jane"``.
    organization : str
        The radiologist's organization (at most 64 characters).
    verified_at : datetime
        When (aware).

    Raises
    ------
    ValueError
        A name that is not a valid person name, or an organization that is empty, too long or has
        control characters or backslashes; a naive ``verified_at``.
    """

    observer_name: str
    organization: str
    verified_at: datetime

    def __post_init__(self) -> None:
        groups = self.observer_name.split("=")
        if (
            not self.observer_name.strip("^= ")
            or len(groups) > 3
            or len(self.observer_name) > 128
            or any(len(group) > 64 or group.count("^") > 4 for group in groups)
            or re.search(r"[\\\x00-\x1f\x7f]", self.observer_name)
        ):
            raise ValueError(
                f"not a DICOM person name: {self.observer_name!r} (use Family^Given, at most 64 characters a group)"
            )
        if not _LO.match(self.organization) or not self.organization.strip():
            raise ValueError(f"not a valid organization: {self.organization!r} (1-64 characters, no backslash)")
        if self.verified_at.tzinfo is None:
            raise ValueError("verified_at must be timezone-aware")


@dataclass(frozen=True)
class VerifyingObserver:
    """One item of the Verifying Observer Sequence, as read back."""

    name: str
    organization: str
    verified_at: str


@dataclass(frozen=True)
class SrReading:
    """An SR document read back through highdicom."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    series_description: str
    instance_number: int
    completion_flag: str
    verification_flag: str
    preliminary_flag: str
    findings: tuple[ReadFinding, ...]
    impression: str
    limitations: str
    algorithm_name: str
    algorithm_version: str
    algorithm_parameters: tuple[str, ...]
    device_observer_uid: str
    person_observers: tuple[str, ...]
    verifying_observers: tuple[VerifyingObserver, ...] = field(default=())
    predecessors: tuple[str, ...] = field(default=())
    evidence: tuple[str, ...] = field(default=())
    other_evidence: tuple[tuple[str, str], ...] = field(default=())
    comparison: ReadComparison = field(default_factory=ReadComparison)
    safety: ReadSafety = field(default_factory=ReadSafety)


def software_version() -> str:
    """Return our package's version (Software Versions of our documents), ``unknown`` outside an install."""
    try:
        return metadata.version("pacs-vlm")
    except metadata.PackageNotFoundError:
        return "unknown"


def evidence_datasets(source: Dataset, evidence: tuple[SeenFrame, ...]) -> list[Dataset]:
    """Return datasets for highdicom's evidence: the first carries the source's patient and study modules.

    A prior study's instance keeps its own Study Instance UID, so highdicom lists it in the Pertinent Other
    Evidence Sequence rather than the Current Requested Procedure Evidence Sequence.
    """
    first = Dataset()
    first.update(source)
    for keyword in _PATIENT_STUDY_TYPE2:
        if keyword not in first or first[keyword].value is None:
            setattr(first, keyword, "")
    if str(first.PatientSex) not in ("M", "F", "O", ""):
        first.PatientSex = ""
    datasets = [first]
    seen: set[str] = set()
    for frame in evidence:
        if frame.sop_instance_uid in seen:
            continue
        seen.add(frame.sop_instance_uid)
        ds = first if len(seen) == 1 and frame.study_uid is None else Dataset()
        ds.StudyInstanceUID = frame.study_uid or source.StudyInstanceUID
        ds.SeriesInstanceUID = frame.series_uid
        ds.SOPClassUID = frame.sop_class_uid
        ds.SOPInstanceUID = frame.sop_instance_uid
        if ds is not first:
            datasets.append(ds)
    return datasets


def _ordered(evidence: tuple[SeenFrame, ...]) -> tuple[SeenFrame, ...]:
    """The current study's frames first: the first instance seen becomes the source's dataset."""
    return tuple(sorted(evidence, key=lambda frame: frame.study_uid is not None))


def device_observer(algorithm: Algorithm) -> hd.sr.ObserverContext:
    """Return the model as a device observer (TID 1004): its Device Observer UID, name and model."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid,
            name=clean_text(f"pacs-vlm {algorithm.model_family}", 64),
            manufacturer_name=MANUFACTURER,
            model_name=clean_text(algorithm.model_id, MAX_TEXT_CHARS) or "unknown",
        ),
    )


def observation_context(algorithm: Algorithm | None, verification: Verification | None) -> hd.sr.ObservationContext:
    """Return the observers (TID 1001): the model as a device (TID 1004) and, once signed, the radiologist.

    Parameters
    ----------
    algorithm : Algorithm or None
        The model that drafted the report; None for a report written by hand (no device observer).
    verification : Verification or None
        Who signed it (a person observer beside the device); None for a draft.

    Returns
    -------
    highdicom.sr.ObservationContext
        The HAS OBS CONTEXT items.
    """
    device = device_observer(algorithm) if algorithm is not None else None
    person = None
    if verification is not None:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=verification.observer_name, organization_name=verification.organization
            ),
        )
    return hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)


def _content(report: ReportForSr, verification: Verification | None) -> hd.sr.ContainerContentItem:
    algorithm = report.algorithm
    safety = report.safety if verification is None else None  # a signed version is the radiologist's text
    identification = (
        []
        if algorithm is None
        else algorithm_items(
            algorithm.model_id,
            algorithm.model_revision,
            [f"prompt version: {algorithm.prompt_version}", f"model family: {algorithm.model_family}"],
        )
    )
    items = [
        *language_items(),
        *observation_context(algorithm, verification),
        *identification,
        *comparison_sections(report.priors, report.comparison, report.prior_note),
        *report_sections(
            report.findings,
            report.impression,
            report.limitations,
            report.evidence,
            finding_extras(report.findings, safety),
        ),
        *safety_sections(safety),
    ]
    return root_container(items)


def _document(
    report: ReportForSr,
    source: Dataset,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    instance_number: int,
    verification: Verification | None,
    predecessor: Dataset | None,
) -> Dataset:
    signed = verification is not None
    by_hand = report.algorithm is None
    return sr_document(
        hd.sr.ComprehensiveSR,
        _content(report, verification),
        report,
        source,
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        series=(SIGNED_SERIES_NUMBER, MANUAL_SIGNED_SERIES_DESCRIPTION if by_hand else SIGNED_SERIES_DESCRIPTION)
        if signed
        else (DRAFT_SERIES_NUMBER, MANUAL_DRAFT_SERIES_DESCRIPTION if by_hand else DRAFT_SERIES_DESCRIPTION),
        instance_number=instance_number,
        verification=verification,
        predecessor=predecessor,
    )


def sr_document(
    sop_class: type[hd.sr.ComprehensiveSR] | type[hd.sr.EnhancedSR],
    content: hd.sr.ContainerContentItem,
    report: ReportForSr,
    source: Dataset,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    series: tuple[int, str],
    instance_number: int,
    verification: Verification | None,
    predecessor: Dataset | None,
) -> Dataset:
    """Wrap a content tree in an SR document of a report version: flags, observers, evidence, fixed times.

    A draft (``verification`` None) is PARTIAL, UNVERIFIED, PRELIMINARY; a signed version COMPLETE, VERIFIED,
    FINAL with its Verifying Observer.  Creation and content times are the version's, so a rebuilt document
    is the same document.

    Parameters
    ----------
    sop_class : type
        ``highdicom.sr.ComprehensiveSR`` (TID 2000) or ``highdicom.sr.EnhancedSR`` (TID 1500).
    content : highdicom.sr.ContainerContentItem
        The root of the content tree.
    report : ReportForSr
        The version (its evidence and creation time).
    source : pydicom.Dataset
        Header of one instance of the study (patient and study modules).
    sop_instance_uid, series_instance_uid : str
        The document's UIDs.
    series : tuple of (int, str)
        Series Number and Series Description.
    instance_number : int
        Instance Number.
    verification : Verification or None
        Who signed (None: a draft).
    predecessor : pydicom.Dataset or None
        The document this one replaces (Predecessor Documents Sequence).

    Returns
    -------
    pydicom.Dataset
        The document, with file meta.
    """
    made_at = (verification.verified_at if verification else report.created_at).astimezone()
    signed = verification is not None
    with warnings.catch_warnings():
        # The patient's name is copied as the modality wrote it; highdicom's advice on its form is not ours to act on.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        document = sop_class(
            evidence=evidence_datasets(source, _ordered(report.evidence)),
            content=content,
            series_instance_uid=series_instance_uid,
            series_number=series[0],
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER,
            software_versions=software_version(),
            series_description=series[1],
            is_complete=signed,
            is_final=signed,
            is_verified=signed,
            institution_name=verification.organization if verification else None,
            verifying_observer_name=verification.observer_name if verification else None,
            verifying_organization=verification.organization if verification else None,
            previous_versions=[predecessor] if predecessor is not None else None,
            coding_schemes=coding_schemes(),
            content_date=DA(made_at.date()),
            content_time=TM(made_at.time().replace(tzinfo=None)),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            specific_character_set=CHARACTER_SET,
        )
    # Deterministic: rebuilding a document gives the same content (highdicom stamps "now" otherwise).
    document.InstanceCreationDate = document.ContentDate
    document.InstanceCreationTime = document.ContentTime
    document.TimezoneOffsetFromUTC = made_at.strftime("%z")
    for equipment in document.get("ContributingEquipmentSequence", []):
        if equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102":  # processing equipment: us
            equipment.ContributionDateTime = DT(made_at)
    if verification is not None:
        document.VerifyingObserverSequence[0].VerificationDateTime = DT(made_at)
    return document


def build_draft_sr(report: ReportForSr, source: Dataset, *, sop_instance_uid: str, series_instance_uid: str) -> Dataset:
    """Build the draft's SR: PARTIAL, UNVERIFIED, the model as the device observer.

    Parameters
    ----------
    report : ReportForSr
        The draft.
    source : pydicom.Dataset
        Header of one instance of the study (patient and study modules are copied from it).
    sop_instance_uid, series_instance_uid : str
        The SR's UIDs (fixed once per draft and stored).

    Returns
    -------
    pydicom.Dataset
        The SR document (a highdicom ``ComprehensiveSR``), ready to save.
    """
    return _document(
        report,
        source,
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        instance_number=1,
        verification=None,
        predecessor=None,
    )


def build_signed_sr(
    report: ReportForSr,
    source: Dataset,
    *,
    verification: Verification,
    predecessor: Dataset,
    sop_instance_uid: str,
    series_instance_uid: str,
    instance_number: int = 2,
) -> Dataset:
    """Build a signed (verified) SR: COMPLETE, VERIFIED, FINAL, referencing its predecessor.

    Parameters
    ----------
    report : ReportForSr
        The radiologist's version (findings as signed; algorithm and evidence of the draft).
    source : pydicom.Dataset
        Header of one instance of the study.
    verification : Verification
        Who signed, for which organization, when.
    predecessor : pydicom.Dataset
        The SR this version replaces (the draft's, or the previous signed version's).
    sop_instance_uid, series_instance_uid : str
        The new SR's UIDs.
    instance_number : int
        The report version (2 for the first signed version).

    Returns
    -------
    pydicom.Dataset
        The SR document, ready to save.
    """
    return _document(
        report,
        source,
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        instance_number=instance_number,
        verification=verification,
        predecessor=predecessor,
    )


def read_sr(dataset: Dataset) -> SrReading:
    """Read an SR written by this module back through highdicom.

    Parameters
    ----------
    dataset : pydicom.Dataset
        A Comprehensive SR document (as read with ``pydicom.dcmread``).

    Returns
    -------
    SrReading
        Flags, findings with their image references, impression, limitations, algorithm, observers,
        predecessors, evidence (the current study's instances; ``other_evidence``: the other studies'
        ``(study UID, SOP Instance UID)``), the comparison and a draft's safety content (confidences, decoding
        path, checks, critical matches).

    Raises
    ------
    ValueError
        If the dataset is not an SR document.
    """
    document = hd.sr.ComprehensiveSR.from_dataset(dataset)
    root = next(iter(document.content))
    content = read_content(root)
    observers = tuple(
        VerifyingObserver(
            str(item.VerifyingObserverName), str(item.VerifyingOrganization), str(item.VerificationDateTime)
        )
        for item in document.get("VerifyingObserverSequence", [])
    )
    predecessors = tuple(
        str(ref.ReferencedSOPInstanceUID)
        for study in document.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    )
    return SrReading(
        sop_instance_uid=str(document.SOPInstanceUID),
        series_instance_uid=str(document.SeriesInstanceUID),
        study_instance_uid=str(document.StudyInstanceUID),
        series_description=str(document.get("SeriesDescription", "")),
        instance_number=int(document.InstanceNumber),
        completion_flag=str(document.CompletionFlag),
        verification_flag=str(document.VerificationFlag),
        preliminary_flag=str(document.get("PreliminaryFlag", "")),
        findings=content.findings,
        impression=content.impression,
        limitations=content.limitations,
        algorithm_name=content.algorithm_name,
        algorithm_version=content.algorithm_version,
        algorithm_parameters=content.algorithm_parameters,
        device_observer_uid=content.device_observer_uid,
        person_observers=content.person_observers,
        verifying_observers=observers,
        predecessors=predecessors,
        evidence=tuple(uid for _study, _series, uid, _class in document.get_evidence(current_procedure_only=True)),
        other_evidence=tuple(
            (str(study), str(uid))
            for study, _series, uid, _class in document.get_evidence()
            if str(study) != str(document.StudyInstanceUID)
        ),
        comparison=read_comparison(root),
        safety=read_safety(root),
    )
