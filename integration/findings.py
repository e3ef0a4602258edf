"""The findings document: one type for what a draft or a signed version says, and the rules it keeps.

A report's ``findings`` column holds ``{"findings": [{"text", "images"}], "impression", "limitations",
"structured", "problems", "comparison", "priors": [{"study_uid", ...}], "prior_note"}``, written by the
worker from model output (untrusted) and by signing from a radiologist's edits.  Every reader in
``integration`` goes through this module, so there is one rule for what a finding is, how many a report
may have, how long its texts may be, which images it may cite and how untrusted text is made safe:

* :meth:`Document.read` reads stored JSON leniently (old drafts, odd model output, corrupt rows): what does
  not fit is left out or cut, never raised, so a reviewer always sees what can be shown.
* :func:`edited_findings` and :func:`edited_text` read a person's edits strictly and raise
  :class:`InvalidFindings` naming the problem: a signature must say exactly what was meant.
* :func:`clean_text` is the one cleaner of untrusted text in ``integration`` (SR, FHIR, HL7, the review
  page and the working copy use it).

A finding may carry a ``box``: the region on its one cited image that the model pointed at, as fractions of that
image as the model saw it (see :func:`valid_box`).  A person's edit keeps it only where the finding's text and
images are unchanged (:func:`kept_boxes`): the region was the model's answer for the model's words, and an edited
finding may say something else, so it loses its region rather than keep one it may not describe.

The value objects validate themselves: a :class:`Finding`, :class:`Evidence` or :class:`Document` that
exists keeps the limits and holds only text that :func:`clean_text` leaves as it is.

The comparison with prior studies travels in the same document: ``comparison`` is the model's (or the
radiologist's) comparison statement, ``priors`` names the prior studies the model was given (a
:class:`PriorReference` each) and ``prior_note`` says why there is none ("No prior study available.").
:meth:`Document.as_text` renders it all as plain text with a ``COMPARISON:`` line.

It sits at the top of ``integration``, not in ``reports``, because the store's review working copy reads
it too and the store may not import ``reports``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from integration.draft_checks import CHECK_KINDS as CHECK_KINDS
from integration.draft_checks import CRITICAL_SOURCES as CRITICAL_SOURCES
from integration.draft_checks import Check as Check
from integration.draft_checks import CriticalMatch as CriticalMatch
from integration.uids import is_valid_uid
from integration.untrusted import InvalidFindings as InvalidFindings
from integration.untrusted import clean_text as clean_text
from integration.untrusted import is_clean as _is_clean
from integration.untrusted import is_line

#: Most findings a document may hold: what signing accepted (the review API stopped at 200, drafts at 50).
MAX_FINDINGS = 500
#: Longest finding text, in characters: the model contract's cap and the review API's limit.
MAX_FINDING_CHARS = 2000
#: Longest impression, limitations, comparison or problem text: the model contract's cap and the review API's limit.
MAX_SECTION_CHARS = 4000
#: Most prior studies a document names (the routing rules allow at most 5 per study).
MAX_PRIORS = 16
#: Longest note on why no prior was given.
MAX_PRIOR_NOTE_CHARS = 500
#: Longest texts of a prior reference, in characters: the DICOM value lengths of Modalities in Study (CS, as one
#: line), Study Description (LO), Accession Number (SH) and a short source name.
PRIOR_TEXT_LIMITS = {"modality": 64, "description": 64, "accession": 16, "report_source": 16}
#: The plain-text line that carries the comparison, first in the report text.
COMPARISON_HEADING = "COMPARISON:"
_DATE = re.compile(r"\d{8}")
#: A finding's laterality, as the draft schema names it (``models.draft_schema.LATERALITIES``).
LATERALITIES = ("left", "right", "bilateral", "midline", "none")
#: A finding's urgency category, most urgent first (``models.draft_schema.URGENCIES``).
URGENCIES = ("critical", "urgent", "routine", "none")
#: Longest one-line texts of a finding's schema fields and a document's decoding path or confidence method.
SAFETY_TEXT_LIMITS = {
    "region": 64,
    "certainty": 32,
    "message": 300,
    "code": 48,
    "label": 96,
    "phrase": 160,
    "name": 200,
}
#: Most certainty words a finding keeps.
MAX_CERTAINTY_WORDS = 8


#: A finding's region: ``(x0, y0, x1, y1)``, fractions 0..1 of its image as the model saw it.
Box = tuple[float, float, float, float]


def valid_box(value: object) -> Box | None:
    """Return a region as four floats when it is one, else None (never raises).

    A box is four numbers (not bools) in 0..1, ``x0 < x1`` and ``y0 < y1``: fractions of the image the model saw
    (padded to square and resized), x from the left, y from the top.
    """
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    if not all(type(n) in (int, float) and math.isfinite(n) and 0 <= n <= 1 for n in value):
        return None
    x0, y0, x1, y1 = (float(n) for n in value)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _is_number(value: object) -> bool:
    """Whether a JSON value is a 1-based image or frame number (an int, not a bool)."""
    return type(value) is int and value > 0


@dataclass(frozen=True)
class Evidence:
    """One frame of one instance that the model saw, as one of its numbered images.

    Attributes
    ----------
    image : int
        1-based image number, as numbered in the prompt and cited by findings.
    sop_class_uid, sop_instance_uid, series_uid : str
        The instance (valid DICOM UIDs).
    frame : int
        1-based frame number.
    study_uid : str or None
        The instance's study, where recorded (a prior study's images name their study).
    prior : bool
        Whether the image is of a prior study (shown to the model for comparison).

    Raises
    ------
    InvalidFindings
        From the constructor: an invalid UID, a number that is not a positive int, or a prior image
        without its study.
    """

    image: int
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    frame: int = 1
    study_uid: str | None = None
    prior: bool = False

    def __post_init__(self) -> None:
        uids = (self.sop_class_uid, self.sop_instance_uid, self.series_uid)
        if not (all(is_valid_uid(uid) for uid in uids) and _is_number(self.image) and _is_number(self.frame)):
            raise InvalidFindings("evidence needs valid SOP Class, SOP Instance and Series UIDs, image and frame")
        if not (self.study_uid is None or is_valid_uid(self.study_uid)) or not isinstance(self.prior, bool):
            raise InvalidFindings("evidence's study_uid is a valid DICOM UID (or None) and prior a bool")
        if self.prior and self.study_uid is None:
            raise InvalidFindings("evidence of a prior study's image needs the prior's study_uid")

    @classmethod
    def read(cls, entry: object) -> Evidence | None:
        """Return a stored evidence entry as Evidence, or None when it breaks the rule (never raises)."""
        if not isinstance(entry, Mapping):
            return None
        try:
            uids = entry["sop_class_uid"], entry["sop_instance_uid"], entry["series_uid"]
            study_uid, prior = entry.get("study_uid"), entry.get("prior") is True
            return cls(entry["image"], *uids, frame=entry.get("frame") or 1, study_uid=study_uid, prior=prior)
        except (KeyError, InvalidFindings):
            return None


def evidence_of(entries: object) -> tuple[Evidence, ...]:
    """Return the valid entries of a report's stored evidence (a list of mappings), in order."""
    read = (Evidence.read(entry) for entry in (entries if isinstance(entries, list) else ()))
    return tuple(evidence for evidence in read if evidence is not None)


def images_of(evidence: Iterable[Evidence]) -> frozenset[int]:
    """Return the image numbers of some evidence: the images a finding may cite."""
    return frozenset(entry.image for entry in evidence)


@dataclass(frozen=True)
class Finding:
    """One finding and the images it rests on.

    Attributes
    ----------
    text : str
        The finding: clean (see :func:`clean_text`), not empty, at most :data:`MAX_FINDING_CHARS`.
    images : tuple of int
        The image numbers it cites (1-based, as numbered in the prompt), each once.
    laterality : str or None
        One of :data:`LATERALITIES` as the model gave it (the draft schema), None when not given.
    region : str or None
        The body region the model named (one line, at most 64 characters), None when not given.
    certainty : tuple of str
        The certainty words the model used ("possible", "likely"), one line each, at most
        :data:`MAX_CERTAINTY_WORDS`.
    urgency : str or None
        One of :data:`URGENCIES` as the model gave it, None when not given.
    confidence : float or None
        A draft finding's score in 0..1 from the token log-probabilities of its text (the document's
        ``confidence_method`` names how); None when none was computed (a signed version's findings,
        a server without log-probabilities).  It says how sure the model was of its words, not how likely
        the finding is to be right.
    box : tuple of 4 float or None
        The region the model pointed at on the finding's one cited image (see :func:`valid_box`); None when
        none was given.  Only a finding that cites exactly one image has one.

    Raises
    ------
    InvalidFindings
        From the constructor, when a field breaks these rules.
    """

    text: str
    images: tuple[int, ...] = ()
    laterality: str | None = None
    region: str | None = None
    certainty: tuple[str, ...] = ()
    urgency: str | None = None
    confidence: float | None = None
    box: Box | None = None

    def __post_init__(self) -> None:
        if not _is_clean(self.text, MAX_FINDING_CHARS, required=True):
            raise InvalidFindings(f"a finding needs clean text of 1 to {MAX_FINDING_CHARS} characters")
        images = self.images
        if not (isinstance(images, tuple) and all(map(_is_number, images)) and len(set(images)) == len(images)):
            raise InvalidFindings("a finding cites a tuple of distinct image numbers (1, 2, ...)")
        if self.laterality is not None and self.laterality not in LATERALITIES:
            raise InvalidFindings(f"a finding's laterality is one of {', '.join(LATERALITIES)} (or None)")
        if self.urgency is not None and self.urgency not in URGENCIES:
            raise InvalidFindings(f"a finding's urgency is one of {', '.join(URGENCIES)} (or None)")
        if self.region is not None and not is_line(self.region, SAFETY_TEXT_LIMITS["region"]):
            raise InvalidFindings("a finding's region is one line of clean text, 1 to 64 characters (or None)")
        certainty = self.certainty
        if not (
            isinstance(certainty, tuple)
            and len(certainty) <= MAX_CERTAINTY_WORDS
            and all(is_line(word, SAFETY_TEXT_LIMITS["certainty"]) for word in certainty)
        ):
            raise InvalidFindings(f"a finding's certainty is a tuple of at most {MAX_CERTAINTY_WORDS} short words")
        if self.confidence is not None and not _is_score(self.confidence):
            raise InvalidFindings("a finding's confidence is a number from 0 to 1 (or None)")
        if self.box is not None and (valid_box(self.box) != self.box or len(self.images) != 1):
            raise InvalidFindings("a finding's box is 4 floats 0..1 with x0 < x1, y0 < y1, on its one image (or None)")

    @classmethod
    def read(cls, entry: object, images_seen: Collection[int] = ()) -> Finding | None:
        """Read a stored finding leniently (never raises).

        Parameters
        ----------
        entry : object
            ``{"text": str, "images": [int, ...]}`` as stored.
        images_seen : collection of int
            The images of the report's evidence: citations of others are dropped.  Empty: all kept.

        Returns
        -------
        Finding or None
            The finding with its text cleaned and cut, and its valid citations; None when it has no text.  A box
            that is not valid, or on a finding that does not cite exactly one image, is left out.
        """
        if not isinstance(entry, Mapping) or not isinstance(entry.get("text"), str):
            return None
        text = clean_text(entry["text"], MAX_FINDING_CHARS)
        raw = entry.get("images")
        cited = (i for i in (raw if isinstance(raw, list | tuple) else ()) if _is_number(i))
        images = tuple(dict.fromkeys(i for i in cited if not images_seen or i in images_seen))
        if not text:
            return None
        laterality, urgency, confidence = entry.get("laterality"), entry.get("urgency"), entry.get("confidence")
        words = entry.get("certainty")
        certainty = (_line(w, SAFETY_TEXT_LIMITS["certainty"]) for w in (words if isinstance(words, list) else ()))
        return cls(
            text,
            images,
            laterality=laterality if laterality in LATERALITIES else None,
            region=_line(entry.get("region"), SAFETY_TEXT_LIMITS["region"]),
            certainty=tuple(dict.fromkeys(w for w in certainty if w))[:MAX_CERTAINTY_WORDS],
            urgency=urgency if urgency in URGENCIES else None,
            confidence=float(confidence) if confidence is not None and _is_score(confidence) else None,
            box=valid_box(entry.get("box")) if len(images) == 1 else None,
        )

    def as_json(self) -> dict[str, Any]:
        """Return the finding as stored: ``{"text": ..., "images": [...]}`` and each other field that is set."""
        entry: dict[str, Any] = {"text": self.text, "images": list(self.images)}
        for name in ("laterality", "region", "urgency", "confidence"):
            if (value := getattr(self, name)) is not None:
                entry[name] = value
        if self.certainty:
            entry["certainty"] = list(self.certainty)
        if self.box is not None:
            entry["box"] = list(self.box)
        return entry

    @property
    def bare(self) -> Finding:
        """The finding with its text, images and region only (what a signed version keeps)."""
        return Finding(self.text, self.images, box=self.box)


@dataclass(frozen=True)
class PriorReference:
    """A prior study the model was given for comparison, as named in the findings document.

    Attributes
    ----------
    study_uid : str
        The prior's Study Instance UID (a valid DICOM UID).
    study_date : str or None
        Its study date, ``YYYYMMDD``.
    modality, description, accession : str or None
        Its modalities (``CT``, or ``CT SR`` for several), study description and accession number: one line of clean
        text each, within :data:`PRIOR_TEXT_LIMITS`.
    report_source : str or None
        Where the prior's report text came from (``signed``, ``sr``, ``pdf``, ``fhir``); None without one.

    Raises
    ------
    InvalidFindings
        From the constructor: an invalid UID or date, or a text that is not clean one-line text within its limit.
    """

    study_uid: str
    study_date: str | None = None
    modality: str | None = None
    description: str | None = None
    accession: str | None = None
    report_source: str | None = None

    def __post_init__(self) -> None:
        if not is_valid_uid(self.study_uid):
            raise InvalidFindings("a prior reference needs a valid Study Instance UID")
        if self.study_date is not None and not (isinstance(self.study_date, str) and _DATE.fullmatch(self.study_date)):
            raise InvalidFindings("a prior's study date is YYYYMMDD (or None)")
        for name, limit in PRIOR_TEXT_LIMITS.items():
            value = getattr(self, name)
            if value is not None and not (
                _is_clean(value, limit, required=True) and clean_text(value, one_line=True) == value
            ):
                raise InvalidFindings(f"a prior's {name} is one line of clean text, 1 to {limit} characters (or None)")

    @classmethod
    def read(cls, entry: object) -> PriorReference | None:
        """Read a stored prior reference leniently (never raises).

        Texts are cleaned to one line and cut, a date that is not ``YYYYMMDD`` is left out; None without a valid UID.
        """
        if not isinstance(entry, Mapping) or not is_valid_uid(entry.get("study_uid")):
            return None
        date = entry.get("study_date")
        texts = {name: _line(entry.get(name), limit) for name, limit in PRIOR_TEXT_LIMITS.items()}
        valid_date = date if isinstance(date, str) and _DATE.fullmatch(date) else None
        return cls(entry["study_uid"], valid_date, **texts)

    @classmethod
    def of(cls, study_uid: str, study_date: str | None = None, **texts: object) -> PriorReference:
        """Build a reference from archive or store values (untrusted text: cleaned to one line and cut).

        Parameters
        ----------
        study_uid : str
            The prior's Study Instance UID.
        study_date : str or None
            ``YYYYMMDD``; anything else is left out.
        **texts : object
            ``modality``, ``description``, ``accession``, ``report_source`` (None or empty: none).

        Raises
        ------
        InvalidFindings
            The UID is not valid, or a keyword is not one of the texts.
        """
        if unknown := set(texts) - set(PRIOR_TEXT_LIMITS):
            raise InvalidFindings(f"a prior reference has no {', '.join(sorted(unknown))}")
        reference = cls.read({"study_uid": study_uid, "study_date": study_date, **texts})
        if reference is None:
            raise InvalidFindings("a prior reference needs a valid Study Instance UID")
        return reference

    def as_json(self) -> dict[str, Any]:
        """Return the reference as stored."""
        return {"study_uid": self.study_uid, "study_date": self.study_date} | {
            name: getattr(self, name) for name in PRIOR_TEXT_LIMITS
        }

    @property
    def named(self) -> str:
        """The prior as a report's comparison line names it: ``CT CHEST WITH CONTRAST (CT) of 2024-03-01``."""
        what = self.description or self.modality or "prior study"
        if self.description and self.modality:
            what = f"{self.description} ({self.modality})"
        date = self.study_date
        return f"{what} of {date[:4]}-{date[4:6]}-{date[6:]}" if date else what


def compared_with(priors: Iterable[PriorReference]) -> str:
    """The comparison line of a draft that was given priors but says nothing of them: what it was compared with."""
    named = "; ".join(prior.named for prior in priors)
    return f"Compared with {named}." if named else ""


def _is_score(value: object) -> bool:
    return type(value) in (int, float) and 0.0 <= float(value) <= 1.0  # type: ignore[arg-type]


def _line(value: object, limit: int) -> str | None:
    return (clean_text(value, limit, one_line=True) or None) if isinstance(value, str) else None


@dataclass(frozen=True)
class Document:
    """What a draft or a signed version says: the findings document stored with each report version.

    Attributes
    ----------
    findings : tuple of Finding
        In report order; at most :data:`MAX_FINDINGS`.
    impression, limitations : str
        Clean text, at most :data:`MAX_SECTION_CHARS` each ('' when none).
    structured : bool
        False when the model's output could not be structured (it is then one free-text finding).
    problems : tuple of str
        What the draft parser repaired or dropped, and what the model was not given (for the reviewer).
    comparison : str
        The comparison with the prior studies (the model's statement, untrusted; then the radiologist's):
        clean text, at most :data:`MAX_SECTION_CHARS` ('' when none).
    priors : tuple of PriorReference
        The prior studies the model was given, most recent first; at most :data:`MAX_PRIORS`.
    prior_note : str
        Why no prior was given ("No prior study available.", "A prior study exists but could not be
        retrieved: ..."), or ''; clean text, at most :data:`MAX_PRIOR_NOTE_CHARS`.
    checks : tuple of Check
        Contradictions between the draft and the study's header (``integration/safety/consistency.py``);
        a reviewer dismisses or fixes each before signing.
    critical : tuple of CriticalMatch
        The draft's findings that matched a critical result category (``integration/safety/critical.py``).
    decoding : str
        How the model's answer was decoded (``models.backend.Decoding``: ``grammar``, ``response_format``,
        ``free``, ``free-fallback``), '' for old drafts and signed versions.
    confidence_method : str
        How the findings' ``confidence`` was computed, '' when none was.

    Raises
    ------
    InvalidFindings
        From the constructor, when a field breaks these rules.
    """

    findings: tuple[Finding, ...] = ()
    impression: str = ""
    limitations: str = ""
    structured: bool = True
    problems: tuple[str, ...] = ()
    comparison: str = ""
    priors: tuple[PriorReference, ...] = ()
    prior_note: str = ""
    checks: tuple[Check, ...] = ()
    critical: tuple[CriticalMatch, ...] = ()
    decoding: str = ""
    confidence_method: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.checks, tuple) and all(isinstance(c, Check) for c in self.checks)):
            raise InvalidFindings("a document's checks are a tuple of Check")
        if not (isinstance(self.critical, tuple) and all(isinstance(c, CriticalMatch) for c in self.critical)):
            raise InvalidFindings("a document's critical matches are a tuple of CriticalMatch")
        for name in ("decoding", "confidence_method"):
            value = getattr(self, name)
            if value and not is_line(value, SAFETY_TEXT_LIMITS["name"]):
                raise InvalidFindings(f"a document's {name} is one line of clean text (or '')")
        if not (isinstance(self.priors, tuple) and all(isinstance(p, PriorReference) for p in self.priors)):
            raise InvalidFindings("a document's priors are a tuple of PriorReference")
        if len(self.priors) > MAX_PRIORS:
            raise InvalidFindings(f"a document names at most {MAX_PRIORS} prior studies")
        if not _is_clean(self.comparison, MAX_SECTION_CHARS, required=False):
            raise InvalidFindings(f"the comparison is clean text of at most {MAX_SECTION_CHARS} characters")
        if not _is_clean(self.prior_note, MAX_PRIOR_NOTE_CHARS, required=False):
            raise InvalidFindings(f"the prior note is clean text of at most {MAX_PRIOR_NOTE_CHARS} characters")
        if not (isinstance(self.findings, tuple) and all(isinstance(f, Finding) for f in self.findings)):
            raise InvalidFindings("a document's findings are a tuple of Finding")
        if len(self.findings) > MAX_FINDINGS:
            raise InvalidFindings(f"a report may have at most {MAX_FINDINGS} findings")
        for section in (self.impression, self.limitations, *self.problems):
            if not _is_clean(section, MAX_SECTION_CHARS, required=False):
                raise InvalidFindings(f"impression, limitations and problems: clean text, at most {MAX_SECTION_CHARS}")
        if not isinstance(self.structured, bool) or not isinstance(self.problems, tuple):
            raise InvalidFindings("structured is a bool and problems a tuple of str")

    @classmethod
    def read(cls, stored: object, images_seen: Collection[int] = ()) -> Document:
        """Read a stored findings document leniently (never raises).

        Parameters
        ----------
        stored : object
            The JSON as stored (a mapping; anything else reads as an empty document), or a Document.
        images_seen : collection of int
            The images of the report's evidence: citations of others are dropped.  Empty: all kept.

        Returns
        -------
        Document
            Findings without text left out, those beyond :data:`MAX_FINDINGS` dropped, texts cleaned and
            cut; an impression, limitations, comparison, prior note or problem that is not a string reads as
            none; priors without a valid UID left out (old drafts have no comparison, priors or prior note).
        """
        if isinstance(stored, Document) and not images_seen:
            return stored
        if isinstance(stored, Document):
            stored = stored.as_json()
        if not isinstance(stored, Mapping):
            return cls()
        entries = stored.get("findings")
        read = (Finding.read(entry, images_seen) for entry in (entries if isinstance(entries, list) else ()))
        findings = tuple(finding for finding in read if finding is not None)[:MAX_FINDINGS]
        problems = stored.get("problems")
        priors = stored.get("priors")
        references = (PriorReference.read(entry) for entry in (priors if isinstance(priors, list) else ()))
        note = stored.get("prior_note")
        checks = (Check.read(entry) for entry in _list(stored.get("checks")))
        critical = (CriticalMatch.read(entry) for entry in _list(stored.get("critical")))
        return cls(
            findings=findings,
            impression=_section(stored.get("impression")),
            limitations=_section(stored.get("limitations")),
            structured=stored.get("structured") is not False,
            problems=tuple(text for p in (problems if isinstance(problems, list) else ()) if (text := _section(p))),
            comparison=_section(stored.get("comparison")),
            priors=tuple(reference for reference in references if reference is not None)[:MAX_PRIORS],
            prior_note=clean_text(note, MAX_PRIOR_NOTE_CHARS) if isinstance(note, str) else "",
            checks=tuple(check for check in checks if check is not None),
            critical=tuple(match for match in critical if match is not None),
            decoding=_line(stored.get("decoding"), SAFETY_TEXT_LIMITS["name"]) or "",
            confidence_method=_line(stored.get("confidence_method"), SAFETY_TEXT_LIMITS["name"]) or "",
        )

    def as_json(self) -> dict[str, Any]:
        """Return the document as stored (``checks``, ``critical``, ``decoding``, ``confidence_method`` when set)."""
        stored: dict[str, Any] = {
            "findings": [finding.as_json() for finding in self.findings],
            "impression": self.impression,
            "limitations": self.limitations,
            "structured": self.structured,
            "problems": list(self.problems),
            "comparison": self.comparison,
            "priors": [prior.as_json() for prior in self.priors],
            "prior_note": self.prior_note,
        }
        if self.checks:
            stored["checks"] = [check.as_json() for check in self.checks]
        if self.critical:
            stored["critical"] = [match.as_json() for match in self.critical]
        if self.decoding:
            stored["decoding"] = self.decoding
        if self.confidence_method:
            stored["confidence_method"] = self.confidence_method
        return stored

    def as_text(self, *, notice: str | None = None) -> str:
        """Return the document as plain report text: the comparison line, findings, impression, limitations.

        Parameters
        ----------
        notice : str, optional
            A line put first (a draft's AI notice), followed by an empty line.

        Returns
        -------
        str
            ``COMPARISON: <text>`` (see :func:`comparison_line`; left out when there is nothing to say),
            ``FINDINGS:`` with one ``- text [images 1, 2]`` line per finding, then ``IMPRESSION:`` and
            ``LIMITATIONS:`` when not empty.
        """
        return "\n".join(text_lines(self.findings, self.impression, self.limitations, self.comparison_text, notice))

    @property
    def comparison_text(self) -> str:
        """What the comparison line says: the comparison, else the priors it was made with, else the prior note."""
        return self.comparison or compared_with(self.priors) or self.prior_note


def comparison_line(comparison: str) -> str:
    """Return the report text's comparison line, ``COMPARISON: <text>``."""
    return f"{COMPARISON_HEADING} {comparison}"


def text_lines(
    findings: Iterable[Finding], impression: str, limitations: str, comparison: str = "", notice: str | None = None
) -> list[str]:
    """Return a report's plain-text lines, the one layout of every text rendering (drafts, signed versions, SR).

    Parameters
    ----------
    findings : iterable of Finding
        Anything with ``text`` and ``images``, in report order.
    impression, limitations : str
        The sections ('' when none: left out).
    comparison : str
        The comparison (or the note that there is no prior); '' leaves the line out.
    notice : str, optional
        A first line (a draft's AI notice), followed by an empty line.

    Returns
    -------
    list of str
        ``[notice, ""]``, ``COMPARISON: ...`` and ``""``, ``FINDINGS:``, ``- text [images 1, 2]``, then
        ``""``, ``IMPRESSION:``, text and ``""``, ``LIMITATIONS:``, text.
    """
    lines = [notice, ""] if notice else []
    if comparison:
        lines += [comparison_line(comparison), ""]
    lines.append("FINDINGS:")
    for finding in findings:
        refs = f" [images {', '.join(map(str, finding.images))}]" if finding.images else ""
        lines.append(f"- {finding.text}{refs}")
    for heading, section in (("IMPRESSION:", impression), ("LIMITATIONS:", limitations)):
        if section:
            lines += ["", heading, section]
    return lines


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _section(value: object) -> str:
    return clean_text(value, MAX_SECTION_CHARS) if isinstance(value, str) else ""


def kept_boxes(edited: Iterable[Finding], before: Sequence[Finding]) -> tuple[Finding, ...]:
    """Return edited findings with the region of the earlier finding each one leaves unchanged.

    An edited finding whose text and images are those of a finding of ``before`` that has a box gets that box;
    one whose text or images changed gets none (the region was the model's for its own words).
    """
    boxes = {(f.text, f.images): f.box for f in before if f.box is not None}
    return tuple(
        f if f.box is not None else Finding(f.text, f.images, box=boxes.get((f.text, f.images))) for f in edited
    )


def edited_text(value: object, limit: int, what: str, *, required: bool) -> str:
    """Return a person's text without control characters, or refuse it.

    Parameters
    ----------
    value : object
        The text sent (a string).
    limit : int
        Most characters accepted (:data:`MAX_FINDING_CHARS` or :data:`MAX_SECTION_CHARS`).
    what : str
        What it is, for the message (``"finding text"``).
    required : bool
        Refuse empty text.

    Returns
    -------
    str
        The text, cleaned (see :func:`clean_text`) and stripped.

    Raises
    ------
    InvalidFindings
        Not a string, empty when required, or longer than ``limit`` once cleaned.
    """
    if not isinstance(value, str):
        raise InvalidFindings(f"{what} is required")
    cleaned = clean_text(value)
    if required and not cleaned:
        raise InvalidFindings(f"{what} must not be empty")
    if len(cleaned) > limit:
        raise InvalidFindings(f"{what} is {len(cleaned)} characters long; at most {limit} are allowed")
    return cleaned


def edited_findings(value: object, images_seen: Collection[int] = ()) -> tuple[Finding, ...]:
    """Read edited findings strictly: a list of ``{"text": str, "images": [int, ...]}`` or of Finding.

    Parameters
    ----------
    value : object
        The list, as parsed from JSON (``images`` optional; repeated image numbers count once).
    images_seen : collection of int
        The images of the draft's evidence; a finding may cite only these (any, when empty).

    Returns
    -------
    tuple of Finding
        The findings, texts cleaned.

    Raises
    ------
    InvalidFindings
        Not a list, more than :data:`MAX_FINDINGS`, an entry without a text string, an empty or too long
        text, images that are not a list of positive image numbers, or an image the draft does not have.
    """
    if not isinstance(value, list | tuple):
        raise InvalidFindings('findings must be a JSON list of {"text": ..., "images": [...]} objects')
    if len(value) > MAX_FINDINGS:
        raise InvalidFindings(f"at most {MAX_FINDINGS} findings")
    seen = set(images_seen)
    findings = []
    for number, entry in enumerate(value, start=1):
        if isinstance(entry, Finding):
            entry = entry.as_json()
        if not isinstance(entry, Mapping) or not isinstance(entry.get("text"), str):
            raise InvalidFindings(f'finding {number} must be an object with a "text" string')
        images = entry.get("images", [])
        if not isinstance(images, list) or not all(map(_is_number, images)):
            raise InvalidFindings(f'finding {number}: "images" must be a list of image numbers (1, 2, ...)')
        if seen and (unknown := sorted(set(images) - seen)):
            raise InvalidFindings(f"finding {number} cites image(s) {unknown}; the draft has images {sorted(seen)}")
        text = edited_text(entry["text"], MAX_FINDING_CHARS, f"finding {number}", required=True)
        findings.append(Finding(text, tuple(dict.fromkeys(images))))
    return tuple(findings)
