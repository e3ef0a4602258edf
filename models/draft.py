"""Turning model output (untrusted text) into a structured draft.

The model is asked for a JSON object; real models wrap it in prose or code
fences, use other key names, or answer with plain sections.  The parser takes
what it can and never raises: output it cannot structure is kept as free text
and flagged, so a radiologist still sees it.

Given prior studies, the model also writes a comparison ("new", "unchanged",
"interval decrease"): kept as :attr:`ParsedDraft.comparison`, stored as the
findings document's ``comparison`` (:class:`integration.findings.Document`).
Image numbers index one list, the prior's images first, so a finding that
cites a prior image cites it like any other; the worker's evidence says which
images are the prior's.

A finding may carry a ``box`` (the schema's optional region, fractions 0..1 of
the one image it cites): kept only when it is four numbers in 0..1 with
x0 < x1 and y0 < y1 and the finding cites exactly one image, else dropped and
noted; a model that gives pixels or another scale gets no region, never a
wrong one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from models.draft_schema import LATERALITIES, MAX_CERTAINTY_WORDS, URGENCIES

#: Limits that keep a runaway or hostile output from bloating a report.
MAX_REGION_CHARS = 64
MAX_CERTAINTY_CHARS = 32
MAX_FINDINGS = 50
MAX_FINDING_CHARS = 2000
MAX_SECTION_CHARS = 4000
MAX_RAW_CHARS = 20000

#: Shown with every draft: what it is, and that nobody has verified it.
AI_DRAFT_NOTICE = "AI-generated draft, not verified by a radiologist."

# The models side's one cleaner removes what integration.findings.clean_text removes (models may not import it):
# C0 controls but TAB, LF and CR; DEL and C1 controls; lone surrogates; the non-characters U+FFFE/U+FFFF.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_SECTION = re.compile(
    r"^\s*(?:#+\s*|\*\*)?(findings|impression|conclusion|limitations?|comparisons?)\s*(?:\*\*)?\s*:?\s*(?:\*\*)?\s*(.*)$",
    re.I,
)
#: A comparison heading needs its colon (or a line to itself): "Comparison with the prior ..." is a sentence.
_COMPARISON_HEADING = re.compile(r"^\s*(?:#+\s*|\*\*)?comparisons?\s*(?:\*\*)?\s*(?::|$)", re.I)
_IMAGE_REF = re.compile(r"\[?\(?\b(?:images?|img|slices?)\s*#?\s*((?:\d+\s*(?:,|and|&|-|to)?\s*)+)\)?\]?", re.I)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


@dataclass(frozen=True)
class Finding:
    """One finding and the images (1-based, as numbered in the prompt) it rests on.

    The schema's other fields (:data:`models.draft_schema.DRAFT_SCHEMA`) are None or empty when the model did
    not give them (free output, old drafts): ``laterality`` (one of ``LATERALITIES``), ``region`` (body
    region, cleaned one line), ``certainty`` (the certainty words the model used), ``urgency`` (one of
    ``URGENCIES``), ``confidence`` (a score in 0..1 from the token log-probabilities of the finding's text,
    see :mod:`models.confidence`; not a probability of being right) and ``box`` (the region on its one cited
    image, ``(x0, y0, x1, y1)`` as fractions of that image as the model saw it).
    """

    text: str
    images: tuple[int, ...] = ()
    laterality: str | None = None
    region: str | None = None
    certainty: tuple[str, ...] = ()
    urgency: str | None = None
    confidence: float | None = None
    box: tuple[float, float, float, float] | None = None

    def as_json(self) -> dict[str, Any]:
        """The finding as stored: ``text`` and ``images``, and each schema field that is set."""
        entry: dict[str, Any] = {"text": self.text, "images": list(self.images)}
        if self.laterality is not None:
            entry["laterality"] = self.laterality
        if self.region is not None:
            entry["region"] = self.region
        if self.certainty:
            entry["certainty"] = list(self.certainty)
        if self.urgency is not None:
            entry["urgency"] = self.urgency
        if self.confidence is not None:
            entry["confidence"] = round(self.confidence, 4)
        if self.box is not None:
            entry["box"] = list(self.box)
        return entry


@dataclass(frozen=True)
class ParsedDraft:
    """A draft as parsed from model output.

    Attributes
    ----------
    findings : tuple of Finding
        The findings, in the model's order.
    impression : str
        The impression ('' when none was given).
    limitations : str
        Limitations ('' when none were given).
    structured : bool
        False when the output could not be structured; then the whole text is one finding.
    problems : tuple of str
        What the parser had to repair or drop (shown to the reviewer, stored with the draft).
    raw_text : str
        The output as received (control characters removed, length capped).
    comparison : str
        The comparison with the prior studies ('' when none was given), at most :data:`MAX_SECTION_CHARS`.
    """

    findings: tuple[Finding, ...]
    impression: str
    limitations: str
    structured: bool
    problems: tuple[str, ...] = field(default=())
    raw_text: str = ""
    comparison: str = ""

    def as_json(self) -> dict[str, Any]:
        """Return the JSON document stored with the report (``comparison`` included; the worker adds the priors)."""
        return {
            "findings": [f.as_json() for f in self.findings],
            "impression": self.impression,
            "limitations": self.limitations,
            "structured": self.structured,
            "problems": list(self.problems),
            "comparison": self.comparison,
        }

    def as_text(self, prior_note: str = "") -> str:
        """Return the plain-text report, headed by the AI-draft notice.

        The layout of :meth:`integration.findings.Document.as_text`: a ``COMPARISON:`` line with the
        comparison, else ``prior_note`` (why no prior was given), left out when both are empty.
        """
        lines = [AI_DRAFT_NOTICE, ""]
        if comparison := self.comparison or clean(prior_note, MAX_SECTION_CHARS):
            lines += [f"COMPARISON: {comparison}", ""]
        lines.append("FINDINGS:")
        for finding in self.findings:
            refs = f" [images {', '.join(map(str, finding.images))}]" if finding.images else ""
            lines.append(f"- {finding.text}{refs}")
        if self.impression:
            lines += ["", "IMPRESSION:", self.impression]
        if self.limitations:
            lines += ["", "LIMITATIONS:", self.limitations]
        return "\n".join(lines)


#: What a parser gives: findings, impression, limitations, comparison.
_Parts = tuple[tuple[Finding, ...], str, str, str]


def parse_draft(text: str, n_images: int) -> ParsedDraft:
    """Parse model output into a draft; never raises.

    Image references outside 1..``n_images`` (the images the model was shown) are dropped. Output that
    cannot be structured becomes one flagged free-text finding.
    """
    raw = clean(text, MAX_RAW_CHARS)
    problems: list[str] = []
    document = _json_object(raw)
    if document is not None:
        draft = _from_json(document, n_images, problems)
        if draft is not None:
            return _structured(draft, problems, raw)
        problems.append("JSON without findings; read as sections")
    sections = _from_sections(raw, n_images, problems)
    if sections is not None:
        return _structured(sections, problems, raw)
    problems.append("output not structured; kept as free text")
    body = clean(raw, MAX_SECTION_CHARS)
    findings = (Finding(body),) if body else ()
    return ParsedDraft(findings, "", "", structured=False, problems=tuple(problems), raw_text=raw)


def _structured(parts: _Parts, problems: list[str], raw: str) -> ParsedDraft:
    findings, impression, limitations, comparison = parts
    return ParsedDraft(findings, impression, limitations, True, tuple(problems), raw, comparison)


def clean(text: Any, limit: int, *, one_line: bool = False) -> str:
    """Return untrusted ``text`` as a string without control characters, whitespace-trimmed and capped.

    Parameters
    ----------
    text : Any
        Model output, a referrer's question, a server's message; other values become their ``str``.
    limit : int
        Most characters kept; a longer text is cut and ends with an ellipsis.
    one_line : bool
        Turn every run of white space and control characters into one space (for a prompt or a log line).

    Returns
    -------
    str
        The text; the characters removed are those :func:`integration.findings.clean_text` removes.
    """
    value = " ".join(_CONTROL.sub(" ", str(text)).split()) if one_line else _CONTROL.sub("", str(text)).strip()
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "\u2026"


def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in the text (bare, fenced or embedded in prose)."""
    decoder = json.JSONDecoder(strict=False)  # a grammar engine lets TAB and other controls into strings
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _pick(document: dict[str, Any], *names: str) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in document.items()}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _from_json(document: dict[str, Any], n_images: int, problems: list[str]) -> _Parts | None:
    items = _pick(document, "findings", "finding", "observations")
    if isinstance(items, str | dict):
        items = [items]
    if not isinstance(items, list):
        return None
    findings = []
    for item in items:
        if isinstance(item, dict):
            text = clean(_pick(item, "text", "finding", "description", "observation") or "", MAX_FINDING_CHARS)
            refs = _pick(item, "images", "image", "image_indices", "image_index", "slices")
            images = _image_numbers(refs, n_images, problems)
            if text:
                box = _box(_pick(item, "box", "bbox", "bounding_box"), images, problems)
                findings.append(Finding(text, images, **_schema_fields(item, problems), box=box))
            continue
        text = clean(item, MAX_FINDING_CHARS)
        if text:
            findings.append(Finding(text, _refs_in_text(text, n_images, problems)))
    impression = clean(_section_value(_pick(document, "impression", "conclusion", "summary")), MAX_SECTION_CHARS)
    limitations = clean(_section_value(_pick(document, "limitations", "limitation")), MAX_SECTION_CHARS)
    comparison = clean(_section_value(_pick(document, *_COMPARISON_KEYS)), MAX_SECTION_CHARS)
    if not findings and not impression:
        return None
    return _capped(findings, problems), impression, limitations, comparison


def _schema_fields(item: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A JSON finding's schema fields (laterality, region, certainty, urgency), each None or () when not usable."""
    return {
        "laterality": _category(_pick(item, "laterality", "side"), LATERALITIES, "laterality", problems),
        "region": clean(_text_value(_pick(item, "body_region", "region", "body_part")), MAX_REGION_CHARS, one_line=True)
        or None,
        "certainty": _certainty(_pick(item, "certainty", "certainty_words", "hedges")),
        "urgency": _category(_pick(item, "urgency", "priority"), URGENCIES, "urgency", problems),
    }


def _box(value: Any, images: tuple[int, ...], problems: list[str]) -> tuple[float, float, float, float] | None:
    """A finding's region: four numbers in 0..1, x0 < x1 and y0 < y1, on exactly one cited image; else None."""
    if value is None:
        return None
    numbers = value if isinstance(value, list | tuple) and len(value) == 4 else ()
    if not all(type(n) in (int, float) and math.isfinite(n) and 0 <= n <= 1 for n in numbers) or not numbers:
        problems.append("a box that is not four fractions 0 to 1 was dropped")
        return None
    x0, y0, x1, y1 = (round(float(n), 4) for n in numbers)
    if not (x0 < x1 and y0 < y1):
        problems.append("a box without x0 < x1 and y0 < y1 was dropped")
        return None
    if len(images) != 1:
        problems.append("a box on a finding that does not cite exactly one image was dropped")
        return None
    return (x0, y0, x1, y1)


def _text_value(value: Any) -> str:
    """A scalar as text ('' for None, containers and booleans: a model's odd value is not a field)."""
    return "" if value is None or isinstance(value, dict | list | tuple | bool) else str(value)


def _category(value: Any, allowed: tuple[str, ...], name: str, problems: list[str]) -> str | None:
    word = clean(_text_value(value), 32, one_line=True).lower()
    if not word:
        return None
    if word in allowed:
        return word
    problems.append(f"a {name} outside {', '.join(allowed)} was dropped")
    return None


def _certainty(value: Any) -> tuple[str, ...]:
    """The certainty words: a list of short strings (or one string), cleaned, unique, at most a few."""
    items = value if isinstance(value, list | tuple) else [value]
    words: list[str] = []
    for item in items:
        word = clean(_text_value(item), MAX_CERTAINTY_CHARS, one_line=True)
        if word and word not in words:
            words.append(word)
    return tuple(words[:MAX_CERTAINTY_WORDS])


#: JSON keys read as the comparison (the prompt asks for ``comparison``).
_COMPARISON_KEYS = ("comparison", "comparisons", "comparison_with_prior", "prior_comparison", "interval_change")


def _section_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        value = _pick(value, "text", "statement", "comparison", "description") or ""
    if isinstance(value, list):
        return " ".join(_section_value(v) for v in value)
    return str(value)


def _from_sections(text: str, n_images: int, problems: list[str]) -> _Parts | None:
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = _SECTION.match(line)
        if match and match.group(1).lower().startswith("comparison") and not _COMPARISON_HEADING.match(line):
            match = None
        if match:
            name = match.group(1).lower()
            current = _SECTION_NAMES.get(name, name)
            sections.setdefault(current, [])
            rest = match.group(2).strip(" *")
            if rest:
                sections[current].append(rest)
        elif current is not None and line.strip():
            sections[current].append(line)
    if "findings" not in sections and "impression" not in sections:
        return None
    findings = []
    for line in sections.get("findings", []):
        text_line = clean(_BULLET.sub("", line), MAX_FINDING_CHARS)
        if text_line:
            findings.append(Finding(text_line, _refs_in_text(text_line, n_images, problems)))
    impression = clean(" ".join(s.strip() for s in sections.get("impression", [])), MAX_SECTION_CHARS)
    limitations = clean(" ".join(s.strip() for s in sections.get("limitations", [])), MAX_SECTION_CHARS)
    comparison = clean(" ".join(s.strip() for s in sections.get("comparison", [])), MAX_SECTION_CHARS)
    return _capped(findings, problems), impression, limitations, comparison


#: Section headings read as another: ``Conclusion:`` is the impression.
_SECTION_NAMES = {"conclusion": "impression", "limitation": "limitations", "comparisons": "comparison"}


def _capped(findings: list[Finding], problems: list[str]) -> tuple[Finding, ...]:
    if len(findings) > MAX_FINDINGS:
        problems.append(f"{len(findings) - MAX_FINDINGS} findings beyond {MAX_FINDINGS} dropped")
    return tuple(findings[:MAX_FINDINGS])


def _refs_in_text(text: str, n_images: int, problems: list[str]) -> tuple[int, ...]:
    numbers: list[int] = []
    for match in _IMAGE_REF.finditer(text):
        numbers.extend(_expand(match.group(1)))
    return _image_numbers(numbers, n_images, problems)


def _expand(spec: str) -> list[int]:
    numbers: list[int] = []
    for part in re.split(r"\s*(?:,|and|&)\s*", spec.strip()):
        bounds = re.split(r"\s*(?:-|to)\s*", part)
        digits = [b for b in bounds if b.isdigit()]
        if len(digits) == 2 and int(digits[0]) <= int(digits[1]) and int(digits[1]) - int(digits[0]) < 100:
            numbers.extend(range(int(digits[0]), int(digits[1]) + 1))
        else:
            numbers.extend(int(d) for d in digits)
    return numbers


def _image_numbers(value: Any, n_images: int, problems: list[str]) -> tuple[int, ...]:
    """Image references as sorted unique ints within 1..n_images; others dropped and noted."""
    candidates: Iterable[Any]
    if value is None:
        return ()
    if isinstance(value, str):
        candidates = _expand(re.sub(r"(?i)images?|img|slices?|#", "", value))
    elif isinstance(value, list | tuple):
        candidates = value
    else:
        candidates = [value]
    numbers: set[int] = set()
    for candidate in candidates:
        try:
            number = int(candidate)
        except (TypeError, ValueError):
            problems.append("a non-numeric image reference was dropped")
            continue
        if 1 <= number <= n_images:
            numbers.add(number)
        else:
            problems.append(f"image reference {number} outside 1..{n_images} dropped")
    return tuple(sorted(numbers))
