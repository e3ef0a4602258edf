"""The model's echo of the patient's identifiers, masked and flagged before a draft is stored or shown.

A model given a study's images may read a burned-in name or date and repeat it; a prompt may carry one.
:func:`mask_identifiers` replaces, in every finding, the impression, the limitations and the comparison:

* each component of the patient's names of two letters or more, as a whole word, case-insensitively
  (``Doe^Jane`` masks ``Doe`` and ``Jane``, not ``Doer``), and the parts of a hyphenated one
  (``Mary-Kate`` also masks ``Mary``);
* the Patient ID, Other Patient IDs and the Accession Number, as whole tokens, case-insensitively, and
  without their separators (``PID-73519`` also masks ``PID73519``); values shorter than
  :data:`MIN_ID_CHARS` are left alone (``1`` would mask every image number);
* the birth date in the common written forms: ``19600301``, ``1960-03-01``, ``1960/3/1``, ``01/03/1960``,
  ``03/01/1960``, ``1.3.1960``, ``1 March 1960``, ``1st Mar 1960``, ``March 1, 1960``.

by :data:`MASK`, and adds one :class:`~integration.draft_checks.Check` of kind ``identifier`` per finding
masked (finding 0 for the sections) naming what kind of identifier it was, never its value.
:func:`mask_text` masks the model's raw answer (kept with the draft) by the same rules.

Not masked: a name component that is also an ordinary word is masked all the same (a surname ``White``
masks "white matter": the reviewer sees the flag and the mask); a year alone, a partial date, initials,
and identifiers the header does not carry (the physicians' names: see ``worker/outbound.deidentify_text``
for what leaves the trust boundary).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from integration.draft_checks import Check
from integration.findings import MAX_FINDING_CHARS, MAX_SECTION_CHARS, Document
from integration.safety.facts import Identifiers

#: What replaces an echoed identifier.
MASK = "[identifier removed]"
#: Shortest Patient ID or Accession Number masked.
MIN_ID_CHARS = 3
_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
#: The sections masked, besides the findings (all make finding 0's check).
SECTIONS = ("impression", "limitations", "comparison")


def mask_identifiers(document: Document, identifiers: Identifiers) -> tuple[Document, tuple[Check, ...]]:
    """Mask the patient's identifiers the model echoed, and flag each finding masked.

    Parameters
    ----------
    document : Document
        The draft as read from the model's answer.
    identifiers : Identifiers
        The patient's identifiers (``StudyFacts.identifiers``).

    Returns
    -------
    tuple of (Document, tuple of Check)
        The document with each identifier replaced by :data:`MASK` in findings, impression, limitations and
        comparison (other fields as they were), and one check of kind ``identifier`` per finding masked, in
        order, then one of finding 0 when a section was (its message names the kinds, never the values).
    """
    patterns = _patterns(identifiers)
    if not patterns:
        return document, ()
    checks: list[Check] = []
    findings = []
    for number, finding in enumerate(document.findings, start=1):
        text, kinds = _mask(finding.text, patterns)
        findings.append(replace(finding, text=text[:MAX_FINDING_CHARS]) if kinds else finding)
        if kinds:
            checks.append(_check(number, kinds))
    section_kinds: list[str] = []
    sections = []
    for name in SECTIONS:
        text, kinds = _mask(getattr(document, name), patterns)
        sections.append(text[:MAX_SECTION_CHARS])
        section_kinds.extend(kinds)
    if section_kinds:
        checks.append(_check(0, section_kinds))
    if not checks:
        return document, ()
    impression, limitations, comparison = sections
    masked = replace(
        document, findings=tuple(findings), impression=impression, limitations=limitations, comparison=comparison
    )
    return masked, tuple(checks)


def mask_text(text: str, identifiers: Identifiers) -> str:
    """Return ``text`` (the model's raw answer, kept with the draft) with the patient's identifiers masked.

    The same rules as :func:`mask_identifiers`; nothing is flagged.
    """
    patterns = _patterns(identifiers)
    return _mask(text, patterns)[0] if patterns else text


def _check(finding: int, kinds: Iterable[str]) -> Check:
    named = ", ".join(dict.fromkeys(kinds))
    return Check(finding, "identifier", f"the model's text repeated the patient's {named}; masked")


def _patterns(identifiers: Identifiers) -> list[tuple[str, re.Pattern[str]]]:
    """(kind, pattern) for each kind of identifier the header carries."""
    patterns = []
    parts = {part for name in identifiers.names for part in (name, *re.split(r"[-'\u2019.]+", name))}
    names = sorted({n.lower() for n in parts if sum(c.isalpha() for c in n) >= 2}, key=len, reverse=True)
    if names:
        patterns.append(("name", _words(names)))
    for kind, values in (("ID", identifiers.ids), ("accession number", identifiers.accessions)):
        forms = {form for value in values if len(value) >= MIN_ID_CHARS for form in _id_forms(value)}
        if forms:
            patterns.append((kind, _words(sorted(forms, key=len, reverse=True))))
    dates = [pattern for date in identifiers.birth_dates if (pattern := _date_pattern(date))]
    if dates:
        patterns.append(("birth date", re.compile("|".join(p.pattern for p in dates), re.IGNORECASE)))
    return patterns


def _words(values: Iterable[str]) -> re.Pattern[str]:
    """Any of ``values`` as a whole token (not inside a longer word or number)."""
    alternatives = "|".join(re.escape(value) for value in values)
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w]|-\w)", re.IGNORECASE)


def _id_forms(value: str) -> set[str]:
    compact = re.sub(r"[\W_]+", "", value)
    return {value.lower()} | ({compact.lower()} if len(compact) >= MIN_ID_CHARS else set())


def _date_pattern(date: str) -> re.Pattern[str] | None:
    """The common written forms of a ``YYYYMMDD`` date, as one pattern."""
    year, month, day = date[:4], int(date[4:6]), int(date[6:8])
    if not 1 <= month <= 12:
        return None
    name = _MONTHS[month - 1]
    short = "sept?" if month == 9 else name[:3]
    month_word = rf"(?:{name}|{short}\.?)"
    mm, dd = rf"0?{month}", rf"0?{day}"
    day_word = rf"0?{day}(?:st|nd|rd|th)?"
    forms = [
        rf"{year}{month:02d}{day:02d}",
        rf"{year}[-/.]{mm}[-/.]{dd}",
        rf"{dd}[-/.]{mm}[-/.]{year}",
        rf"{mm}[-/.]{dd}[-/.]{year}",
        rf"{day_word}\s+(?:of\s+)?{month_word},?\s+{year}",
        rf"{month_word}\s+{day_word},?\s+{year}",
    ]
    return re.compile(r"(?<![\w])(?:" + "|".join(forms) + r")(?![\w])", re.IGNORECASE)


def _mask(text: str, patterns: list[tuple[str, re.Pattern[str]]]) -> tuple[str, list[str]]:
    """The text with each pattern's matches masked, and the kinds that matched (dates first: they hold ids)."""
    kinds = []
    for kind, pattern in sorted(patterns, key=lambda item: item[0] != "birth date"):
        text, count = pattern.subn(MASK, text)
        if count:
            kinds.append(kind)
    return text, kinds
