"""The referrer's clinical question, read from an instance's header for the model's prompt.

Where it is looked for, first found wins:

1. Reason for Visit (0032,1066, UT): where photo uploads keep the whole question (up to
   ``upload_question_chars``; the LO elements below hold 64 characters);
2. Request Attributes Sequence (0040,0275), first item, Reason for the Requested Procedure (0040,1002)
   (what a modality copies from the worklist, and the first 64 characters of an uploaded question);
3. Reason for the Requested Procedure (0040,1002) at the top level;
4. Reason for Study (0032,1030).

The text is untrusted (typed by a person, possibly hostile): control characters are removed, white
space is collapsed and the length is capped.  It is patient data: it is never logged, and errors say
nothing about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from integration.findings import clean_text

#: Longest clinical question kept (characters): the longest a telemedicine case may carry by default.
MAX_QUESTION_CHARS = 2000
#: Header attributes read for the question (the character set decodes them).
QUESTION_KEYWORDS = (
    "SpecificCharacterSet",
    "ReasonForVisit",
    "RequestAttributesSequence",
    "ReasonForTheRequestedProcedure",
    "ReasonForStudy",
)
QUESTION_TAGS: list[BaseTag] = [Tag(keyword) for keyword in QUESTION_KEYWORDS]


def clean_question(value: Any) -> str | None:
    """Turn a header value (string, multi-valued string or anything else) into a safe one-line question.

    Control and format characters removed, white space collapsed, at most :data:`MAX_QUESTION_CHARS`
    characters; None when nothing is left.
    """
    if value is None:
        return None
    text = " ".join(str(part) for part in value) if isinstance(value, (list, tuple, MultiValue)) else str(value)
    return clean_text(text, one_line=True)[:MAX_QUESTION_CHARS].strip() or None


def question_in(ds: Dataset) -> str | None:
    """Return the cleaned clinical question a header carries (looked for in the module docstring's order), or None."""
    candidates: list[Any] = []
    try:
        candidates.append(ds.get("ReasonForVisit"))
        requests = ds.get("RequestAttributesSequence")
        if requests:
            candidates.append(requests[0].get("ReasonForTheRequestedProcedure"))
        candidates.append(ds.get("ReasonForTheRequestedProcedure"))
        candidates.append(ds.get("ReasonForStudy"))
    except Exception:  # a malformed element must not stop the analysis
        return None
    for candidate in candidates:
        question = clean_question(candidate)
        if question:
            return question
    return None


def read_question(path: Path) -> str | None:
    """Read the cleaned clinical question from a DICOM file's header (no pixel data); None when none or unreadable."""
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=QUESTION_TAGS)
        return question_in(ds)
    except Exception:  # an unreadable header means no question, never a failed analysis
        return None
