"""A report version as a TID 1500 Measurement Report: the form OHIF and other viewers display.

Most viewers (OHIF v3 among them) show only TID 1500 Measurement Reports, not TID 2000 text reports, so each
draft and each signed version gets one beside its TID 2000 SR (:mod:`integration.reports.sr`), with the same
content in measurement form.  An Enhanced SR document (no by-reference relationships, no 3D coordinates)::

    CONTAINER Imaging Measurement Report (126000, DCM)                         TID 1500
      HAS CONCEPT MOD   Language = English                                      TID 1204
      HAS OBS CONTEXT   person (signed versions: the radiologist), device (the model)  TID 1001
      HAS CONCEPT MOD   Procedure reported = Imaging procedure (363679005, SCT)
      CONTAINS          CONTAINER Image Library (111028, DCM)                   TID 1600
        CONTAINS          CONTAINER Image Library Group (126200, DCM)
          CONTAINS          IMAGE Source: each instance the model saw (with its frames)
      CONTAINS          CONTAINER Imaging Measurements (126010, DCM)
        CONTAINS          CONTAINER Measurement Group (125007, DCM), one per finding   TID 1501
          CONTAINS          Tracking Identifier "Finding <n>", Tracking Unique Identifier   TID 4108
          CONTAINS          CODE Finding: a SNOMED CT concept, when the text names one (:data:`FINDING_CODES`)
          HAS CONCEPT MOD   Algorithm Name / Version / Parameters               TID 4019
          CONTAINS          TEXT Finding (121071, DCM): the finding's text, always
          CONTAINS          CODE Urgency: the model's urgency category (drafts, when given)
          CONTAINS          TEXT Certainty of Finding (111012, DCM): the model's certainty words (drafts)
          CONTAINS          IMAGE Source of Measurement (121112, DCM): each instance the finding cites
      CONTAINS          CONTAINER Qualitative Evaluations (C0034375, UMLS): impression and limitations (TEXT)

A finding is coded only when its text names a concept of :data:`FINDING_CODES` and holds no negation ("No
pleural effusion." is never coded as a pleural effusion); the text is always there.  The urgency codes are of
our private scheme (the model's category for communication, not a clinical priority).

A finding whose model pointed at a region (its ``box``, on the one image it cites) is a TID 1410 planar ROI group
instead: the same items, and its region as a closed POLYLINE rectangle (SCOORD, 5 points) on that frame, mapped from
the model's square image onto the frame's pixels (:mod:`integration.reports.sr_regions`).  Findings without a box
(most: few families point) stay image-level groups, without SCOORD.

A region group is also labelled the way OHIF v3 labels an annotation, with Cornerstone's free-text code
(``CORNERSTONEFREETEXT``, scheme ``CORNERSTONEJS``, meaning: the text cut to 64 characters), declared in the Coding
Scheme Identification Sequence.  OHIF 3.13.2's SR viewport labels a TID 1410 group (one with a top-level SCOORD)
only from its numeric measurements or its Finding Site (SCT 363698007), and Cornerstone's own exports put the
free-text label in both the Finding and the Finding Site rows; so the label is the group's Finding Site, and its
Finding too unless the text names a coded concept.  It is a label, not an anatomic site: a viewer that does not
know the scheme still has the TEXT Finding with the whole text.
A draft is PARTIAL and UNVERIFIED, a signed version COMPLETE and VERIFIED with its Verifying Observer, exactly
as the TID 2000 SR of the same version (:func:`integration.reports.sr.sr_document`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import highdicom as hd
import numpy as np
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    ImageContentItem,
    TextContentItem,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from integration.findings import Finding
from integration.reports.sr import ReportForSr, Verification, observation_context, sr_document
from integration.reports.sr_content import (
    FINDING,
    IMPRESSION,
    LIMITATIONS,
    MAX_TEXT_CHARS,
    PRIVATE_SCHEME,
    ImageReference,
    SeenFrame,
    algorithm_identification,
    children,
    is_concept,
    language_items,
    references_of,
)
from integration.reports.sr_regions import FrameRegion, finding_region
from integration.store.viewer_tables import MEASUREMENT_DRAFT_SERIES_NUMBER, MEASUREMENT_SIGNED_SERIES_NUMBER
from integration.uids import derived_uid
from integration.untrusted import clean_text

DRAFT_SERIES_DESCRIPTION = "AI draft measurements, not verified"
SIGNED_SERIES_DESCRIPTION = "Signed report measurements (AI-assisted)"
#: The series of a report written by hand (no algorithm, no AI wording).
MANUAL_DRAFT_SERIES_DESCRIPTION = "Draft report measurements, not verified"
MANUAL_SIGNED_SERIES_DESCRIPTION = "Signed report measurements"
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
CERTAINTY = CodedConcept("111012", "DCM", "Certainty of Finding")
URGENCY = CodedConcept("URGENCY", PRIVATE_SCHEME, "Model urgency category")
URGENCY_VALUES = {
    "critical": CodedConcept("CRITICAL", PRIVATE_SCHEME, "Critical"),
    "urgent": CodedConcept("URGENT", PRIVATE_SCHEME, "Urgent"),
    "routine": CodedConcept("ROUTINE", PRIVATE_SCHEME, "Routine"),
    "none": CodedConcept("NONE", PRIVATE_SCHEME, "No urgency"),
}
#: Cornerstone's free-text coding scheme: how OHIF labels an annotation (see the module docstring).
FREE_TEXT_SCHEME = "CORNERSTONEJS"
FREE_TEXT_VALUE = "CORNERSTONEFREETEXT"
#: Common findings and their concepts (SNOMED CT, and DCM where PS3.16 has them), as worded in reports.
#: Order matters: the longer phrase first ("pleural effusion" before "effusion").
FINDING_CODES: tuple[tuple[str, Code], ...] = (
    ("pneumothorax", codes.SCT.Pneumothorax),
    ("pleural effusion", codes.SCT.PleuralEffusion),
    ("pericardial effusion", codes.SCT.PericardialEffusion),
    ("cardiomegaly", codes.SCT.Cardiomegaly),
    ("pulmonary edema", codes.SCT.PulmonaryEdema),
    ("pulmonary oedema", codes.SCT.PulmonaryEdema),
    ("pulmonary embolism", codes.SCT.PulmonaryEmbolism),
    ("intracranial hemorrhage", codes.SCT.IntracranialHemorrhage),
    ("intracranial haemorrhage", codes.SCT.IntracranialHemorrhage),
    ("ground glass opacit", codes.DCM.GroundGlassOpacity),
    ("ground-glass opacit", codes.DCM.GroundGlassOpacity),
    ("lymphadenopathy", codes.SCT.Lymphadenopathy),
    ("aneurysm", codes.SCT.Aneurysm),
    ("nodule", codes.SCT.Nodule),
    ("mass", codes.SCT.Mass),
    ("stenosis", codes.SCT.Stenosis),
    ("thrombus", codes.SCT.Thrombus),
    ("abscess", codes.SCT.Abscess),
    ("cyst", codes.SCT.Cyst),
    ("effusion", codes.SCT.Effusion),
)
#: Words that make a finding's text a negative or doubtful statement: such a finding is not coded.
_NEGATION = re.compile(
    r"\b(no|not|without|negative|absent|absence|resolved|free of|rule out|ruled out|exclude[sd]?|unlikely)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class MeasurementFinding:
    """A finding as read back from a TID 1500 document."""

    tracking_id: str
    tracking_uid: str
    text: str
    finding_type: CodedConcept | None
    urgency: str
    certainty: str
    references: tuple[ImageReference, ...]
    region: tuple[tuple[float, float], ...] = ()
    label: str = ""


@dataclass(frozen=True)
class MeasurementReading:
    """A TID 1500 document read back through highdicom."""

    sop_instance_uid: str
    series_number: int
    completion_flag: str
    verification_flag: str
    findings: tuple[MeasurementFinding, ...]
    library: tuple[ImageReference, ...]
    impression: str
    limitations: str
    device_observer_uid: str
    person_observers: tuple[str, ...]
    verifying_observers: tuple[str, ...]
    algorithm_name: str
    predecessors: tuple[str, ...]


def finding_code(text: str) -> Code | None:
    """Return the concept a finding's text names (see :data:`FINDING_CODES`), None when none or negated.

    Parameters
    ----------
    text : str
        The finding's text.

    Returns
    -------
    pydicom.sr.coding.Code or None
        The concept of the earliest phrase the text names; None when it names none, or has a negation.
    """
    if _NEGATION.search(text):
        return None
    lowered = text.lower()
    found = [(lowered.find(phrase), index) for index, (phrase, _) in enumerate(FINDING_CODES) if phrase in lowered]
    return FINDING_CODES[min(found)[1]][1] if found else None


def _image(name: Code | CodedConcept, ref: ImageReference) -> ImageContentItem:
    return ImageContentItem(
        name=name,
        referenced_sop_class_uid=ref.sop_class_uid,
        referenced_sop_instance_uid=ref.sop_instance_uid,
        referenced_frame_numbers=list(ref.frames) or None,
        relationship_type="CONTAINS",
    )


def _container(name: Code | CodedConcept, items: Sequence[ContentItem], template_id: str | None = None) -> ContentItem:
    item = ContainerContentItem(name=name, relationship_type="CONTAINS", template_id=template_id)
    item.ContentSequence = ContentSequence(items)
    return item


def _image_library(evidence: tuple[SeenFrame, ...]) -> ContentItem:
    """TID 1600: every instance the model saw (current study and priors), its frames for multi-frame ones."""
    seen = references_of({frame.image for frame in evidence}, evidence)
    group = _container(codes.DCM.ImageLibraryGroup, [_image(codes.SCT.Source, ref) for ref in seen])
    return _container(codes.DCM.ImageLibrary, [group], template_id="1600")


def free_text_label(text: str) -> CodedConcept:
    """The Cornerstone free-text code OHIF labels an annotation with: the text on one line, cut to 64 characters."""
    meaning = clean_text(text, one_line=True)
    return CodedConcept(FREE_TEXT_VALUE, FREE_TEXT_SCHEME, meaning if len(meaning) <= 64 else meaning[:63] + "\u2026")


def _region_group(
    finding: Finding,
    region: FrameRegion,
    tracking: hd.sr.TrackingIdentifier,
    algorithm: hd.sr.AlgorithmIdentification | None,
) -> ContainerContentItem:
    """TID 1410: a finding with a box, its rectangle on the frame it was seen on."""
    seen = region.seen
    image = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(region.polyline, dtype=float),
        source_image=hd.sr.SourceImageForRegion(
            seen.sop_class_uid, seen.sop_instance_uid, [seen.frame] if seen.number_of_frames > 1 else None
        ),
    )
    label = free_text_label(finding.text)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=image,
        finding_type=finding_code(finding.text) or label,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=label)],
    )
    return cast(ContainerContentItem, group[0])


def _group(finding: Finding, number: int, report: ReportForSr, document_uid: str, draft: bool) -> ContentItem:
    """TID 1501: one finding as an image-level measurement group; TID 1410 when it has a region."""
    algorithm = report.algorithm
    extra: list[ContentItem] = [TextContentItem(name=FINDING, value=finding.text, relationship_type="CONTAINS")]
    if draft and finding.urgency in URGENCY_VALUES:
        extra.append(CodeContentItem(name=URGENCY, value=URGENCY_VALUES[finding.urgency], relationship_type="CONTAINS"))
    if draft and finding.certainty:
        words = clean_text(", ".join(finding.certainty), MAX_TEXT_CHARS)
        extra.append(TextContentItem(name=CERTAINTY, value=words, relationship_type="CONTAINS"))
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid(document_uid, "tid1500-finding", str(number)), identifier=f"Finding {number}"
    )
    identification = (
        None  # a report written by hand names no algorithm
        if algorithm is None
        else algorithm_identification(
            algorithm.model_id,
            algorithm.model_revision,
            [f"prompt version: {algorithm.prompt_version}", f"model family: {algorithm.model_family}"],
        )
    )
    region = finding_region(finding, report.evidence)
    if region is not None:
        roi = _region_group(finding, region, tracking, identification)
        roi.ContentSequence = ContentSequence([*roi.ContentSequence, *extra])
        return roi
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding_code(finding.text),
        algorithm_id=identification,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(ref.sop_class_uid, ref.sop_instance_uid, list(ref.frames) or None)
            for ref in references_of(finding.images, report.evidence)
        ],
    )
    item = cast(ContainerContentItem, group[0])
    sources = [child for child in item.ContentSequence if child.ValueType == "IMAGE"]
    others = [child for child in item.ContentSequence if child.ValueType != "IMAGE"]
    item.ContentSequence = ContentSequence([*others, *extra, *sources])
    return item


def _content(report: ReportForSr, document_uid: str, verification: Verification | None) -> ContainerContentItem:
    draft = verification is None
    items: list[ContentItem] = [
        *language_items(),
        *observation_context(report.algorithm, verification),
        CodeContentItem(
            name=codes.DCM.ProcedureReported, value=codes.SCT.ImagingProcedure, relationship_type="HAS CONCEPT MOD"
        ),
    ]
    if report.evidence:
        items.append(_image_library(report.evidence))
    groups = [_group(f, n, report, document_uid, draft) for n, f in enumerate(report.findings, start=1)]
    if groups:
        items.append(_container(codes.DCM.ImagingMeasurements, groups))
    texts = [
        TextContentItem(name=name, value=text, relationship_type="CONTAINS")
        for name, value in ((IMPRESSION, report.impression), (LIMITATIONS, report.limitations))
        if (text := clean_text(value, MAX_TEXT_CHARS))
    ]
    if texts:
        items.append(_container(QUALITATIVE_EVALUATIONS, texts))
    root = ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = ContentSequence(items)
    return root


def build_measurement_report(
    report: ReportForSr,
    source: Dataset,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    verification: Verification | None = None,
    predecessor: Dataset | None = None,
    instance_number: int = 1,
) -> Dataset:
    """Build the TID 1500 Measurement Report of a draft (no ``verification``) or of a signed version.

    Parameters
    ----------
    report : ReportForSr
        The version, as for its TID 2000 SR (findings, impression, limitations, evidence, algorithm).
    source : pydicom.Dataset
        Header of one instance of the study (patient and study modules are copied from it).
    sop_instance_uid, series_instance_uid : str
        The document's UIDs (allocated once in ``report_objects``).
    verification : Verification, optional
        Who signed: the document is then COMPLETE, VERIFIED, FINAL, in the signed series.
    predecessor : pydicom.Dataset, optional
        The measurement report this one replaces (a signed version's: its previous version's).
    instance_number : int
        1 for a draft, the report version for a signed one.

    Returns
    -------
    pydicom.Dataset
        The Enhanced SR document, ready to save.
    """
    signed = verification is not None
    by_hand = report.algorithm is None
    document = sr_document(
        hd.sr.EnhancedSR,
        _content(report, sop_instance_uid, verification),
        report,
        source,
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        series=(
            MEASUREMENT_SIGNED_SERIES_NUMBER,
            MANUAL_SIGNED_SERIES_DESCRIPTION if by_hand else SIGNED_SERIES_DESCRIPTION,
        )
        if signed
        else (
            MEASUREMENT_DRAFT_SERIES_NUMBER,
            MANUAL_DRAFT_SERIES_DESCRIPTION if by_hand else DRAFT_SERIES_DESCRIPTION,
        ),
        instance_number=instance_number,
        verification=verification,
        predecessor=predecessor,
    )
    if any(finding_region(finding, report.evidence) is not None for finding in report.findings):
        document.CodingSchemeIdentificationSequence.append(
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=FREE_TEXT_SCHEME, name="Cornerstone free text", responsible_organization="cornerstonejs"
            )
        )
    return document


def _reference(item: Dataset) -> ImageReference:
    ref = item.ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber")
    numbers = () if frames is None else tuple(int(f) for f in (frames if isinstance(frames, Sequence) else [frames]))
    return ImageReference(str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID), numbers)


def _read_group(group: Any) -> MeasurementFinding:
    item = group[0]
    texts = {(c.ConceptNameCodeSequence[0].CodeValue, c.ValueType): c for c in item.ContentSequence}
    urgency = texts.get((URGENCY.value, "CODE"))
    certainty = texts.get((CERTAINTY.value, "TEXT"))
    finding = texts.get((FINDING.value, "TEXT"))
    coded = group.finding_type
    labels = [site.value.meaning for site in group.finding_sites if site.value.scheme_designator == FREE_TEXT_SCHEME]
    points: tuple[tuple[float, float], ...] = ()
    references: tuple[ImageReference, ...]
    if isinstance(group, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations):
        roi = cast(hd.sr.ImageRegion, group.roi)
        points = tuple((float(x), float(y)) for x, y in roi.value)
        references = (_reference(roi.ContentSequence[0]),)
    else:
        references = tuple(_reference(image) for image in group.source_images)
    return MeasurementFinding(
        tracking_id=str(group.tracking_identifier or ""),
        tracking_uid=str(group.tracking_uid or ""),
        text=str(finding.TextValue) if finding is not None else "",
        finding_type=None if coded is None or coded.scheme_designator == FREE_TEXT_SCHEME else coded,
        urgency=str(urgency.ConceptCodeSequence[0].CodeMeaning) if urgency is not None else "",
        certainty=str(certainty.TextValue) if certainty is not None else "",
        references=references,
        region=points,
        label=str(labels[0]) if labels else "",
    )


def read_measurement_report(dataset: Dataset) -> MeasurementReading:
    """Read a TID 1500 document written by :func:`build_measurement_report` back through highdicom.

    Parameters
    ----------
    dataset : pydicom.Dataset
        The document (as read with ``pydicom.dcmread``).

    Returns
    -------
    MeasurementReading
        Flags, findings (text, code, urgency, certainty, source images), the image library, impression,
        limitations, observers, algorithm and predecessors.

    Raises
    ------
    ValueError
        The dataset is not an SR document, or its content is not a TID 1500 tree.
    """
    document = hd.sr.EnhancedSR.from_dataset(dataset)
    report = hd.sr.MeasurementReport.from_sequence(document.content)
    root = cast(ContainerContentItem, report[0])
    groups = sorted(
        [*report.get_image_measurement_groups(), *report.get_planar_roi_measurement_groups()],
        key=lambda group: int(str(group.tracking_identifier or "Finding 0").rsplit(" ", 1)[-1] or 0),
    )
    library = [
        _reference(image)
        for container in children(root)
        if is_concept(container, codes.DCM.ImageLibrary)
        for group in children(container)
        for image in children(group)
    ]
    notes = {
        str(c.ConceptNameCodeSequence[0].CodeValue): str(c.TextValue)
        for container in children(root)
        if is_concept(container, QUALITATIVE_EVALUATIONS)
        for c in children(container)
    }
    device = report.get_observer_contexts(observer_type=codes.DCM.Device)
    persons = report.get_observer_contexts(observer_type=codes.DCM.Person)
    algorithm = groups[0][0].ContentSequence if groups else []
    names = [str(c.TextValue) for c in algorithm if c.ConceptNameCodeSequence[0].CodeValue == "111001"]
    return MeasurementReading(
        sop_instance_uid=str(document.SOPInstanceUID),
        series_number=int(document.SeriesNumber),
        completion_flag=str(document.CompletionFlag),
        verification_flag=str(document.VerificationFlag),
        findings=tuple(_read_group(group) for group in groups),
        library=tuple(library),
        impression=notes.get(IMPRESSION.value, ""),
        limitations=notes.get(LIMITATIONS.value, ""),
        device_observer_uid=str(getattr(device[0].observer_identifying_attributes, "uid", "")) if device else "",
        person_observers=tuple(str(p.observer_identifying_attributes.name) for p in persons),
        verifying_observers=tuple(
            str(item.VerifyingObserverName) for item in document.get("VerifyingObserverSequence", [])
        ),
        algorithm_name=names[0] if names else "",
        predecessors=tuple(
            str(ref.ReferencedSOPInstanceUID)
            for study in document.get("PredecessorDocumentsSequence", [])
            for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        ),
    )
