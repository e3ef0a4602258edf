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

In-process models and trusted servers get the full prompt, clinical question included.
"""

from __future__ import annotations

import dataclasses
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
