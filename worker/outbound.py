"""What may leave for a model server outside the hospital's trust boundary: the one place of that policy.

When the default model runs on an OpenAI-compatible server that is not declared inside the trust
boundary (``PACSVLM_MODEL_SERVER_TRUSTED`` false, the default), a request carries pixels and
de-identified minimum metadata only, after the DICOM PS3.15 basic application level confidentiality
profile (Table E.1-1):

- no clinical question: Reason for the Requested Procedure (0040,1002) is ``X`` (removed);
- no patient name, id, birth date, UIDs, accession number, institution, dates, series or study
  description: image labels hold only modality, series number, slice or image position and window
  (:func:`integration.imaging.selection.prepare_study` builds them from nothing else), the task text is
  fixed per template, and the request id never leaves;
- no images whose pixels may carry identifying text or features: instances with Burned In Annotation
  (0028,0301) or Recognizable Visual Features (0028,0302) ``YES`` are withheld, and the draft says so
  (problems, limitations, timings);
- no burned-in text that no header announces: each image built for the server is read with tesseract
  (:mod:`integration.imaging.burned_in`, the study's person names and ids known); one with words that look
  like a name, an id or a date is withheld, or with ``PACSVLM_BURNED_IN_TEXT=redact`` sent with those words
  blacked out (``off``: not checked, and the draft says so); an image tesseract cannot read is withheld.
  The draft records what was done (problems, limitations, timings ``ocr_s``, ``burned_in_withheld``,
  ``burned_in_redacted``), never the words;
- no metadata in the image files: the backend re-encodes pixels alone as PNG (no text chunks, EXIF or
  colour profile).

Priors (issue 15) follow the same rules: a prior is placed in time as "N days earlier", never by its
date; its description is not sent; its report text goes through :func:`deidentify_text` (dates, long
numbers, the patient's and named physicians' names removed); the patient's age is sent as a decade band
and the sex not at all (Patient's Age is ``X`` and Patient's Sex ``Z`` in Table E.1-1).

In-process models and trusted servers get the full prompt, clinical question included.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from integration.config import Settings
from integration.imaging.burned_in import BurnedInText, OcrUnavailable, find_burned_in_text, redact
from integration.imaging.selection import ModelImage, NoImages, PreparedStudy
from integration.store.reports import InstanceFile
from models.backend import VisionLanguageBackend
from models.draft import ParsedDraft
from models.openai_backend import OpenAICompatibleBackend

#: Header attributes that withhold an instance when ``YES`` (PS3.15 E.1.1: pixels with identifying content).
WITHHELD_WHEN_YES = (Tag(0x0028, 0x0301), Tag(0x0028, 0x0302))
#: Header person names that burned-in text is matched against (never sent, never logged).
NAME_TAGS = (
    Tag(0x0010, 0x0010),  # Patient's Name
    Tag(0x0010, 0x1001),  # Other Patient Names
    Tag(0x0008, 0x0090),  # Referring Physician's Name
    Tag(0x0008, 0x1050),  # Performing Physician's Name
    Tag(0x0008, 0x1060),  # Name of Physician(s) Reading Study
    Tag(0x0008, 0x1070),  # Operators' Name
)
#: Header identifiers that burned-in text is matched against.
ID_TAGS = (Tag(0x0010, 0x0020), Tag(0x0010, 0x1000), Tag(0x0008, 0x0050))  # Patient ID, Other IDs, Accession
#: The profile applied, as recorded with drafts.
PROFILE = "DICOM PS3.15 basic application level confidentiality profile"
#: Most images read by tesseract at once (each is a process).
OCR_WORKERS = 4


@dataclass
class BurnedInScreen:
    """The burned-in text check of one draft's images bound for a model server outside the trust boundary.

    A tally that :meth:`OutboundRelease.screen_images` adds to (the current study's images, then the
    priors'); ``names`` and ``identifiers`` are patient data: kept out of the ``repr``, never logged.

    Attributes
    ----------
    mode : {"withhold", "redact", "off"}
        ``PACSVLM_BURNED_IN_TEXT``.
    languages : str
        Tesseract languages.
    names, identifiers : tuple of str
        The study's person names and ids from the header.
    withheld, redacted, unreadable : int
        Images withheld (identifying text, or unreadable), sent redacted, not readable by tesseract.
    seconds : float
        Time spent reading.
    kinds : set of str
        Kinds of identifying text found (``name``, ``id``, ``date``).
    error : str or None
        Why tesseract could not read an image (no text from the image).
    """

    mode: Literal["withhold", "redact", "off"]
    languages: str = "eng"
    names: tuple[str, ...] = field(default=(), repr=False)
    identifiers: tuple[str, ...] = field(default=(), repr=False)
    withheld: int = 0
    redacted: int = 0
    unreadable: int = 0
    seconds: float = 0.0
    kinds: set[str] = field(default_factory=set)
    error: str | None = None

    def screen(self, images: Sequence[ModelImage]) -> list[ModelImage]:
        """Read each image; keep the clean, redact or drop the identifying, drop the unreadable (in order)."""
        if self.mode == "off" or not images:
            return list(images)
        started = time.perf_counter()
        workers = max(1, min(OCR_WORKERS, len(images), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocr") as pool:
            found = list(pool.map(self._read, images))
        self.seconds += time.perf_counter() - started
        kept = []
        for image, text in zip(images, found, strict=True):
            if text is None:
                self.unreadable += 1
                self.withheld += 1
            elif not text.identifying:
                kept.append(image)
            else:
                self.kinds.update(kind.value for kind in text.kinds)
                if self.mode == "redact":
                    self.redacted += 1
                    kept.append(_redacted(image, text))
                else:
                    self.withheld += 1
        return kept

    def _read(self, image: ModelImage) -> BurnedInText | None:
        try:
            return find_burned_in_text(
                image.pixels, names=self.names, identifiers=self.identifiers, languages=self.languages
            )
        except OcrUnavailable as exc:
            self.error = str(exc)
            return None

    def kinds_text(self) -> str:
        """The kinds found as a phrase: ``a name``, ``an id or date``, ``a name, id or date`` (all when none)."""
        kinds = [kind for kind in ("name", "id", "date") if kind in self.kinds] or ["name", "id", "date"]
        listed = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
        return f"{'an' if kinds[0] == 'id' else 'a'} {listed}"

    def notes(self) -> list[str]:
        """What the draft's reader is told (no text read from an image)."""
        if self.mode == "off":
            return []
        notes = []
        identified = self.withheld - self.unreadable
        if identified:
            notes.append(
                f"{identified} image(s) showed burned-in text that looks like {self.kinds_text()} and were not "
                "shown to the model (external model server)."
            )
        if self.redacted:
            notes.append(
                f"{self.redacted} image(s) showed burned-in text that looks like {self.kinds_text()}; it was "
                "blacked out before the image went to the model (external model server)."
            )
        if self.unreadable:
            notes.append(
                f"{self.unreadable} image(s) could not be checked for burned-in text ({self.error}) and were not "
                "shown to the model (external model server)."
            )
        return notes


def _redacted(image: ModelImage, text: BurnedInText) -> ModelImage:
    pixels = redact(image.pixels, text.identifying)
    pixels.setflags(write=False)
    return dataclasses.replace(image, pixels=pixels)


@dataclass(frozen=True)
class OutboundRelease:
    """What of a study may be sent to the backend.

    Attributes
    ----------
    files : list of InstanceFile
        The instances the model may see.
    deidentified : bool
        Whether the backend is outside the trust boundary (the policy applies).
    withheld : int
        Instances withheld because their pixels may identify the patient.
    burned_in : BurnedInScreen or None
        The burned-in text check of the images built for the server (None: trusted backend).
    """

    files: list[InstanceFile]
    deidentified: bool
    withheld: int = 0
    burned_in: BurnedInScreen | None = None

    def screen_images(self, images: Sequence[ModelImage]) -> list[ModelImage]:
        """The images that may go to the backend: all for a trusted one; else those the burned-in text check keeps.

        The current study's go through :meth:`screen_study`; a prior's through this (a prior that loses every
        image is compared by its report alone).  The tally is the draft's, whichever call made it.
        """
        return self.burned_in.screen(images) if self.burned_in is not None else list(images)

    def screen_study(self, prepared: PreparedStudy) -> PreparedStudy:
        """The prepared study with only the images that may go to the backend (:meth:`screen_images`).

        Raises
        ------
        NoImages
            Every image was withheld: the reason says why (never what text was read).
        """
        kept = self.screen_images(prepared.images)
        if len(kept) == len(prepared.images) and all(a is b for a, b in zip(kept, prepared.images, strict=True)):
            return prepared
        if not kept:
            assert self.burned_in is not None  # only the check drops images
            raise NoImages(self._none_left(len(prepared.images)), prepared.skipped)
        series = list(dict.fromkeys(e.series_uid for image in kept for e in image.evidence))
        return dataclasses.replace(prepared, images=kept, series_uids=series)

    def _none_left(self, count: int) -> str:
        screen = self.burned_in
        assert screen is not None
        reasons = []
        if screen.withheld > screen.unreadable:
            reasons.append(f"burned-in text that looks like {screen.kinds_text()}")
        if screen.unreadable:
            reasons.append(f"no burned-in text check possible ({screen.error})")
        header = (
            f"; {self.withheld} instance(s) with burned-in annotation or recognizable features were withheld too"
            if self.withheld
            else ""
        )
        return (
            f"every image prepared for the model ({count}) was withheld for {' or '.join(reasons)}: it may not go "
            f"to a model server outside the trust boundary (burned_in_text={screen.mode}){header}"
        )

    def question(self, question: str | None) -> str | None:
        """The referrer's question as it may be sent: None when de-identifying (PS3.15: removed)."""
        return None if self.deidentified else question

    def timings(self) -> dict[str, float]:
        """Entries for the draft's timings: ``deidentified`` (1.0) and ``withheld_images``; empty when not applied.

        With the burned-in text check on: ``ocr_s``, ``burned_in_withheld`` and ``burned_in_redacted``.
        """
        if not self.deidentified:
            return {}
        timings = {"deidentified": 1.0, "withheld_images": float(self.withheld)}
        if self.burned_in is not None and self.burned_in.mode != "off":
            timings["ocr_s"] = round(self.burned_in.seconds, 4)
            timings["burned_in_withheld"] = float(self.burned_in.withheld)
            timings["burned_in_redacted"] = float(self.burned_in.redacted)
        return timings

    def annotate(self, parsed: ParsedDraft, question_dropped: bool) -> ParsedDraft:
        """Tell the reviewer what the model was not given: add problems (and, for withheld images, limitations).

        ``question_dropped`` says whether the study had a clinical question that was not sent.
        """
        if not self.deidentified:
            return parsed
        problems = list(parsed.problems)
        limitations = parsed.limitations
        problems.append(f"de-identified for a model server outside the trust boundary ({PROFILE})")
        if question_dropped:
            problems.append("the clinical question was not sent to the model server (outside the trust boundary)")
        if self.withheld:
            note = (
                f"{self.withheld} image instance(s) with burned-in annotation or recognizable features "
                "were not shown to the model (external model server)."
            )
            problems.append(note)
            limitations = f"{limitations} {note}".strip()
        if self.burned_in is not None and self.burned_in.mode == "off":
            problems.append("burned-in text in the images was not checked before they went to the model server")
        for note in self.burned_in.notes() if self.burned_in is not None else ():
            problems.append(note)
            limitations = f"{limitations} {note}".strip()
        return dataclasses.replace(parsed, problems=tuple(problems), limitations=limitations)


def leaves_trust_boundary(backend: VisionLanguageBackend) -> bool:
    """Whether requests to this backend leave the hospital's trust boundary (a model server not declared trusted)."""
    return isinstance(backend, OpenAICompatibleBackend) and backend.outside_trust_boundary


def outbound_release(
    settings: Settings, files: Sequence[InstanceFile], backend: VisionLanguageBackend
) -> OutboundRelease:
    """Decide which of a study's instances may go to a backend.

    All instances for a trusted backend; for an untrusted one, those whose header does not say
    ``YES`` to burned-in annotation or recognizable visual features, and the burned-in text check
    (``settings.burned_in_text``) for the images built from them, knowing the headers' names and ids.
    """
    if not leaves_trust_boundary(backend):
        return OutboundRelease(list(files), deidentified=False)
    kept = []
    names: dict[str, None] = {}
    identifiers: dict[str, None] = {}
    for item in files:
        header = _read_header(settings.instance_root / item.storage_path)
        if header is not None:
            names.update(dict.fromkeys(_values(header, NAME_TAGS)))
            identifiers.update(dict.fromkeys(_values(header, ID_TAGS)))
        if header is None or not _says_yes(header):
            kept.append(item)
    screen = BurnedInScreen(settings.burned_in_text, settings.ocr_languages, tuple(names), tuple(identifiers))
    return OutboundRelease(kept, deidentified=True, withheld=len(files) - len(kept), burned_in=screen)


def identifying_pixels(path: Path) -> bool:
    """Whether a stored file's Burned In Annotation or Recognizable Visual Features is ``YES``.

    A header that cannot be read is left to the image selection, which skips it.
    """
    header = _read_header(path)
    return header is not None and _says_yes(header)


def _read_header(path: Path) -> Dataset | None:
    """The attributes the release needs of a stored file (None when unreadable)."""
    try:
        return pydicom.dcmread(
            path, force=True, stop_before_pixels=True, specific_tags=[*WITHHELD_WHEN_YES, *NAME_TAGS, *ID_TAGS]
        )
    except Exception:
        return None


def _says_yes(header: Dataset) -> bool:
    for tag in WITHHELD_WHEN_YES:
        element = header.get(tag)
        if element is not None and str(element.value or "").strip().upper() == "YES":
            return True
    return False


def _values(header: Dataset, tags: Sequence[Any]) -> Iterator[str]:
    """The non-empty string values of ``tags`` (each value of a multi-valued one)."""
    for tag in tags:
        element = header.get(tag)
        if element is None or element.value is None:
            continue
        values = element.value if isinstance(element.value, (list, tuple, MultiValue)) else [element.value]
        for value in values:
            if text := str(value).strip():
                yield text


#: What replaces a removed date, number or name in text sent outside the trust boundary.
REMOVED = "[removed]"
_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATES = re.compile(
    r"\b(?:\d{1,4}[./-]\d{1,2}[./-]\d{1,4}"  # 2024-03-01, 01/03/2024, 1.3.24
    r"|(?:19|20)\d{6}"  # 20240301 (DICOM DA)
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}(?:,?\s+\d{{2,4}})?"  # 1 March 2024, 1st Mar
    rf"|{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{2,4}})?"  # March 1, 2024
    rf"|{_MONTHS}\s+(?:19|20)\d{{2}})\b",  # March 2024
    re.IGNORECASE,
)
#: Identifier-like tokens: at least four digits among letters, digits and hyphens (MRNs, accessions, phone numbers).
_IDENTIFIERS = re.compile(r"\b(?=[A-Za-z0-9-]*(?:\d[^\d\s]*){4})[A-Za-z0-9][A-Za-z0-9-]{3,}\b")
_TITLED_NAMES = re.compile(r"\b(?:Dr|Doctor|Prof|Mr|Mrs|Ms)\.?\s+[A-Z][A-Za-z'-]+(?:\s+[A-Z][A-Za-z'-]+)?")


def deidentify_text(text: str, names: Sequence[str] = ()) -> str:
    """Remove what identifies a patient from report text sent outside the trust boundary.

    Dates (numeric, DICOM and written forms), identifier-like tokens (four digits or more), titled names
    (``Dr Smith``) and each word of ``names`` (the patient's and physicians' person names, any component
    of two letters or more) become ``[removed]``; measurements (``12 mm``, ``1.5 cm``) are kept.
    """
    words = {part.lower() for name in names for part in re.split(r"[\^\s,]+", name) if len(part.strip(".-'")) >= 2}
    cleaned = _DATES.sub(REMOVED, text)
    cleaned = _TITLED_NAMES.sub(REMOVED, cleaned)
    cleaned = _IDENTIFIERS.sub(REMOVED, cleaned)
    if words:
        pattern = re.compile(
            r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b", re.I
        )
        cleaned = pattern.sub(REMOVED, cleaned)
    return cleaned
