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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.tag import Tag

from integration.config import Settings
from integration.store.reports import InstanceFile
from models.backend import VisionLanguageBackend
from models.draft import ParsedDraft
from models.openai_backend import OpenAICompatibleBackend

#: Header attributes that withhold an instance when ``YES`` (PS3.15 E.1.1: pixels with identifying content).
WITHHELD_WHEN_YES = (Tag(0x0028, 0x0301), Tag(0x0028, 0x0302))
#: The profile applied, as recorded with drafts.
PROFILE = "DICOM PS3.15 basic application level confidentiality profile"


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
    """

    files: list[InstanceFile]
    deidentified: bool
    withheld: int = 0

    def question(self, question: str | None) -> str | None:
        """The referrer's question as it may be sent: None when de-identifying (PS3.15: removed)."""
        return None if self.deidentified else question

    def timings(self) -> dict[str, float]:
        """Entries for the draft's timings: ``deidentified`` (1.0) and ``withheld_images``; empty when not applied."""
        if not self.deidentified:
            return {}
        return {"deidentified": 1.0, "withheld_images": float(self.withheld)}

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
        return dataclasses.replace(parsed, problems=tuple(problems), limitations=limitations)


def leaves_trust_boundary(backend: VisionLanguageBackend) -> bool:
    """Whether requests to this backend leave the hospital's trust boundary (a model server not declared trusted)."""
    return isinstance(backend, OpenAICompatibleBackend) and backend.outside_trust_boundary


def outbound_release(
    settings: Settings, files: Sequence[InstanceFile], backend: VisionLanguageBackend
) -> OutboundRelease:
    """Decide which of a study's instances may go to a backend.

    All instances for a trusted backend; for an untrusted one, those whose header does not say
    ``YES`` to burned-in annotation or recognizable visual features.
    """
    if not leaves_trust_boundary(backend):
        return OutboundRelease(list(files), deidentified=False)
    kept = [f for f in files if not identifying_pixels(settings.instance_root / f.storage_path)]
    return OutboundRelease(kept, deidentified=True, withheld=len(files) - len(kept))


def identifying_pixels(path: Path) -> bool:
    """Whether a stored file's Burned In Annotation or Recognizable Visual Features is ``YES``.

    A header that cannot be read is left to the image selection, which skips it.
    """
    try:
        header = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=list(WITHHELD_WHEN_YES))
    except Exception:
        return False
    for tag in WITHHELD_WHEN_YES:
        element = header.get(tag)
        if element is not None and str(element.value or "").strip().upper() == "YES":
            return True
    return False


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
