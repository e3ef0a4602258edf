"""How far two drafts of one study agree: findings matched one to one, and the impressions compared.

Pure functions on findings documents (:class:`integration.findings.Document`, or stored JSON read by
:meth:`~integration.findings.Document.read`); no database.  Used to put a second opinion beside the first.

Method
------
Texts are normalised (Unicode NFKC, case folded, punctuation to spaces, white space collapsed) and
compared with rapidfuzz's ``token_sort_ratio`` (order-insensitive edit similarity, 0..1).  Two findings
may be paired only when their similarity reaches :data:`MATCH_THRESHOLD` *and* both or neither carry a
negation cue ("no pleural effusion" never pairs with "small pleural effusion").  Among the allowed
pairs, an optimal one-to-one assignment is taken (the Hungarian algorithm, exact, O(n³) on at most
:data:`MAX_COMPARED` findings a side): as many pairs as possible, and among those the greatest total
similarity.  So the number of pairs, and the score, do not depend on which draft is "A".

Score: ``2 * pairs / (findings of A + findings of B)``, 1.0 when neither draft has findings.  Impression
similarity: the same text similarity, 1.0 when both are empty, 0.0 when only one is.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz

from integration.findings import Document

#: Least similarity (0..1) at which two findings can be the same finding.
MATCH_THRESHOLD = 0.7
#: Findings a side that take part in the matching; later ones count as unmatched.
MAX_COMPARED = 100
#: Words that turn a finding into its negation.
NEGATION_CUES = frozenset({"no", "not", "without", "absent", "absence", "negative", "none", "nor", "free"})
#: Similarity is computed in integer steps of 1/SCALE (exact ties, exact sums).
SCALE = 10_000

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class MatchedFinding:
    """Two findings taken for the same one.

    Attributes
    ----------
    a, b : int
        0-based index of the finding in draft A and in draft B.
    similarity : float
        Text similarity, 0..1.
    """

    a: int
    b: int
    similarity: float


@dataclass(frozen=True)
class Agreement:
    """How two drafts agree.

    Attributes
    ----------
    matched : tuple of MatchedFinding
        Pairs, in the order of draft A's findings.
    only_a, only_b : tuple of int
        Indexes of the findings of one draft without a partner in the other.
    score : float
        ``2 * len(matched) / (nA + nB)``; 1.0 when neither draft has findings.
    impression_similarity : float
        Similarity of the impressions, 0..1.
    """

    matched: tuple[MatchedFinding, ...]
    only_a: tuple[int, ...]
    only_b: tuple[int, ...]
    score: float
    impression_similarity: float

    def as_json(self, a_texts: Sequence[str] = (), b_texts: Sequence[str] = ()) -> dict[str, Any]:
        """Return the agreement as JSON, with the findings' texts where given.

        Parameters
        ----------
        a_texts, b_texts : sequence of str
            The findings of the two drafts (as returned by :func:`finding_texts`).

        Returns
        -------
        dict
            ``score``, ``impression_similarity``, ``matched``, ``only_a``, ``only_b``, ``threshold``, ``method``.
        """

        def text(texts: Sequence[str], index: int) -> str | None:
            return texts[index] if index < len(texts) else None

        return {
            "score": round(self.score, 4),
            "impression_similarity": round(self.impression_similarity, 4),
            "matched": [
                {
                    "a": m.a,
                    "b": m.b,
                    "similarity": round(m.similarity, 4),
                    "a_text": text(a_texts, m.a),
                    "b_text": text(b_texts, m.b),
                }
                for m in self.matched
            ],
            "only_a": [{"index": i, "text": text(a_texts, i)} for i in self.only_a],
            "only_b": [{"index": i, "text": text(b_texts, i)} for i in self.only_b],
            "threshold": MATCH_THRESHOLD,
            "method": "token_sort_ratio, negation-aware, optimal one-to-one assignment",
        }


def normalise(text: str) -> str:
    """Return text as compared: NFKC, case folded, punctuation as spaces, white space collapsed.

    Parameters
    ----------
    text : str
        Any text.

    Returns
    -------
    str
        The normalised text.
    """
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def negated(normalised: str) -> bool:
    """Whether a normalised finding carries a negation cue (:data:`NEGATION_CUES`).

    Parameters
    ----------
    normalised : str
        Output of :func:`normalise`.

    Returns
    -------
    bool
        True for "no pleural effusion", False for "small pleural effusion".
    """
    return not NEGATION_CUES.isdisjoint(normalised.split())


def similarity(a: str, b: str) -> float:
    """Return the similarity of two texts, 0..1 (symmetric; 1.0 for two empty texts).

    Parameters
    ----------
    a, b : str
        The texts (normalised here).

    Returns
    -------
    float
        ``token_sort_ratio`` of the normalised texts, scaled to 0..1.
    """
    return _similarity_steps(normalise(a), normalise(b)) / SCALE


def _similarity_steps(a: str, b: str) -> int:
    if not a and not b:
        return SCALE
    if not a or not b:
        return 0
    return round(fuzz.token_sort_ratio(a, b) * SCALE / 100)


def finding_texts(findings: object) -> list[str]:
    """Return the texts of a draft's findings, in order, as :meth:`Document.read` reads stored JSON."""
    return [finding.text for finding in Document.read(findings).findings]


def compare_texts(
    a: Sequence[str], b: Sequence[str]
) -> tuple[tuple[MatchedFinding, ...], tuple[int, ...], tuple[int, ...]]:
    """Match two lists of findings one to one (see the module's Method).

    Parameters
    ----------
    a, b : sequence of str
        The findings of draft A and of draft B.

    Returns
    -------
    matched : tuple of MatchedFinding
        The pairs, by A's order.
    only_a, only_b : tuple of int
        The findings left without a partner.
    """
    left = [normalise(t) for t in a[:MAX_COMPARED]]
    right = [normalise(t) for t in b[:MAX_COMPARED]]
    size = max(len(left), len(right))
    bonus = (size + 1) * (SCALE + 1)  # one pair more always outweighs any sum of similarities
    steps: dict[tuple[int, int], int] = {}
    cost = [[0] * size for _ in range(size)]
    for i, x in enumerate(left):
        for j, y in enumerate(right):
            step = _similarity_steps(x, y)
            if step >= MATCH_THRESHOLD * SCALE and negated(x) == negated(y):
                steps[i, j] = step
                cost[i][j] = -(bonus + step)
    assignment = _min_cost_assignment(cost) if steps else {}
    matched = tuple(MatchedFinding(i, j, steps[i, j] / SCALE) for i, j in sorted(assignment.items()) if (i, j) in steps)
    paired_a = {m.a for m in matched}
    paired_b = {m.b for m in matched}
    return (
        matched,
        tuple(i for i in range(len(a)) if i not in paired_a),
        tuple(j for j in range(len(b)) if j not in paired_b),
    )


def compare_drafts(a: object, b: object) -> Agreement:
    """Compare two drafts' findings JSON.

    Parameters
    ----------
    a, b : Document, mapping or None
        The findings documents of two reports (stored JSON is read by :meth:`Document.read`).

    Returns
    -------
    Agreement
        Matched findings, the unmatched ones of each side, the score and the impression similarity.
    """
    first, second = Document.read(a), Document.read(b)
    a_texts, b_texts = finding_texts(first), finding_texts(second)
    matched, only_a, only_b = compare_texts(a_texts, b_texts)
    total = len(a_texts) + len(b_texts)
    score = 1.0 if total == 0 else 2 * len(matched) / total
    return Agreement(matched, only_a, only_b, score, similarity(first.impression, second.impression))


def _min_cost_assignment(cost: Sequence[Sequence[int]]) -> dict[int, int]:
    """Solve the square assignment problem exactly (Hungarian algorithm with potentials, O(n³)).

    Parameters
    ----------
    cost : sequence of sequence of int
        ``cost[row][column]``, square.

    Returns
    -------
    dict of int to int
        Column assigned to each row (0-based), minimising the total cost.
    """
    n = len(cost)
    infinity = float("inf")
    u = [0.0] * (n + 1)
    v = [0.0] * (n + 1)
    row_of = [0] * (n + 1)  # row_of[column], 1-based; 0: free
    way = [0] * (n + 1)
    for row in range(1, n + 1):
        row_of[0] = row
        column = 0
        least = [infinity] * (n + 1)
        used = [False] * (n + 1)
        while True:
            used[column] = True
            current_row = row_of[column]
            delta = infinity
            next_column = 0
            for j in range(1, n + 1):
                if used[j]:
                    continue
                reduced = cost[current_row - 1][j - 1] - u[current_row] - v[j]
                if reduced < least[j]:
                    least[j] = reduced
                    way[j] = column
                if least[j] < delta:
                    delta = least[j]
                    next_column = j
            for j in range(n + 1):
                if used[j]:
                    u[row_of[j]] += delta
                    v[j] -= delta
                else:
                    least[j] -= delta
            column = next_column
            if row_of[column] == 0:
                break
        while column:
            previous = way[column]
            row_of[column] = row_of[previous]
            column = previous
    return {row_of[j] - 1: j - 1 for j in range(1, n + 1) if row_of[j]}
