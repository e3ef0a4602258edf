"""The comparison part of a report's SR (TID 2000): the prior studies compared with, and what the comparison says.

A radiologist's report names the study it was compared with ("COMPARISON: CT chest of 2024-03-01") and
says what changed.  TID 2000 has two CID 7001 headings for this, written before the Findings section::

    CONTAINS          CONTAINER Prior Procedure Descriptions (55114-3, LN)           one per prior study
        HAS OBS CONTEXT   UIDREF Procedure Study Instance UID (121018, DCM)          (TID 1005)
        HAS OBS CONTEXT   TEXT Accession Number (121022, DCM)                        (TID 1005, when known)
        CONTAINS          TEXT Procedure Description (121065, DCM)                   (CID 7002)
        CONTAINS          DATE Study Date (111060, DCM)                              (when known)
        CONTAINS          CODE Modality (121139, DCM) = CID 29 modality              (when known to CID 29)
    CONTAINS          CONTAINER Previous Findings (18834-2, LN)
        CONTAINS          TEXT Previous Finding (121069, DCM)                        the comparison statement
        CONTAINS          TEXT Previous Finding (121069, DCM)                        "No prior study available."

Why these concepts: CID 7001 (Diagnostic Imaging Report Heading) has no heading called "Comparison".  Its
LOINC heading 18834-2 is, in LOINC's own words, "Radiology Comparison study (narrative)": the section a
radiology report titles COMPARISON; DICOM gives it the meaning "Previous Findings" (it replaced DCM 121068),
and the CID 7002 element that belongs under it is "Previous Finding" (121069).  So the model's comparison
statement, and the line saying that no prior was available (or why it could not be fetched), are Previous
Finding TEXT items under that heading.  "Prior Procedure Descriptions" (55114-3, which replaced DCM 121066)
describes each prior study itself: its description (CID 7002 "Procedure Description"), date and modality,
with the TID 1005 Procedure Context (the prior's Study Instance UID and accession number) as the section's
observation context, since everything in the section is about that procedure.

The prior instances that the model saw are not referenced here but in the document's Pertinent Other
Evidence Sequence (:mod:`integration.reports.sr` hands them to highdicom with their own Study Instance UID).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentItem,
    DateContentItem,
    RelationshipTypeValues,
    TextContentItem,
    UIDRefContentItem,
)
from pydicom.sr.codedict import Collection

from integration.findings import PriorReference, clean_text
from integration.reports.sr_content import children, container, is_concept, text_item

PRIOR_PROCEDURE_DESCRIPTIONS = CodedConcept("55114-3", "LN", "Prior Procedure Descriptions")
PREVIOUS_FINDINGS = CodedConcept("18834-2", "LN", "Previous Findings")
PREVIOUS_FINDING = CodedConcept("121069", "DCM", "Previous Finding")
PROCEDURE_DESCRIPTION = CodedConcept("121065", "DCM", "Procedure Description")
PROCEDURE_STUDY_INSTANCE_UID = CodedConcept("121018", "DCM", "Procedure Study Instance UID")
ACCESSION_NUMBER = CodedConcept("121022", "DCM", "Accession Number")
STUDY_DATE = CodedConcept("111060", "DCM", "Study Date")
MODALITY = CodedConcept("121139", "DCM", "Modality")
#: What the report says when the model was given no prior study and nothing recorded why.
NO_PRIOR = "No prior study available."
#: CID 29 (Acquisition Modality): its codes by their value (``CT``), from pydicom's code dictionary.
_MODALITIES = {code.value: code for code in (getattr(Collection("CID29"), name) for name in Collection("CID29").dir())}
#: Longest text written in this part (well below the UT limit; the document's own limits are smaller).
_MAX_TEXT = 4000


@dataclass(frozen=True)
class ReadPrior:
    """A prior study as read back from an SR's Prior Procedure Descriptions."""

    study_uid: str
    description: str
    study_date: str
    modality: str
    accession: str


@dataclass(frozen=True)
class ReadComparison:
    """The comparison part of an SR, read back: the priors named and the Previous Finding texts."""

    priors: tuple[ReadPrior, ...] = ()
    statements: tuple[str, ...] = ()


def modality_code(modality: str | None) -> CodedConcept | None:
    """Return the CID 29 code of a DICOM modality (``CT``), or None when it is not an acquisition modality.

    Parameters
    ----------
    modality : str or None
        A Modality value, or several joined by backslashes (the first acquisition modality is used).

    Returns
    -------
    highdicom.sr.CodedConcept or None
        ``(CT, DCM, "Computed Tomography")``, say.
    """
    for value in (modality or "").split("\\"):
        value = value.strip().upper()
        if (code := _MODALITIES.get(value)) is not None:
            return CodedConcept(code.value, code.scheme_designator, code.meaning)
    return None


def procedure_description(prior: PriorReference) -> str:
    """Return the line that describes a prior study: ``CT, 2024-03-01: CT CHEST W CONTRAST``.

    Parameters
    ----------
    prior : PriorReference
        The prior study (its texts are clean one-line text).

    Returns
    -------
    str
        Modality, date and description, those known; ``Prior study`` when none is.
    """
    head = ", ".join(part for part in (prior.modality, _iso(prior.study_date)) if part)
    if prior.description:
        return f"{head}: {prior.description}" if head else prior.description
    return head or "Prior study"


def _iso(study_date: str | None) -> str:
    return f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:8]}" if study_date else ""


def _prior_section(prior: PriorReference) -> ContainerContentItem:
    context = RelationshipTypeValues.HAS_OBS_CONTEXT
    contains = RelationshipTypeValues.CONTAINS
    items: list[ContentItem] = [
        UIDRefContentItem(name=PROCEDURE_STUDY_INSTANCE_UID, value=prior.study_uid, relationship_type=context)
    ]
    if prior.accession:
        items.append(TextContentItem(name=ACCESSION_NUMBER, value=prior.accession, relationship_type=context))
    items.append(text_item(PROCEDURE_DESCRIPTION, procedure_description(prior)))
    if prior.study_date:
        day = date(int(prior.study_date[:4]), int(prior.study_date[4:6]), int(prior.study_date[6:8]))
        items.append(DateContentItem(name=STUDY_DATE, value=day, relationship_type=contains))
    if (code := modality_code(prior.modality)) is not None:
        items.append(CodeContentItem(name=MODALITY, value=code, relationship_type=contains))
    return container(PRIOR_PROCEDURE_DESCRIPTIONS, items, template_id="2001")


def comparison_statements(priors: Sequence[PriorReference], comparison: str, prior_note: str) -> list[str]:
    """Return the Previous Finding texts: the comparison, and the note when no prior was given.

    Parameters
    ----------
    priors : sequence of PriorReference
        The prior studies the model was given.
    comparison : str
        The comparison statement ('' when none).
    prior_note : str
        Why no prior was given ('' when nothing was recorded: then :data:`NO_PRIOR` is said).

    Returns
    -------
    list of str
        Clean, non-empty texts.
    """
    statements = [text] if (text := clean_text(comparison, _MAX_TEXT)) else []
    if not priors:
        note = clean_text(prior_note, _MAX_TEXT) or NO_PRIOR
        if note not in statements:
            statements.append(note)
    return statements


def comparison_sections(
    priors: Sequence[PriorReference], comparison: str, prior_note: str
) -> list[ContainerContentItem]:
    """Return the Prior Procedure Descriptions (one per prior) and the Previous Findings sections.

    Parameters
    ----------
    priors : sequence of PriorReference
        The prior studies the model was given, most recent first.
    comparison : str
        The comparison statement ('' when none).
    prior_note : str
        Why no prior was given; without priors and without a note the SR says :data:`NO_PRIOR`.

    Returns
    -------
    list of highdicom.sr.ContainerContentItem
        CONTAINER items for the root's content, before the Findings.
    """
    sections = [_prior_section(prior) for prior in priors]
    statements = comparison_statements(priors, comparison, prior_note)
    if statements:
        items = [text_item(PREVIOUS_FINDING, text) for text in statements]
        sections.append(container(PREVIOUS_FINDINGS, items, template_id="2001"))
    return sections


def read_comparison(root: ContentItem) -> ReadComparison:
    """Read the comparison part of a TID 2000 tree written by :func:`comparison_sections`.

    Parameters
    ----------
    root : highdicom.sr.ContentItem
        The root CONTAINER (read through highdicom).

    Returns
    -------
    ReadComparison
        The priors named (UID, description, date ``YYYYMMDD``, modality code value, accession) and the
        Previous Finding texts.
    """
    priors: list[ReadPrior] = []
    statements: list[str] = []
    for section in children(root):
        if is_concept(section, PRIOR_PROCEDURE_DESCRIPTIONS):
            values = {"uid": "", "description": "", "date": "", "modality": "", "accession": ""}
            for child in children(section):
                if is_concept(child, PROCEDURE_STUDY_INSTANCE_UID):
                    values["uid"] = str(child.value)
                elif is_concept(child, PROCEDURE_DESCRIPTION):
                    values["description"] = str(child.value)
                elif is_concept(child, STUDY_DATE):
                    values["date"] = str(child.Date)
                elif is_concept(child, MODALITY):
                    values["modality"] = str(child.value.value)
                elif is_concept(child, ACCESSION_NUMBER):
                    values["accession"] = str(child.value)
            priors.append(ReadPrior(*values.values()))
        elif is_concept(section, PREVIOUS_FINDINGS):
            statements += [str(child.value) for child in children(section) if is_concept(child, PREVIOUS_FINDING)]
    return ReadComparison(tuple(priors), tuple(statements))
