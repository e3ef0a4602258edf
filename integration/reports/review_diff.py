"""What a radiologist changed between a model's draft and the signed report (pure functions, no database).

The difference counts the draft's findings that were signed as they were (*accepted*), signed with other
text (*edited*) or left out (*rejected*), and the findings the radiologist *added*; and it measures how
far the report's text moved: the Levenshtein distance between the draft's and the signed *content text*
(the findings, one a line, then the impression), and ``1 - distance / longer length`` as a similarity.

Which signed finding a draft finding became is given by the caller when known (the review app knows it:
see :func:`integration.store.reviews.decisions_as_matches`); otherwise it is inferred: identical text
first, then the most similar remaining signed finding, when at least :data:`MATCH_SIMILARITY` alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rapidfuzz.distance import Levenshtein

from integration.findings import Document

#: Least normalised similarity for an inferred match of a draft finding to a signed one.
MATCH_SIMILARITY = 0.5


@dataclass(frozen=True)
class ReviewDifference:
    """How a signed report differs from its draft.

    Attributes
    ----------
    draft_findings : int
        Findings in the draft.
    accepted, edited, rejected : int
        Draft findings signed unchanged, signed with other text, left out.
    added : int
        Signed findings that are not in the draft.
    edit_distance : int
        Levenshtein distance between the draft's and the signed content text (characters).
    text_similarity : float
        ``1 - edit_distance / max(len(draft text), len(signed text))``; 1.0 when both are empty.
    detail : dict
        ``findings``: per draft finding ``{"index", "outcome", "signed" (index or None), "distance"}``;
        ``added``: ``[{"signed": index, "text": ...}]``; ``impression_changed``, ``limitations_changed``,
        ``comparison_changed``.
    """

    draft_findings: int
    accepted: int
    edited: int
    rejected: int
    added: int
    edit_distance: int
    text_similarity: float
    detail: dict[str, Any]


def finding_texts(document: object) -> list[str]:
    """Return the texts of a stored findings document's findings, as :meth:`Document.read` reads them."""
    return [finding.text for finding in Document.read(document).findings]


def content_text(document: object) -> str:
    """Return the text the edit distance is measured on: the findings, one a line, then the impression."""
    read = Document.read(document)
    return "\n".join([finding.text for finding in read.findings] + ([read.impression] if read.impression else []))


def infer_matches(draft: Sequence[str], signed: Sequence[str]) -> list[int | None]:
    """Pair draft findings with signed findings by their text.

    Identical texts pair first (in order); each remaining draft finding then takes the most similar
    remaining signed finding when the normalised Levenshtein similarity is at least
    :data:`MATCH_SIMILARITY` (ties: the earlier signed finding).

    Parameters
    ----------
    draft, signed : sequence of str
        The texts.

    Returns
    -------
    list of int or None
        Per draft finding, the index of its signed finding, or None (rejected).
    """
    matches: list[int | None] = [None] * len(draft)
    free = list(range(len(signed)))
    for index, body in enumerate(draft):
        same = next((j for j in free if signed[j] == body), None)
        if same is not None:
            matches[index] = same
            free.remove(same)
    for index, body in enumerate(draft):
        if matches[index] is not None or not free:
            continue
        best = max(free, key=lambda j: (Levenshtein.normalized_similarity(body, signed[j]), -j))
        if Levenshtein.normalized_similarity(body, signed[best]) >= MATCH_SIMILARITY:
            matches[index] = best
            free.remove(best)
    return matches


def review_difference(
    draft: object, signed: object, *, matches: Sequence[int | None] | None = None
) -> ReviewDifference:
    """Compare a draft with what was signed.

    Parameters
    ----------
    draft, signed : Document or mapping
        Findings documents, or stored JSON read by :meth:`Document.read`; for a rejected draft pass an
        empty signed document (every draft finding counts as rejected).
    matches : sequence of int or None, optional
        Per draft finding (as listed by :func:`finding_texts`), the index of the signed finding it became,
        or None when it was left out; inferred from the texts (:func:`infer_matches`) when not given.

    Returns
    -------
    ReviewDifference
        The counts, the distance and the per-finding detail.

    Raises
    ------
    ValueError
        ``matches`` of the wrong length, naming a signed finding that does not exist, or one twice.
    """
    old_document, new_document = Document.read(draft), Document.read(signed)
    before, after = finding_texts(old_document), finding_texts(new_document)
    pairs = infer_matches(before, after) if matches is None else list(matches)
    used = [j for j in pairs if j is not None]
    if len(pairs) != len(before) or len(set(used)) != len(used) or any(not 0 <= j < len(after) for j in used):
        raise ValueError("matches must name a distinct signed finding (or None) for each draft finding")
    per_finding = []
    counts = {"accepted": 0, "edited": 0, "rejected": 0}
    for index, (body, j) in enumerate(zip(before, pairs, strict=True)):
        if j is None:
            outcome, distance = "rejected", len(body)
        else:
            distance = Levenshtein.distance(body, after[j])
            outcome = "accepted" if distance == 0 else "edited"
        counts[outcome] += 1
        per_finding.append({"index": index, "outcome": outcome, "signed": j, "distance": distance})
    added = [{"signed": j, "text": after[j]} for j in range(len(after)) if j not in set(used)]
    old, new = content_text(old_document), content_text(new_document)
    distance = Levenshtein.distance(old, new)
    longest = max(len(old), len(new))
    return ReviewDifference(
        draft_findings=len(before),
        accepted=counts["accepted"],
        edited=counts["edited"],
        rejected=counts["rejected"],
        added=len(added),
        edit_distance=distance,
        text_similarity=1.0 - distance / longest if longest else 1.0,
        detail={
            "findings": per_finding,
            "added": added,
            "impression_changed": old_document.impression != new_document.impression,
            "limitations_changed": old_document.limitations != new_document.limitations,
            "comparison_changed": old_document.comparison != new_document.comparison,
        },
    )
