"""Scores of model answers against references: pure functions on text.

Normalisation (:func:`normalise_answer`): Unicode NFKC, case folded, every run of punctuation or
white space turned into one space, the articles *a*, *an*, *the* dropped.

- Closed-ended accuracy (:func:`closed_correct`): a yes/no answer is right when the first *yes* or
  *no* in the prediction is the answer ("Yes, there is an effusion." is right for "yes"); any other
  closed answer (a choice such as "left" or "MRI") is right when the normalised prediction, or its
  first clause (text before the first ``.``, ``,``, ``;``, ``:`` or line break), equals the
  normalised answer.
- Open-ended recall (:func:`open_recall`): the fraction of the reference answer's tokens found in the
  prediction, counts clipped (a token said once in the prediction covers one occurrence in the
  reference).  This is the "recall" of LLaVA-Med's VQA evaluation (``tp / (tp + fn)`` over words).
- ROUGE-L (:func:`rouge_l`): longest common subsequence of the token lists; precision
  ``LCS / len(candidate)``, recall ``LCS / len(reference)``, F-measure ``2PR / (P + R)`` (the
  ``fmeasure`` of the ``rouge-score`` package, whose tokeniser also keeps lower-case letters and digits).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Words dropped by :func:`normalise_answer`.
ARTICLES = frozenset({"a", "an", "the"})
#: Answers scored by their first yes/no word.
YES_NO = frozenset({"yes", "no"})

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)
_CLAUSE_END = re.compile(r"[.,;:\n]")


def tokens(text: str) -> list[str]:
    """Return a text's tokens, in order: NFKC, case folded, split on punctuation and white space (articles kept)."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split()


def normalise_answer(text: str) -> str:
    """Return an answer as compared: tokens joined by single spaces, articles dropped ('' when nothing is left)."""
    return " ".join(token for token in tokens(text) if token not in ARTICLES)


def closed_correct(prediction: str, answer: str) -> bool:
    """Whether a prediction (untrusted text) answers a closed-ended question right (see the module's rules)."""
    expected = normalise_answer(answer)
    if not expected:
        return False
    if expected in YES_NO:
        said = next((token for token in normalise_answer(prediction).split() if token in YES_NO), None)
        return said == expected
    first_clause = _CLAUSE_END.split(prediction, maxsplit=1)[0]
    return expected in {normalise_answer(prediction), normalise_answer(first_clause)}


def open_recall(prediction: str, answer: str) -> float:
    """Return the fraction of the reference answer's tokens present in the prediction (0..1).

    ``sum(min(count in reference, count in prediction)) / tokens in reference``; 0.0 when the
    reference has no tokens.
    """
    reference = Counter(normalise_answer(answer).split())
    total = sum(reference.values())
    if total == 0:
        return 0.0
    predicted = Counter(normalise_answer(prediction).split())
    found = sum(min(count, predicted[token]) for token, count in reference.items())
    return found / total


@dataclass(frozen=True)
class RougeL:
    """ROUGE-L of a candidate against a reference.

    Attributes
    ----------
    precision, recall, fmeasure : float
        ``LCS / len(candidate)``, ``LCS / len(reference)`` and their harmonic mean (0..1).
    """

    precision: float
    recall: float
    fmeasure: float


def longest_common_subsequence(a: Sequence[str], b: Sequence[str]) -> int:
    """Return the LCS length of two token lists (dynamic programming, O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> RougeL:
    """Return ROUGE-L (sentence level, LCS over the whole text) of a candidate against a reference.

    All 0.0 when either text has no tokens.
    """
    cand, ref = tokens(candidate), tokens(reference)
    lcs = longest_common_subsequence(cand, ref)
    if lcs == 0:
        return RougeL(0.0, 0.0, 0.0)
    precision, recall = lcs / len(cand), lcs / len(ref)
    return RougeL(precision, recall, 2 * precision * recall / (precision + recall))


def mean(values: Iterable[float]) -> float | None:
    """Return the arithmetic mean of some scores, or None when there are none."""
    collected = list(values)
    return sum(collected) / len(collected) if collected else None
