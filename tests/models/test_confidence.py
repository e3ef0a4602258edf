"""Per-finding confidence: the finding's text located in the answer, the tokens over it, their geometric mean."""

from __future__ import annotations

import json
import math

import pytest

from models.backend import TokenLogprob
from models.confidence import CONFIDENCE_METHOD, Span, finding_confidences, locate, span_score
from models.draft import Finding, parse_draft


def tokens(*pieces: tuple[str, float]) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(text, logprob) for text, logprob in pieces)


def split_answer(answer: str, logprob_of: dict[str, float], size: int = 4) -> tuple[TokenLogprob, ...]:
    """Cut an answer in pieces of ``size`` characters; a piece inside a key phrase gets that phrase's logprob."""
    pieces = []
    for start in range(0, len(answer), size):
        piece = answer[start : start + size]
        value = next((v for phrase, v in logprob_of.items() if start >= answer.find(phrase) >= 0
                      and start < answer.find(phrase) + len(phrase)), -0.01)  # fmt: skip
        pieces.append((piece, value))
    return tokens(*pieces)


def test_the_method_is_named_and_never_claims_to_be_a_probability_of_being_right() -> None:
    assert "geometric mean" in CONFIDENCE_METHOD and "not a probability of being right" in CONFIDENCE_METHOD


def test_each_finding_scores_the_geometric_mean_of_its_own_tokens() -> None:
    answer = json.dumps({"findings": [{"text": "Left effusion."}, {"text": "Possible nodule."}], "impression": "x"})
    logprobs = split_answer(answer, {"Left effusion.": -0.05, "Possible nodule.": -1.2})
    parsed = parse_draft(answer, 1)

    first, second = finding_confidences(answer, logprobs, parsed.findings)

    assert first is not None and second is not None
    assert second < 0.5 < 0.9 < first <= 1.0  # the hesitant wording scores low, the sure one high
    where = locate(answer, "Possible nodule.")
    assert where is not None and answer[where.start : where.end] == "Possible nodule."


def test_the_score_is_exp_of_the_mean_logprob_of_the_overlapping_tokens() -> None:
    answer = 'A: "abc def" end'
    logprobs = tokens(("A: ", -3.0), ('"ab', -0.2), ("c d", -0.4), ('ef"', -0.6), (" end", -5.0))
    [score] = finding_confidences(answer, logprobs, [Finding("abc def")])
    assert score == pytest.approx(math.exp((-0.2 - 0.4 - 0.6) / 3))


def test_json_escaped_text_is_found_before_the_plain_form() -> None:
    text = 'He said "no" \\ twice\tthen stopped'
    answer = json.dumps({"findings": [{"text": text}]})
    logprobs = split_answer(answer, {json.dumps(text)[1:-1]: -0.3}, size=3)
    parsed = parse_draft(answer, 1)
    assert parsed.findings[0].text == text

    [score] = finding_confidences(answer, logprobs, parsed.findings)

    assert score == pytest.approx(math.exp(-0.3), rel=0.05)


def test_non_ascii_text_is_found_escaped_or_not() -> None:
    for ensure_ascii in (True, False):
        answer = json.dumps({"findings": [{"text": "Ödem, 5 µm"}]}, ensure_ascii=ensure_ascii)
        [score] = finding_confidences(answer, split_answer(answer, {}), parse_draft(answer, 1).findings)
        assert score == pytest.approx(math.exp(-0.01))


def test_repeated_findings_take_successive_places_and_sectioned_answers_are_read_plainly() -> None:
    answer = "FINDINGS:\n- Normal.\n- Normal.\nIMPRESSION: fine"
    logprobs = tokens(
        ("FINDINGS:\n- ", -2.0), ("Normal.", -0.1), ("\n- ", -2.0), ("Normal.", -0.7), ("\nIMPRESSION: fine", -3)
    )
    parsed = parse_draft(answer, 1)
    assert [finding.text for finding in parsed.findings] == ["Normal.", "Normal."]

    first, second = finding_confidences(answer, logprobs, parsed.findings)

    assert first == pytest.approx(math.exp(-0.1)) and second == pytest.approx(math.exp(-0.7))


def test_white_space_stripped_from_the_answer_keeps_the_token_positions() -> None:
    logprobs = tokens(("\n ", -4.0), ("Effusion", -0.5), (".", -0.5), ("\n", -4.0))
    [score] = finding_confidences("Effusion.", logprobs, [Finding("Effusion.")])
    assert score == pytest.approx(math.exp(-0.5))


def test_a_token_split_inside_a_character_counts_with_the_character() -> None:
    logprobs = tokens(("x ", -1.0), ("", -0.2), ("é", -0.4), (" y", -1.0))  # byte-level BPE: é in two tokens
    [score] = finding_confidences("x é y", logprobs, [Finding("é")])
    assert score == pytest.approx(math.exp(-0.3))


def test_no_score_without_logprobs_or_where_the_text_cannot_be_found() -> None:
    answer = '{"findings": [{"text": "Effusion."}]}'
    logprobs = split_answer(answer, {})
    assert finding_confidences(answer, (), [Finding("Effusion.")]) == [None]
    assert finding_confidences(answer, logprobs, [Finding("Something the parser made up.")]) == [None]
    assert finding_confidences("another answer", logprobs, [Finding("Effusion.")]) == [None]  # tokens of another text
    assert finding_confidences("", (), []) == []


def test_a_capped_finding_is_found_by_its_kept_beginning() -> None:
    long_text = "word " * 600
    answer = json.dumps({"findings": [{"text": long_text}]})
    parsed = parse_draft(answer, 1)
    assert parsed.findings[0].text.endswith("\u2026")
    [score] = finding_confidences(answer, split_answer(answer, {}), parsed.findings)
    assert score == pytest.approx(math.exp(-0.01))


def test_spans_validate_themselves_and_a_span_without_tokens_has_no_score() -> None:
    with pytest.raises(ValueError, match="span"):
        Span(3, 2)
    with pytest.raises(ValueError, match="span"):
        Span(-1, 2)
    assert Span(0, 4).overlaps(Span(4, 4)) is False and Span(0, 4).overlaps(Span(3, 3))
    assert span_score(tokens(("ab", -1.0)), [Span(0, 2)], Span(5, 9)) is None
