"""Which earlier studies are a study's priors, and which of their series are worth retrieving.

A radiologist compares with the patient's previous study of the same region, so a prior must be the
*same patient*: the same Patient ID and, when either side names one, the same Issuer of Patient ID.
Patients are never matched by name (two people share names; one person's IDs differ between issuers),
and since the archives are only ever queried by Patient ID, a study of a namesake is never even a
candidate.  Among that patient's studies a prior is strictly earlier, within the rule's look-back, of an
allowed modality and of the same body region; the most recent ``count`` of them are taken, and a copy we
already hold wins over the same study at an archive (it is not fetched again).

Of a prior only what the routing rule would select is retrieved (the largest accepted image series, or
every accepted one for ``across_series`` rules), plus its report objects (SR); derived and secondary
series (localizers, dose reports, screen captures, scanned documents, key-object selections) are left at
the archive unless the rule asks for them, and an Encapsulated PDF report is only noted, never fetched
(nothing reads it: no OCR).

Everything here is pure (no I/O but reading one header in :meth:`CurrentStudy.from_file`), so the rules
are unit-tested without a PACS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TypeVar

import pydicom

from integration.imaging.instances import NON_IMAGE_SOP_CLASSES, derived_kind
from integration.imaging.routing import PriorPolicy, RoutingRule, body_region
from integration.priors.matches import SeriesMatch, StudyMatch
from integration.store.priors import LocalStudy

#: Study descriptions whose lower-case word tokens overlap at least this much (Jaccard) name the same region.
DESCRIPTION_SIMILARITY = 0.3
#: Tokens that say nothing about the region examined: modality codes, contrast phrases, follow-up, laterality, fillers.
_NEUTRAL_TOKENS = frozenset(
    {"ct", "cr", "dx", "mr", "mri", "xr", "us", "pet", "nm", "mg", "rx", "xray", "ray", "x",
     "with", "without", "wo", "w", "and", "of", "the", "contrast", "iv", "routine", "study", "exam", "scan",
     "follow", "up", "followup", "fu", "left", "right", "lt", "rt", "bilateral"}
)  # fmt: skip
_TOKEN = re.compile(r"[a-z0-9]+")
#: SOP classes of report objects retrieved with a prior: the SR documents (but dose reports and KOS).
SR_ROOT = "1.2.840.10008.5.1.4.1.1.88."
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
#: Radiation dose SR classes (X-Ray, Radiopharmaceutical, Patient, Enhanced X-Ray): derived, not reports.
DOSE_SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.67",
        "1.2.840.10008.5.1.4.1.1.88.68",
        "1.2.840.10008.5.1.4.1.1.88.73",
        "1.2.840.10008.5.1.4.1.1.88.76",
    }
)
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
_READ_TAGS = (
    "PatientID",
    "IssuerOfPatientID",
    "StudyInstanceUID",
    "StudyDate",
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
)


#: A study found for the patient: at an archive, or held by us.
Candidate = StudyMatch | LocalStudy

_C = TypeVar("_C", bound=Candidate)


@dataclass(frozen=True)
class CurrentStudy:
    """The study whose priors are sought, as its first instance's header says.

    Attributes
    ----------
    study_id : int or None
        Its row (``studies.id``).
    study_uid : str
        Study Instance UID.
    patient_id : str or None
        Patient ID; without one no prior is ever chosen.
    issuer : str or None
        Issuer of Patient ID.
    study_date : str or None
        Study Date (YYYYMMDD).
    modality : str or None
        Modality of the first instance.
    body_part : str or None
        Body Part Examined, upper case.
    region : str or None
        Normalised body region (``CHEST``, ``HEAD`` ...).
    description : str or None
        Study Description.
    site_id : int or None
        The study's site: retrieved priors belong to it.
    calling_ae : str or None
        Who sent the study (the routing rules may depend on it).
    """

    study_id: int | None
    study_uid: str
    patient_id: str | None
    issuer: str | None
    study_date: str | None
    modality: str | None
    body_part: str | None
    region: str | None
    description: str | None
    site_id: int | None = None
    calling_ae: str | None = None

    @classmethod
    def from_file(
        cls, path: Path, *, study_id: int | None = None, site_id: int | None = None, calling_ae: str | None = None
    ) -> CurrentStudy:
        """Read the study's attributes from one stored instance (header only, never the pixel data).

        Raises
        ------
        OSError, pydicom.errors.InvalidDicomError
            The file cannot be read.
        """
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_READ_TAGS))
        body_part = _text(ds.get("BodyPartExamined"))
        description = _text(ds.get("StudyDescription"))
        series_description = _text(ds.get("SeriesDescription"))
        region = body_region(body_part, series_description, description)
        return cls(
            study_id=study_id,
            study_uid=str(ds.get("StudyInstanceUID", "")).strip(),
            patient_id=_text(ds.get("PatientID")),
            issuer=_text(ds.get("IssuerOfPatientID")),
            study_date=_text(ds.get("StudyDate")),
            modality=(_text(ds.get("Modality")) or "").upper() or None,
            body_part=body_part.upper() if body_part else None,
            region=region,
            description=description,
            site_id=site_id,
            calling_ae=calling_ae,
        )


def is_local(candidate: Candidate) -> bool:
    """Whether a candidate is a study we hold."""
    return isinstance(candidate, LocalStudy)


def same_patient(current: CurrentStudy, candidate: Candidate) -> bool:
    """Whether a candidate is the current study's patient: same Patient ID, and same issuer when either has one."""
    if not current.patient_id or (candidate.patient_id or "").strip() != current.patient_id.strip():
        return False
    ours, theirs = (current.issuer or "").strip(), (candidate.issuer or "").strip()
    return ours == theirs


def description_similarity(first: str | None, second: str | None) -> float:
    """Jaccard similarity of two descriptions' lower-case word tokens (modality and contrast words left out).

    Used only when a body region cannot be read from either side: "CT THORAX" and "THORAX PA" already map to
    ``CHEST``, but free text such as "Follow-up nodule left upper lobe" does not.  Jaccard over words is
    crude but predictable, needs no vocabulary, and 0.3 asks for one shared word of three or four distinct
    ones after dropping words that name no region (a shared "CT" or "with contrast" must not make a head
    study look like an abdomen study).  No shared word, or nothing left on either side, gives 0.
    """
    tokens = [set(_TOKEN.findall((text or "").lower())) - _NEUTRAL_TOKENS for text in (first, second)]
    union = tokens[0] | tokens[1]
    return len(tokens[0] & tokens[1]) / len(union) if union and tokens[0] and tokens[1] else 0.0


def candidate_region(candidate: Candidate) -> str | None:
    """The body region of a candidate: its body parts where it has them (local studies), else its description."""
    for part in _body_parts(candidate):
        region = body_region(part, None)
        if region:
            return region
    return body_region(None, candidate.description)


def same_region(current: CurrentStudy, candidate: Candidate) -> bool:
    """Whether a candidate shows the same region: equal normalised regions, or similar descriptions when one is unknown.

    Where neither a region nor a description can be compared the candidate is refused: a prior of the wrong
    region misleads the draft more than no prior.
    """
    theirs = candidate_region(candidate)
    if current.region and theirs:
        return current.region == theirs
    return description_similarity(current.description, candidate.description) >= DESCRIPTION_SIMILARITY


def choose_priors(
    current: CurrentStudy, candidates: Sequence[_C], policy: PriorPolicy, now: datetime | date
) -> list[_C]:
    """Choose a study's priors among the patient's studies (local and at archives).

    Parameters
    ----------
    current : CurrentStudy
        The study being read.
    candidates : sequence
        Studies found by Patient ID (archive matches and local studies; the same UID may come from several).
    policy : PriorPolicy
        The routing rule's prior policy: count, look-back, modalities, region matching.
    now : datetime or date
        Today, for a current study without a Study Date.

    Returns
    -------
    list
        At most ``policy.count`` candidates, most recent first; for a study found both locally and at an
        archive the local one.
    """
    if policy.count == 0 or not current.patient_id:
        return []
    today = now.date() if isinstance(now, datetime) else now
    current_date = _date(current.study_date) or today
    allowed = {m.upper() for m in policy.modalities} or ({current.modality} if current.modality else set())
    chosen: dict[str, _C] = {}
    for candidate in candidates:
        when = _date(candidate.study_date)
        if (
            candidate.study_uid == current.study_uid
            or when is None
            or not when < current_date
            or (current_date - when).days > policy.lookback_days
            or not same_patient(current, candidate)
            or not allowed.intersection(m.upper() for m in candidate.modalities)
            or (policy.match_region and not same_region(current, candidate))
        ):
            continue
        held = chosen.get(candidate.study_uid)
        if held is None or (is_local(candidate) and not is_local(held)):
            chosen[candidate.study_uid] = candidate
    ordered = sorted(chosen.values(), key=lambda c: (c.study_date or "", is_local(c)), reverse=True)
    return ordered[: policy.count]


@dataclass(frozen=True)
class SeriesChoice:
    """The series of a prior to retrieve, and what is known of its reports.

    Attributes
    ----------
    images : tuple of str
        Series Instance UIDs of the image series the routing rule selects.
    reports : tuple of str
        Series Instance UIDs of SR report series (retrieved for their text).
    pdf : bool
        Whether the prior holds an Encapsulated PDF (a report exists; not retrieved).
    rule : str or None
        Name of the rule that selected the images.
    """

    images: tuple[str, ...]
    reports: tuple[str, ...]
    pdf: bool
    rule: str | None = None

    @property
    def series_uids(self) -> tuple[str, ...]:
        """Everything to retrieve: the images, then the reports."""
        return self.images + self.reports


def series_kind(series: SeriesMatch) -> str:
    """Classify a series by its first instance: ``"report"``, ``"pdf"``, ``"derived"``, ``"other"`` or ``"image"``.

    ``report``: an SR document (not a dose report or key-object selection, which are derived);
    ``pdf``: an Encapsulated PDF; ``other``: no image for the model at all (presentation states, RT
    objects, waveforms ...); ``derived``: what :func:`integration.imaging.instances.derived_kind` calls derived
    or secondary (localizers, dose and protocol screens, screen captures, scanned documents, reformats), judged
    as the files we hold are.
    """
    classes = series.sop_class_uids
    modality = (series.modality or "").upper()
    if ENCAPSULATED_PDF in classes:
        return "pdf"
    if set(classes) & DOSE_SR_CLASSES or KEY_OBJECT_SELECTION in classes:
        return "derived"
    if any(uid.startswith(SR_ROOT) for uid in classes) or (modality == "SR" and not classes):
        return "report"
    if modality in {"SR", "PR"} or any(_in_family(uid, root) for uid in classes for root, _ in NON_IMAGE_SOP_CLASSES):
        return "other"
    kind = derived_kind(
        classes[0] if classes else "", series.image_types, modality=modality, description=series.description
    )
    return "derived" if kind else "image"


def choose_prior_series(
    series: Sequence[SeriesMatch], rule: RoutingRule, calling_ae: str | None = None
) -> SeriesChoice:
    """Choose what to retrieve of a prior: the series ``rule`` would select, and its SR report series.

    Parameters
    ----------
    series : sequence of SeriesMatch
        The prior's series (a series-level query, with each series' first SOP class and Image Type).
    rule : RoutingRule
        The rule of the current study; when it accepts no image series of the prior (a chest CT prior of a
        radiograph rule), the caller passes the rule that would route the prior itself.
    calling_ae : str, optional
        The calling AE the rule is asked about (the current study's sender).

    Returns
    -------
    SeriesChoice
        The largest accepted image series (every accepted one when ``rule.across_series``), derived series
        only when ``rule.include_derived``; every SR series; whether a PDF report exists.
    """
    kinds = {s.series_uid: series_kind(s) for s in series}
    wanted = {"image", "derived"} if rule.include_derived else {"image"}
    accepted = [
        s
        for s in series
        if kinds[s.series_uid] in wanted and rule.accepts_attributes(s.modality, _parts(s), calling_ae)
    ]
    if not rule.across_series and accepted:
        accepted = [max(accepted, key=lambda s: (s.instances or 0, -(s.series_number or 0)))]
    accepted.sort(key=SeriesMatch.order)
    return SeriesChoice(
        images=tuple(s.series_uid for s in accepted),
        reports=tuple(s.series_uid for s in series if kinds[s.series_uid] == "report"),
        pdf="pdf" in kinds.values(),
        rule=rule.name if accepted else None,
    )


def prior_series_rule(
    rules: Sequence[RoutingRule], current_rule: RoutingRule, series: Sequence[SeriesMatch], calling_ae: str | None
) -> RoutingRule:
    """Return the rule that selects a prior's images.

    The current study's rule when it accepts one of them, else the first rule (in configured order) that
    accepts one: the rule that would route the prior as a study of its own.
    """
    images = [s for s in series if series_kind(s) == "image"]
    for rule in (current_rule, *rules):
        if any(rule.accepts_attributes(s.modality, _parts(s), calling_ae) for s in images):
            return rule
    return current_rule


def _parts(series: SeriesMatch) -> tuple[str, ...]:
    """Body Part Examined and the region of a series (from its body part or description)."""
    region = body_region(series.body_part, series.description)
    return tuple(p for p in ((series.body_part or "").upper(), region or "") if p)


def _in_family(uid: str, root: str) -> bool:
    return uid == root or uid.startswith(f"{root}.")


def _body_parts(candidate: Candidate) -> tuple[str, ...]:
    return candidate.body_parts if isinstance(candidate, LocalStudy) else ()


def _date(value: str | None) -> date | None:
    """A DICOM DA value (YYYYMMDD, or the old YYYY.MM.DD) as a date, None when absent or malformed."""
    digits = (value or "").strip().replace(".", "")
    try:
        return datetime.strptime(digits, "%Y%m%d").date() if len(digits) == 8 else None
    except ValueError:
        return None


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
