"""Agreement of two drafts: one-to-one matching of findings, score and impression similarity."""

from __future__ import annotations

import itertools
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from integration.reports.agreement import (
    MATCH_THRESHOLD,
    _min_cost_assignment,
    compare_drafts,
    compare_texts,
    finding_texts,
    normalise,
    similarity,
)

WORDS = ["no", "small", "right", "left", "lower", "lobe", "pleural", "effusion", "consolidation", "heart", "normal"]
finding_text = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=0, max_size=5).map(" ".join),
    st.text(max_size=30),
)
drafts = st.builds(
    lambda texts, impression: {"findings": [{"text": t, "images": [1]} for t in texts], "impression": impression},
    st.lists(finding_text, max_size=7),
    finding_text,
)


def draft(*texts: str, impression: str = "") -> dict[str, Any]:
    return {"findings": [{"text": t, "images": []} for t in texts], "impression": impression}


def test_reworded_findings_match_and_negations_do_not() -> None:
    a = draft("Right lower lobe consolidation.", "No pleural effusion", "Heart size normal", impression="Pneumonia.")
    b = draft("small pleural effusion", "consolidation in the RIGHT lower lobe", "normal heart size")
    result = compare_drafts(a, b)
    assert [(m.a, m.b) for m in result.matched] == [(0, 1), (2, 2)]
    assert result.only_a == (1,) and result.only_b == (0,)
    assert result.score == 2 * 2 / 6
    assert result.matched[1].similarity == 1.0 and MATCH_THRESHOLD <= result.matched[0].similarity < 1.0
    assert result.impression_similarity == 0.0  # only one impression
    body = result.as_json(finding_texts(a), finding_texts(b))
    assert body["matched"][0]["a_text"] == "Right lower lobe consolidation."
    assert body["only_b"] == [{"index": 0, "text": "small pleural effusion"}]


def test_the_matching_is_optimal_not_greedy() -> None:
    # Greedy would pair the identical texts first and leave the other two apart (0.69 < threshold);
    # the optimal assignment pairs across (0.91 and 0.74) and so keeps both findings matched.
    a = ["left lower lobe consolidation", "left lower lobe consolidation and air bronchogram"]
    b = ["left lower lobe consolidation", "left lower lobe consolidations seen"]
    assert similarity(a[1], b[1]) < MATCH_THRESHOLD <= similarity(a[1], b[0])
    matched, only_a, only_b = compare_texts(a, b)
    assert [(m.a, m.b) for m in matched] == [(0, 1), (1, 0)] and only_a == only_b == ()


def test_empty_drafts_agree_and_malformed_json_is_tolerated() -> None:
    assert compare_drafts(None, {}).score == 1.0
    assert compare_drafts(draft(), draft("effusion")).score == 0.0
    assert finding_texts({"findings": "not a list"}) == []
    # as the review working copy reads a draft: entries without a text string are left out, text is cleaned
    assert finding_texts({"findings": [{"images": [1]}, "loose text", {"text": " kept\x00 "}]}) == ["kept"]
    assert compare_drafts({"impression": 5}, {"impression": ""}).impression_similarity == 1.0


def test_normalise_and_similarity() -> None:
    assert normalise("  Right-Lower\tLOBE, consolidation!! ") == "right lower lobe consolidation"
    assert similarity("heart size normal", "Normal heart size.") == 1.0
    assert similarity("", "") == 1.0 and similarity("x", "") == 0.0


def test_assignment_is_the_true_minimum() -> None:
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(1, 6)
        cost = [[rng.randint(-9, 0) for _ in range(n)] for _ in range(n)]
        best = min(sum(cost[i][p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
        assignment = _min_cost_assignment(cost)
        assert sorted(assignment) == sorted(assignment.values()) == list(range(n))
        assert sum(cost[i][j] for i, j in assignment.items()) == best


@settings(max_examples=300, deadline=None)
@given(drafts, drafts)
def test_agreement_is_symmetric_and_bounded(a: dict[str, Any], b: dict[str, Any]) -> None:
    forward, backward = compare_drafts(a, b), compare_drafts(b, a)
    assert forward.score == backward.score
    assert len(forward.matched) == len(backward.matched)
    assert forward.impression_similarity == backward.impression_similarity
    assert 0.0 <= forward.score <= 1.0 and 0.0 <= forward.impression_similarity <= 1.0
    assert all(MATCH_THRESHOLD <= m.similarity <= 1.0 for m in forward.matched)
    assert len(forward.matched) + len(forward.only_a) == len(finding_texts(a))  # the findings with text
    assert len(forward.matched) + len(forward.only_b) == len(finding_texts(b))
    assert len({m.a for m in forward.matched}) == len({m.b for m in forward.matched}) == len(forward.matched)


@settings(max_examples=200, deadline=None)
@given(drafts)
def test_a_draft_agrees_fully_with_itself(a: dict[str, Any]) -> None:
    result = compare_drafts(a, a)
    assert result.score == 1.0 and result.impression_similarity == 1.0
    assert result.only_a == result.only_b == ()
