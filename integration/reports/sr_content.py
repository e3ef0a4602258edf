"""The content tree of a report's DICOM SR: TID 2000 (Basic Diagnostic Imaging Report), built and read back.

The tree, under the root CONTAINER (18748-4, LN, "Diagnostic Imaging Report"), TID 2000::

    HAS CONCEPT MOD   CODE Language of Content Item and Descendants = English   (TID 1204)
    HAS OBS CONTEXT   person observer (signed reports: the radiologist)         (TID 1002/1003)
    HAS OBS CONTEXT   device observer (the model, as a device)                  (TID 1002/1004)
    HAS CONCEPT MOD   TEXT Algorithm Name / Algorithm Version / Parameters      (TID 4019)
    CONTAINS          CONTAINER Findings (59776-5, LN)                          (TID 2001)
        CONTAINS          TEXT Finding (121071, DCM)                            (TID 2002), one per finding
            INFERRED FROM     IMAGE Best illustration of finding (121080, DCM): instance (+ frames)
            HAS PROPERTIES    NUM the draft finding's confidence, with meaning and band (sr_safety; drafts only)
        CONTAINS          TEXT Limitations (LIMITATIONS, 99PACSVLM)
    CONTAINS          CONTAINER Impressions (19005-8, LN)
        CONTAINS          TEXT Impression (121073, DCM)
    CONTAINS          CONTAINER Automated draft checks (DRAFT_CHECKS, 99PACSVLM)   (sr_safety; drafts only)

Section headings and elements are the LOINC and DCM codes of CID 7001 and CID 7002 (the DCM section
codes 121070/121072 were replaced by LOINC codes in CID 7001).  DICOM has no concept for "limitations
of this reading", so it is a code of our own private scheme ``99PACSVLM`` (private schemes start with
``99``), declared in the Coding Scheme Identification Sequence; a PACS shows its meaning.  TID 4019 is
attached to the root as HAS CONCEPT MOD, as TID 1501 attaches it, since the whole document comes from
one algorithm (IHE AI Results asks for its name and version).

Model output is untrusted text: findings arrive as :class:`integration.findings.Finding` (clean, capped),
and every other text goes through :func:`integration.findings.clean_text`, capped well below the UT limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import (
    CodedConcept,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    ImageContentItem,
    RelationshipTypeValues,
    TextContentItem,
)

from integration.findings import Finding, clean_text

#: Longest TEXT value we write, in characters (UT allows 2**32 - 2 bytes; a report needs far less).
MAX_TEXT_CHARS = 65_536
#: Our private coding scheme (PS3.3 8.1: private coding scheme designators begin with "99").
PRIVATE_SCHEME = "99PACSVLM"

DIAGNOSTIC_IMAGING_REPORT = CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
FINDINGS = CodedConcept("59776-5", "LN", "Findings")
IMPRESSIONS = CodedConcept("19005-8", "LN", "Impressions")
FINDING = CodedConcept("121071", "DCM", "Finding")
IMPRESSION = CodedConcept("121073", "DCM", "Impression")
LIMITATIONS = CodedConcept("LIMITATIONS", PRIVATE_SCHEME, "Limitations")
BEST_ILLUSTRATION = CodedConcept("121080", "DCM", "Best illustration of finding")
ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = CodedConcept("111002", "DCM", "Algorithm Parameters")
DEVICE_OBSERVER_UID = CodedConcept("121012", "DCM", "Device Observer UID")
PERSON_OBSERVER_NAME = CodedConcept("121008", "DCM", "Person Observer Name")
ENGLISH = CodedConcept("en", "RFC5646", "English")


@dataclass(frozen=True)
class SeenFrame:
    """One frame of one instance inside one model image (an entry of the report's evidence).

    Attributes
    ----------
    image : int
        1-based image number, as in the prompt and in findings.
    sop_class_uid, sop_instance_uid, series_uid : str
        The instance.
    frame : int
        1-based frame number.
    number_of_frames : int
        Frames in the instance: frame numbers are referenced only for multi-frame instances.
    study_uid : str or None
        The instance's study when it is a prior study's (shown to the model for comparison); None for the
        current study's instances.
    rows, columns : int
        The frame's size in pixels (its header's Rows and Columns), 0 when not known: a finding's box is mapped
        onto them (:mod:`integration.reports.sr_regions`).
    """

    image: int
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    frame: int = 1
    number_of_frames: int = 1
    study_uid: str | None = None
    rows: int = 0
    columns: int = 0


@dataclass(frozen=True)
class ImageReference:
    """An SR reference to an instance, with its frames when it is multi-frame (else empty)."""

    sop_class_uid: str
    sop_instance_uid: str
    frames: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReadFinding:
    """A finding as read back from an SR: its text and the images it was inferred from."""

    text: str
    references: tuple[ImageReference, ...] = ()


def references_of(images: Iterable[int], evidence: Sequence[SeenFrame]) -> tuple[ImageReference, ...]:
    """Return the instance references behind some image numbers, one per instance, in evidence order.

    Parameters
    ----------
    images : iterable of int
        Image numbers a finding cites.
    evidence : sequence of SeenFrame
        What the model saw.

    Returns
    -------
    tuple of ImageReference
        One per instance; frame numbers (sorted, unique) only for multi-frame instances.
    """
    cited = set(images)
    frames: dict[str, set[int]] = {}
    classes: dict[str, str] = {}
    multiframe: dict[str, bool] = {}
    for seen in evidence:
        if seen.image in cited:
            frames.setdefault(seen.sop_instance_uid, set()).add(seen.frame)
            classes[seen.sop_instance_uid] = seen.sop_class_uid
            multiframe[seen.sop_instance_uid] = seen.number_of_frames > 1
    return tuple(
        ImageReference(classes[uid], uid, tuple(sorted(numbers)) if multiframe[uid] else ())
        for uid, numbers in frames.items()
    )


def text_item(name: CodedConcept, value: str) -> TextContentItem:
    """Return a TEXT item its parent CONTAINS."""
    return TextContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)


def container(
    name: CodedConcept, items: Sequence[ContentItem], *, template_id: str | None = None
) -> ContainerContentItem:
    """Return a CONTAINER its parent CONTAINS, holding ``items``."""
    section = ContainerContentItem(name=name, template_id=template_id, relationship_type="CONTAINS")
    section.ContentSequence = ContentSequence(items)
    return section


def finding_item(finding: Finding, evidence: Sequence[SeenFrame], extra: Sequence[ContentItem] = ()) -> TextContentItem:
    """Return one TEXT Finding with an INFERRED FROM IMAGE item per instance it cites.

    Parameters
    ----------
    finding : Finding
        The finding (its text is clean).
    evidence : sequence of SeenFrame
        What the model saw, to turn image numbers into instances and frames.
    extra : sequence of highdicom.sr.ContentItem
        Further children after the images (a draft finding's confidence: :mod:`integration.reports.sr_safety`).

    Returns
    -------
    highdicom.sr.TextContentItem
        The content item.
    """
    item = text_item(FINDING, finding.text)
    references = references_of(finding.images, evidence)
    if references or extra:
        item.ContentSequence = ContentSequence(
            [
                ImageContentItem(
                    name=BEST_ILLUSTRATION,
                    referenced_sop_class_uid=ref.sop_class_uid,
                    referenced_sop_instance_uid=ref.sop_instance_uid,
                    referenced_frame_numbers=list(ref.frames) or None,
                    relationship_type=RelationshipTypeValues.INFERRED_FROM,
                )
                for ref in references
            ]
            + list(extra)
        )
    return item


def report_sections(
    findings: Sequence[Finding],
    impression: str,
    limitations: str,
    evidence: Sequence[SeenFrame],
    extras: Sequence[Sequence[ContentItem]] = (),
) -> list[ContentItem]:
    """Return the Findings and Impressions sections (TID 2001), leaving out empty ones.

    Parameters
    ----------
    findings : sequence of Finding
        The findings.
    impression, limitations : str
        Free text; '' when none.
    evidence : sequence of SeenFrame
        What the model saw.
    extras : sequence of sequences of highdicom.sr.ContentItem
        Per finding, further children of its item (see :func:`finding_item`); empty: none.

    Returns
    -------
    list of highdicom.sr.ContentItem
        CONTAINER items for the root's content.
    """
    sections: list[ContentItem] = []
    more = list(extras) or [()] * len(findings)
    items: list[ContentItem] = [finding_item(f, evidence, extra) for f, extra in zip(findings, more, strict=True)]
    if limitations_text := clean_text(limitations, MAX_TEXT_CHARS):
        items.append(text_item(LIMITATIONS, limitations_text))
    if items:
        sections.append(container(FINDINGS, items, template_id="2001"))
    if impression_text := clean_text(impression, MAX_TEXT_CHARS):
        sections.append(container(IMPRESSIONS, [text_item(IMPRESSION, impression_text)], template_id="2001"))
    return sections


def algorithm_items(name: str, version: str, parameters: Sequence[str]) -> list[ContentItem]:
    """Return TID 4019 Algorithm Identification for the root (HAS CONCEPT MOD).

    Parameters
    ----------
    name, version : str
        The model id and revision.
    parameters : sequence of str
        Further parameters (prompt version, model family).

    Returns
    -------
    list of highdicom.sr.ContentItem
        The TEXT items.
    """
    return [*algorithm_identification(name, version, parameters)]


def algorithm_identification(name: str, version: str, parameters: Sequence[str]) -> hd.sr.AlgorithmIdentification:
    """Return TID 4019 as a highdicom template (cleaned texts), for :func:`algorithm_items` and TID 1501 groups."""
    return hd.sr.AlgorithmIdentification(
        name=clean_text(name, MAX_TEXT_CHARS) or "unknown",
        version=clean_text(version, MAX_TEXT_CHARS) or "unknown",
        parameters=[text for p in parameters if (text := clean_text(p, MAX_TEXT_CHARS))] or None,
    )


def language_items() -> list[ContentItem]:
    """Return TID 1204: the content is English (the prompts ask for English)."""
    return [*hd.sr.LanguageOfContentItemAndDescendants(ENGLISH)]


def coding_schemes() -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """Return the Coding Scheme Identification items for the private scheme the content uses."""
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="pacs-vlm report concepts", responsible_organization="pacs-vlm"
        )
    ]


def root_container(items: Sequence[ContentItem]) -> ContainerContentItem:
    """Return the TID 2000 root container holding ``items``.

    Parameters
    ----------
    items : sequence of highdicom.sr.ContentItem
        The root's children, in order.

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The root.
    """
    root = ContainerContentItem(name=DIAGNOSTIC_IMAGING_REPORT, template_id="2000")
    root.ContentSequence = ContentSequence(items)
    return root


@dataclass(frozen=True)
class ReadContent:
    """What the content tree says, read back."""

    findings: tuple[ReadFinding, ...]
    impression: str
    limitations: str
    algorithm_name: str
    algorithm_version: str
    algorithm_parameters: tuple[str, ...]
    device_observer_uid: str
    person_observers: tuple[str, ...]


def is_concept(item: ContentItem, concept: CodedConcept) -> bool:
    """Whether a content item (as read back) has ``concept`` as its name (code value and scheme)."""
    name = item.name
    return bool(name.value == concept.value and name.scheme_designator == concept.scheme_designator)


def children(item: ContentItem) -> list[ContentItem]:
    """Return a content item's children (its Content Sequence; [] when it has none)."""
    return list(item.ContentSequence) if "ContentSequence" in item else []


def _image_reference(item: ContentItem) -> ImageReference:
    ref = item.ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber")
    numbers = () if frames is None else tuple(int(f) for f in (frames if isinstance(frames, Sequence) else [frames]))
    return ImageReference(str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID), numbers)


def read_content(root: ContentItem) -> ReadContent:
    """Read a TID 2000 tree as written by :func:`root_container` and its helpers.

    Parameters
    ----------
    root : highdicom.sr.ContentItem
        The root CONTAINER (read through highdicom).

    Returns
    -------
    ReadContent
        Findings with their image references, impression, limitations, algorithm and observers.
    """
    findings: list[ReadFinding] = []
    impression: list[str] = []
    limitations: list[str] = []
    algorithm: dict[str, list[str]] = {"name": [], "version": [], "parameters": []}
    device_uid = ""
    persons: list[str] = []
    for item in children(root):
        if is_concept(item, ALGORITHM_NAME):
            algorithm["name"].append(str(item.value))
        elif is_concept(item, ALGORITHM_VERSION):
            algorithm["version"].append(str(item.value))
        elif is_concept(item, ALGORITHM_PARAMETERS):
            algorithm["parameters"].append(str(item.value))
        elif is_concept(item, DEVICE_OBSERVER_UID):
            device_uid = str(item.value)
        elif is_concept(item, PERSON_OBSERVER_NAME):
            persons.append(str(item.value))
        for child in children(item) if isinstance(item, ContainerContentItem) else []:
            if is_concept(child, FINDING):
                references = tuple(
                    _image_reference(ref) for ref in children(child) if isinstance(ref, ImageContentItem)
                )
                findings.append(ReadFinding(str(child.value), references))
            elif is_concept(child, LIMITATIONS):
                limitations.append(str(child.value))
            elif is_concept(child, IMPRESSION):
                impression.append(str(child.value))
    return ReadContent(
        findings=tuple(findings),
        impression="\n".join(impression),
        limitations="\n".join(limitations),
        algorithm_name=algorithm["name"][0] if algorithm["name"] else "",
        algorithm_version=algorithm["version"][0] if algorithm["version"] else "",
        algorithm_parameters=tuple(algorithm["parameters"]),
        device_observer_uid=device_uid,
        person_observers=tuple(persons),
    )
