"""The one cleaner of untrusted text in ``integration``, and the error of a findings document that breaks its rules.

Model output, a referrer's question, a reviewer's edit, a free-text DICOM attribute: every text from outside
goes through :func:`clean_text` before it is stored, encoded (SR, FHIR, HL7) or shown.  It lives apart from
the findings document (:mod:`integration.findings`, which re-exports it) so that the document's values
(:mod:`integration.draft_checks`) can use it without an import cycle.
"""

from __future__ import annotations

import re
import unicodedata


class InvalidFindings(ValueError):
    """Findings or text that break the document's rules; the message says which and is safe to show."""


# C0 controls but TAB, LF and CR; DEL and C1 controls; lone surrogates; the non-characters U+FFFE/U+FFFF.
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_SEPARATORS = re.compile(r"[\u2028\u2029]")


def clean_text(value: object, limit: int | None = None, *, strip: bool = True, one_line: bool = False) -> str:
    """Return untrusted text without the characters that break a report's encodings.

    Parameters
    ----------
    value : object
        The text (model output, a reviewer's edit, a free-text DICOM attribute); other values are
        turned into their ``str``.
    limit : int, optional
        Most characters kept; a longer text is cut and ends with an ellipsis (``limit`` in all).
    strip : bool
        Trim white space at both ends.
    one_line : bool
        For a line of a prompt or a list: every control, format (bidi overrides, zero-width) and
        line or paragraph separator character becomes a space, and runs of white space become one.

    Returns
    -------
    str
        The text without C0 controls (but TAB, LF, CR), DEL, C1 controls, lone surrogates or the
        non-characters U+FFFE/U+FFFF; the line and paragraph separators U+2028/U+2029 become LF.
    """
    if one_line:
        text = " ".join("".join(" " if _breaks_line(char) else char for char in str(value)).split())
    else:
        text = _SEPARATORS.sub("\n", _UNSAFE.sub("", str(value)))
        text = text.strip() if strip else text
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "\u2026"


def _breaks_line(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp") or char in "\ufffe\uffff"


def is_clean(text: object, limit: int, *, required: bool) -> bool:
    """Whether ``text`` is a string :func:`clean_text` leaves as it is, within ``limit`` (not empty if required)."""
    return isinstance(text, str) and (bool(text) or not required) and clean_text(text, limit) == text


def is_line(text: object, limit: int) -> bool:
    """Whether ``text`` is one line of clean text, 1 to ``limit`` characters."""
    return is_clean(text, limit, required=True) and clean_text(text, one_line=True) == text
