"""The draft-versus-signed difference on small, hand-computed examples."""

from __future__ import annotations

from typing import Any

import pytest

from integration.reports.review_diff import content_text, infer_matches, review_difference
from integration.store.reviews import WorkingCopy, WorkingFinding, decisions_as_matches


def document(*findings: str, impression: str = "", limitations: str = "") -> dict[str, Any]:
    return {
        "findings": [{"text": text, "images": [1]} for text in findings],
        "impression": impression,
        "limitations": limitations,
    }


def test_accepted_edited_and_added_findings_and_the_edit_distance() -> None:
    draft = document("abc", "hello", impression="ok")
    signed = document("abc", "hallo", "new", impression="ok")
    # "abc\nhello\nok" (12 characters) -> "abc\nhallo\nnew\nok" (16): e->a, insert "new\n": distance 5.
    difference = review_difference(draft, signed)
    assert (difference.draft_findings, difference.accepted, difference.edited) == (2, 1, 1)
    assert (difference.rejected, difference.added) == (0, 1)
    assert difference.edit_distance == 5 and difference.text_similarity == pytest.approx(1 - 5 / 16)
    assert difference.detail == {
        "findings": [
            {"index": 0, "outcome": "accepted", "signed": 0, "distance": 0},
            {"index": 1, "outcome": "edited", "signed": 1, "distance": 1},
        ],
        "added": [{"signed": 2, "text": "new"}],
        "impression_changed": False,
        "limitations_changed": False,
        "comparison_changed": False,
    }


def test_a_rejected_draft_compared_with_nothing() -> None:
    difference = review_difference(document("abc", "hello", impression="ok"), {"findings": []})
    assert (difference.accepted, difference.edited, difference.rejected, difference.added) == (0, 0, 2, 0)
    assert difference.edit_distance == 12 and difference.text_similarity == 0.0  # every character of "abc\nhello\nok"
    assert [f["distance"] for f in difference.detail["findings"]] == [3, 5]
    assert difference.detail["impression_changed"] is True


def test_given_matches_override_the_texts() -> None:
    draft, signed = document("a b", "c d"), document("c d")
    difference = review_difference(draft, signed, matches=[None, 0])
    # "a b\nc d" (7) -> "c d" (3): delete "a b\n": distance 4.
    assert (difference.accepted, difference.rejected, difference.added) == (1, 1, 0)
    assert difference.edit_distance == 4 and difference.text_similarity == pytest.approx(1 - 4 / 7)
    forced = review_difference(draft, signed, matches=[0, None])  # the first edited into "c d": a->c, b->d
    assert (forced.accepted, forced.edited, forced.rejected) == (0, 1, 1)
    assert forced.detail["findings"][0] == {"index": 0, "outcome": "edited", "signed": 0, "distance": 2}


def test_inferred_matches_pair_identical_then_similar_text_only() -> None:
    assert infer_matches(["x", "x"], ["x"]) == [0, None]
    assert infer_matches(["Nodule"], ["Effusion present"]) == [None]  # too different: rejected plus added
    assert infer_matches(["b", "left effusion", "a"], ["a", "b", "small left effusion"]) == [1, 2, 0]
    difference = review_difference(document("Nodule"), document("Effusion present"))
    assert (difference.rejected, difference.added, difference.accepted, difference.edited) == (1, 1, 0, 0)


def test_the_content_text_and_empty_documents() -> None:
    assert content_text(document(" a ", "b", impression=" imp ", limitations="lim")) == "a\nb\nimp"
    assert content_text({"findings": [{"images": [1]}, "junk", {"text": "  "}]}) == ""
    nothing = review_difference({}, {})
    assert (nothing.draft_findings, nothing.edit_distance, nothing.text_similarity) == (0, 0, 1.0)
    changed = review_difference(document("a", limitations="old"), document("a", limitations="new"))
    assert changed.detail["limitations_changed"] is True and changed.edit_distance == 0  # not in the content text
    compared = review_difference({**document("a"), "comparison": "Stable."}, {**document("a"), "comparison": ""})
    assert compared.detail["comparison_changed"] is True and compared.edit_distance == 0


@pytest.mark.parametrize("matches", [[0], [0, 0], [0, 5], [None, -1]])
def test_impossible_matches_are_refused(matches: list[int | None]) -> None:
    with pytest.raises(ValueError, match="distinct signed finding"):
        review_difference(document("a", "b"), document("a", "b"), matches=matches)


def test_a_working_copys_decisions_become_the_matches() -> None:
    findings = (
        WorkingFinding(0, "kept", "kept", (1,), "pending"),
        WorkingFinding(1, "gone", "gone", (), "rejected"),
        WorkingFinding(2, "changed text", "text", (2,), "edited"),
        WorkingFinding(3, "new", None, (), "added"),
        WorkingFinding(4, "removed", None, (), "rejected"),
        WorkingFinding(5, "accepted", "accepted", (), "accepted"),
    )
    copy = WorkingCopy(1, "draft", 7, findings, "imp", "", "imp", "")
    assert decisions_as_matches(copy) == [0, None, 1, 3]
    signed = {"findings": copy.signed_findings, "impression": "imp"}
    assert [f["text"] for f in signed["findings"]] == ["kept", "changed text", "new", "accepted"]
    draft = document("kept", "gone", "text", "accepted", impression="imp")
    difference = review_difference(draft, signed, matches=decisions_as_matches(copy))
    assert (difference.accepted, difference.edited, difference.rejected, difference.added) == (2, 1, 1, 1)
