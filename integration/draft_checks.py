"""The draft's safety values: consistency checks and critical matches, as the findings document stores them.

A :class:`Check` is a contradiction between a draft and its study's header that the reviewer must dismiss or
fix before signing (``integration/safety/consistency.py`` finds them); a :class:`CriticalMatch` is a finding
that matched a critical (actionable) result category (``integration/safety/critical.py``).  Both are values
of :class:`integration.findings.Document` and validate themselves like its other values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from integration.untrusted import InvalidFindings, is_line

#: What a consistency check may find between a draft and its study's header (see ``integration/safety``).
CHECK_KINDS = ("laterality", "sex", "region", "modality", "contrast", "image", "identifier")
#: Where a critical match was found: the model's urgency field, the finding's text, or both.
CRITICAL_SOURCES = ("urgency", "text", "both")
#: Longest one-line texts: a check's message, a critical category's code and label, a matched phrase.
CHECK_TEXT_LIMITS = {"message": 300, "code": 48, "label": 96, "phrase": 160}


@dataclass(frozen=True)
class Check:
    """A contradiction between a draft and its study's header, flagged for the reviewer.

    Attributes
    ----------
    finding : int
        The finding it concerns, 1-based as shown; 0 for the draft as a whole (the impression).
    kind : str
        One of :data:`CHECK_KINDS`: ``laterality`` (text vs Image Laterality / Laterality / view),
        ``sex`` (sex-specific anatomy vs Patient's Sex), ``region`` (vs Body Part Examined / study
        description), ``modality`` (modality words vs Modality), ``contrast`` (contrast mentioned, none
        recorded), ``image`` (a cited image that does not exist), ``identifier`` (an echoed identifier was
        masked).
    message : str
        What contradicts what, one line of clean text (no patient data), at most 300 characters.

    Raises
    ------
    InvalidFindings
        From the constructor, when a field breaks these rules.
    """

    finding: int
    kind: str
    message: str

    def __post_init__(self) -> None:
        if type(self.finding) is not int or self.finding < 0 or self.kind not in CHECK_KINDS:
            raise InvalidFindings(f"a check names a finding (0 or more) and a kind of {', '.join(CHECK_KINDS)}")
        if not is_line(self.message, CHECK_TEXT_LIMITS["message"]):
            raise InvalidFindings("a check's message is one line of clean text, 1 to 300 characters")

    @classmethod
    def read(cls, entry: object) -> Check | None:
        """Read a stored check leniently (None when it breaks the rules; never raises)."""
        if not isinstance(entry, Mapping):
            return None
        try:
            return cls(entry.get("finding"), entry.get("kind"), entry.get("message"))  # type: ignore[arg-type]
        except InvalidFindings:
            return None

    def as_json(self) -> dict[str, Any]:
        """Return the check as stored."""
        return {"finding": self.finding, "kind": self.kind, "message": self.message}

    @property
    def key(self) -> str:
        """``<finding>:<kind>``: how a reviewer's dismissal names the check."""
        return f"{self.finding}:{self.kind}"


@dataclass(frozen=True)
class CriticalMatch:
    """A draft finding that matched a critical (actionable) result category.

    Attributes
    ----------
    finding : int
        The finding, 1-based; 0 for the impression.
    code : str
        The category's code (``pneumothorax``), one line, at most 48 characters.
    label : str
        The category's name as shown and sent (``Pneumothorax``), at most 96 characters.
    source : str
        One of :data:`CRITICAL_SOURCES`: the model's urgency field, the text (affirmed, not negated,
        uncertain, historical or hypothetical), or both.
    phrase : str
        The words matched in the text ('' when only the urgency field said so), at most 160 characters.

    Raises
    ------
    InvalidFindings
        From the constructor, when a field breaks these rules.
    """

    finding: int
    code: str
    label: str
    source: str
    phrase: str = ""

    def __post_init__(self) -> None:
        if type(self.finding) is not int or self.finding < 0 or self.source not in CRITICAL_SOURCES:
            raise InvalidFindings(f"a critical match names a finding and a source of {', '.join(CRITICAL_SOURCES)}")
        if not (is_line(self.code, CHECK_TEXT_LIMITS["code"]) and is_line(self.label, CHECK_TEXT_LIMITS["label"])):
            raise InvalidFindings("a critical match's code and label are short lines of clean text")
        if self.phrase and not is_line(self.phrase, CHECK_TEXT_LIMITS["phrase"]):
            raise InvalidFindings("a critical match's phrase is one line of clean text, at most 160 characters")

    @classmethod
    def read(cls, entry: object) -> CriticalMatch | None:
        """Read a stored match leniently (None when it breaks the rules; never raises)."""
        if not isinstance(entry, Mapping):
            return None
        try:
            finding, code, label, source = (entry.get(name) for name in ("finding", "code", "label", "source"))
            return cls(finding, code, label, source, entry.get("phrase") or "")  # type: ignore[arg-type]
        except InvalidFindings:
            return None

    def as_json(self) -> dict[str, Any]:
        """Return the match as stored."""
        return {
            "finding": self.finding,
            "code": self.code,
            "label": self.label,
            "source": self.source,
            "phrase": self.phrase,
        }
