"""A per-finding confidence score from the token log-probabilities of the model's answer.

Each finding's text is found in the raw answer (as the model wrote it: JSON-escaped inside a JSON answer,
plain in a sectioned one), the generated tokens that overlap that span are taken, and the score is the
geometric mean of their probabilities, ``exp(mean log-probability)``: 1.0 when the model was sure of every
token of its wording, lower the more it hesitated.  It measures how sure the model was of *how it put the
finding*, not whether the finding is right; a hospital sees whether it means anything for its model from
the acceptance rate by score band (:mod:`integration.reports.confidence_bands`).

No score (None) when the backend gave no log-probabilities (a server without ``logprobs``) or the text
cannot be located in the answer (a finding the parser rebuilt, cut or repaired).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from models.backend import TokenLogprob
from models.draft import Finding

#: Stored with every draft that carries scores (``Document.confidence_method``) and shown with them.
CONFIDENCE_METHOD = (
    "geometric mean of the model's token probabilities over the finding's text (exp of the mean token "
    "log-probability); the model's confidence in its wording, not a probability of being right"
)
#: A capped text ends with this; the rest is searched without it.
_ELLIPSIS = "\u2026"


@dataclass(frozen=True)
class Span:
    """Characters ``start`` (inclusive) to ``end`` (exclusive) of a text.

    Raises
    ------
    ValueError
        From the constructor, when ``start`` is negative or ``end`` is before ``start``.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"a span runs from 0 <= start <= end, not {self.start}..{self.end}")

    def overlaps(self, other: Span) -> bool:
        """Whether the two spans share a character (an empty span counts at its position)."""
        if other.start == other.end:
            return self.start <= other.start < self.end
        return other.start < self.end and self.start < other.end


def _forms(text: str) -> list[str]:
    """The ways a finding's text may appear in the answer: JSON-escaped (as written, and ASCII-only), then plain."""
    text = text.removesuffix(_ELLIPSIS).rstrip()
    forms = [json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1], text]
    return [form for index, form in enumerate(forms) if form and form not in forms[:index]]


def locate(answer: str, text: str, start: int = 0) -> Span | None:
    """Where ``text`` is in ``answer``, first from ``start`` on, then anywhere; None when it is not.

    The JSON-escaped form is looked for first (a JSON answer), then the plain text (a sectioned answer).
    """
    for form in _forms(text):
        for origin in (start, 0) if start else (0,):
            found = answer.find(form, origin)
            if found != -1:
                return Span(found, found + len(form))
    return None


def _token_spans(token_logprobs: Sequence[TokenLogprob]) -> list[Span]:
    spans = []
    position = 0
    for token in token_logprobs:
        spans.append(Span(position, position + len(token.text)))
        position += len(token.text)
    return spans


def span_score(token_logprobs: Sequence[TokenLogprob], spans: Sequence[Span], span: Span) -> float | None:
    """``exp`` of the mean log-probability of the tokens overlapping ``span``; None when no token does."""
    values = [token.logprob for token, where in zip(token_logprobs, spans, strict=True) if span.overlaps(where)]
    if not values:
        return None
    return min(1.0, max(0.0, math.exp(math.fsum(values) / len(values))))


def finding_confidences(
    text: str, token_logprobs: Sequence[TokenLogprob], findings: Sequence[Finding]
) -> list[float | None]:
    """Score each finding by the model's token probabilities over its text (see :data:`CONFIDENCE_METHOD`).

    Parameters
    ----------
    text : str
        The answer as the backend returned it (``GenerationResult.text``, untrusted).
    token_logprobs : sequence of TokenLogprob
        The answer's tokens, their texts joining to ``text`` up to white space at the ends.
    findings : sequence of Finding
        The parsed findings, in the answer's order.

    Returns
    -------
    list of float or None
        One score in 0..1 per finding, in order; None where it cannot be told.
    """
    joined = "".join(token.text for token in token_logprobs)
    offset = joined.find(text) if text else -1
    if not token_logprobs or offset == -1:
        return [None] * len(findings)
    spans = _token_spans(token_logprobs)
    scores: list[float | None] = []
    cursor = 0
    for finding in findings:
        where = locate(text, finding.text, cursor)
        if where is None:
            scores.append(None)
            continue
        cursor = where.end
        scores.append(span_score(token_logprobs, spans, Span(where.start + offset, where.end + offset)))
    return scores
