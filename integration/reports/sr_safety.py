"""The draft SR's safety content: each finding's confidence, the decoding path, consistency checks, critical matches.

Only a **draft** SR carries them (a signed version is the radiologist's text: its findings have no model score
and its checks were resolved in review).  Added to the TID 2000 tree of :mod:`integration.reports.sr_content`::

    TEXT Finding (121071, DCM)
        INFERRED FROM     IMAGE ...
        HAS PROPERTIES    NUM Model confidence in finding wording (CONFIDENCE, 99PACSVLM), UCUM {ratio}, 0..1
            HAS CONCEPT MOD   TEXT Meaning of confidence score (CONF_MEANING, 99PACSVLM): what it is and is not
            HAS PROPERTIES    CODE Confidence band (CONF_BAND, 99PACSVLM) = Low / Medium / High (SCT)
    CONTAINER Automated draft checks (DRAFT_CHECKS, 99PACSVLM)                (root CONTAINS; only when non-empty)
        CONTAINS          TEXT Decoding path (DECODING, 99PACSVLM): grammar, response_format, free, free-fallback
        CONTAINS          TEXT Consistency check (CONSISTENCY, 99PACSVLM), one per check: "Finding 2, laterality: ..."
        CONTAINS          TEXT Critical result category match (CRITICAL_MATCH, 99PACSVLM), one per match

The score says how sure the model was of its words (the geometric mean of its tokens' probabilities, or as
``confidence_method`` names), not how likely the finding is to be right; the meaning item says so in words,
since a PACS shows an SR's items without our documentation.  DICOM has no concept for any of these, so they
are codes of the private scheme ``99PACSVLM`` (declared in the Coding Scheme Identification Sequence); the
bands use SNOMED CT's qualifier values Low, Medium and High.  The Comprehensive SR IOD allows TEXT HAS
PROPERTIES NUM, NUM HAS CONCEPT MOD TEXT and NUM HAS PROPERTIES CODE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
)

from integration.draft_checks import Check, CriticalMatch
from integration.findings import Document, Finding
from integration.reports.confidence_bands import band_of
from integration.reports.sr_content import (
    FINDING,
    FINDINGS,
    MAX_TEXT_CHARS,
    PRIVATE_SCHEME,
    children,
    container,
    is_concept,
    text_item,
)
from integration.untrusted import clean_text

CONFIDENCE = CodedConcept("CONFIDENCE", PRIVATE_SCHEME, "Model confidence in finding wording")
CONFIDENCE_MEANING = CodedConcept("CONF_MEANING", PRIVATE_SCHEME, "Meaning of confidence score")
CONFIDENCE_BAND = CodedConcept("CONF_BAND", PRIVATE_SCHEME, "Confidence band")
#: The bands as SNOMED CT qualifier values.
BAND_CODES = {
    "low": CodedConcept("62482003", "SCT", "Low"),
    "medium": CodedConcept("255508009", "SCT", "Medium"),
    "high": CodedConcept("75540009", "SCT", "High"),
}
#: UCUM's dimensionless ratio: the score is 0..1.
RATIO = CodedConcept("{ratio}", "UCUM", "ratio")
DRAFT_CHECKS = CodedConcept("DRAFT_CHECKS", PRIVATE_SCHEME, "Automated draft checks")
DECODING = CodedConcept("DECODING", PRIVATE_SCHEME, "Decoding path")
CONSISTENCY_CHECK = CodedConcept("CONSISTENCY", PRIVATE_SCHEME, "Consistency check")
CRITICAL_MATCH = CodedConcept("CRITICAL_MATCH", PRIVATE_SCHEME, "Critical result category match")
#: Where a critical match was found, in words.
_SOURCES = {"urgency": "the model's urgency field", "text": "the text", "both": "the urgency field and the text"}


@dataclass(frozen=True)
class DraftSafety:
    """What a draft's SR says beyond its text: how it was decoded, how sure the model was, what was flagged.

    Attributes
    ----------
    confidence_method : str
        How the findings' scores were computed ('' when not recorded).
    decoding : str
        The decoding path (``grammar``, ``response_format``, ``free``, ``free-fallback``; '' when not recorded).
    checks : tuple of Check
        Contradictions between the draft and the study's header.
    critical : tuple of CriticalMatch
        Findings that matched a critical result category.
    low, high : float
        The band thresholds (the settings' ``confidence_low`` and ``confidence_high``).
    """

    confidence_method: str = ""
    decoding: str = ""
    checks: tuple[Check, ...] = ()
    critical: tuple[CriticalMatch, ...] = ()
    low: float = 0.5
    high: float = 0.8

    @classmethod
    def of(cls, document: Document, low: float, high: float) -> DraftSafety:
        """Return a draft document's safety values, with the band thresholds."""
        return cls(document.confidence_method, document.decoding, document.checks, document.critical, low, high)

    @property
    def meaning(self) -> str:
        """The words that say what a score is, and is not."""
        method = self.confidence_method or "method not recorded"
        return (
            f"Model's confidence in its own wording ({method}); not a probability that the finding is right. "
            f"Bands: low below {self.low:g}, high at or above {self.high:g}, medium between."
        )


def confidence_items(finding: Finding, safety: DraftSafety) -> list[ContentItem]:
    """Return a finding's confidence (HAS PROPERTIES NUM, with its meaning and band), or [] when it has none.

    Parameters
    ----------
    finding : Finding
        A draft finding.
    safety : DraftSafety
        The draft's method and band thresholds.

    Returns
    -------
    list of highdicom.sr.ContentItem
        Children for the finding's TEXT item.
    """
    if finding.confidence is None:
        return []
    score = NumContentItem(
        name=CONFIDENCE,
        value=round(finding.confidence, 4),
        unit=RATIO,
        relationship_type=RelationshipTypeValues.HAS_PROPERTIES,
    )
    band = band_of(finding.confidence, safety.low, safety.high)
    score.ContentSequence = ContentSequence(
        [
            TextContentItem(
                name=CONFIDENCE_MEANING,
                value=clean_text(safety.meaning, MAX_TEXT_CHARS),
                relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
            ),
            CodeContentItem(
                name=CONFIDENCE_BAND, value=BAND_CODES[band], relationship_type=RelationshipTypeValues.HAS_PROPERTIES
            ),
        ]
    )
    return [score]


def _where(finding: int) -> str:
    return f"Finding {finding}" if finding else "Draft as a whole"


def check_text(check: Check) -> str:
    """One consistency check as a line: ``Finding 2, laterality: <message>``."""
    return clean_text(f"{_where(check.finding)}, {check.kind}: {check.message}", MAX_TEXT_CHARS)


def critical_text(match: CriticalMatch) -> str:
    """One critical match as a line: ``Finding 1: Pneumothorax (pneumothorax), from the text: "..."``."""
    phrase = f': "{match.phrase}"' if match.phrase else ""
    line = f"{_where(match.finding)}: {match.label} ({match.code}), from {_SOURCES[match.source]}{phrase}"
    return clean_text(line, MAX_TEXT_CHARS)


def safety_sections(safety: DraftSafety | None) -> list[ContentItem]:
    """Return the Automated draft checks section for the root (CONTAINS), or [] when there is nothing to say."""
    if safety is None:
        return []
    items: list[ContentItem] = []
    if decoding := clean_text(safety.decoding, MAX_TEXT_CHARS):
        items.append(text_item(DECODING, decoding))
    items += [text_item(CONSISTENCY_CHECK, check_text(check)) for check in safety.checks]
    items += [text_item(CRITICAL_MATCH, critical_text(match)) for match in safety.critical]
    return [container(DRAFT_CHECKS, items)] if items else []


def finding_extras(findings: Sequence[Finding], safety: DraftSafety | None) -> list[list[ContentItem]]:
    """Per finding, the items its TEXT item gets beside its images: its confidence (none without ``safety``)."""
    return [confidence_items(finding, safety) if safety else [] for finding in findings]


@dataclass(frozen=True)
class ReadConfidence:
    """A finding's confidence as read back from an SR."""

    score: float
    band: str
    meaning: str


@dataclass(frozen=True)
class ReadSafety:
    """The safety content of an SR, read back.

    Attributes
    ----------
    confidences : tuple of ReadConfidence or None
        Per finding (in order), its confidence, or None.
    decoding : str
        The decoding path ('' when none was written).
    checks, critical : tuple of str
        The consistency checks' and critical matches' lines.
    """

    confidences: tuple[ReadConfidence | None, ...] = ()
    decoding: str = ""
    checks: tuple[str, ...] = ()
    critical: tuple[str, ...] = ()


def _confidence(finding: ContentItem) -> ReadConfidence | None:
    for item in children(finding):
        if isinstance(item, NumContentItem) and is_concept(item, CONFIDENCE):
            meaning, band = "", ""
            for part in children(item):
                if is_concept(part, CONFIDENCE_MEANING):
                    meaning = str(part.value)
                elif is_concept(part, CONFIDENCE_BAND):
                    code = part.value
                    band = next((name for name, c in BAND_CODES.items() if c.value == code.value), "")
            return ReadConfidence(float(item.value), band, meaning)
    return None


def read_safety(root: ContentItem) -> ReadSafety:
    """Read the safety content of a TID 2000 tree as written with :func:`confidence_items` and :func:`safety_sections`.

    Parameters
    ----------
    root : highdicom.sr.ContentItem
        The root CONTAINER (read through highdicom).

    Returns
    -------
    ReadSafety
        Per finding its confidence, the decoding path, checks and critical matches.
    """
    confidences: list[ReadConfidence | None] = []
    texts: dict[str, list[str]] = {"decoding": [], "checks": [], "critical": []}
    for section in children(root):
        if not isinstance(section, ContainerContentItem):
            continue
        if is_concept(section, FINDINGS):
            confidences += [_confidence(item) for item in children(section) if is_concept(item, FINDING)]
        elif is_concept(section, DRAFT_CHECKS):
            for item in children(section):
                for key, concept in (
                    ("decoding", DECODING),
                    ("checks", CONSISTENCY_CHECK),
                    ("critical", CRITICAL_MATCH),
                ):
                    if is_concept(item, concept):
                        texts[key].append(str(item.value))
    return ReadSafety(
        confidences=tuple(confidences),
        decoding="\n".join(texts["decoding"]),
        checks=tuple(texts["checks"]),
        critical=tuple(texts["critical"]),
    )
