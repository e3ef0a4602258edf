"""The tolerant parser of model output, and the prompt templates."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.draft import AI_DRAFT_NOTICE, MAX_FINDINGS, Finding, parse_draft
from models.prompts import TEMPLATES, render_prompt, select_template


def test_clean_json_is_parsed_with_image_references() -> None:
    text = json.dumps(
        {
            "findings": [
                {"text": "Right lower lobe consolidation.", "images": [2, 3]},
                {"text": "No pleural effusion.", "images": []},
            ],
            "impression": "Right lower lobe pneumonia.",
            "limitations": "Only 4 slices seen.",
        }
    )
    draft = parse_draft(text, n_images=4)
    assert draft.structured and draft.problems == ()
    assert draft.findings == (Finding("Right lower lobe consolidation.", (2, 3)), Finding("No pleural effusion.", ()))
    assert (draft.impression, draft.limitations) == ("Right lower lobe pneumonia.", "Only 4 slices seen.")


def test_json_in_prose_and_code_fences_with_other_key_names() -> None:
    text = (
        "Sure! Here is the report:\n```json\n"
        '{"Findings": [{"finding": "Cardiomegaly", "image": "2"}, "Small left effusion (image 1)"],'
        ' "Conclusion": ["Cardiomegaly.", "Effusion."]}\n```\nHope this helps."'
    )
    draft = parse_draft(text, n_images=2)
    assert draft.structured
    assert draft.findings == (Finding("Cardiomegaly", (2,)), Finding("Small left effusion (image 1)", (1,)))
    assert draft.impression == "Cardiomegaly. Effusion."


def test_out_of_range_image_references_are_dropped_and_noted() -> None:
    draft = parse_draft('{"findings": [{"text": "Nodule", "images": [0, 2, 9, "x"]}]}', n_images=3)
    assert draft.findings == (Finding("Nodule", (2,)),)
    assert any("outside 1..3" in p for p in draft.problems) and any("non-numeric" in p for p in draft.problems)


def test_plain_sections_with_bullets_and_ranges() -> None:
    text = (
        "**Findings:**\n- Ground-glass opacities in both lower lobes (images 2-4).\n"
        "2. No pneumothorax.\nIMPRESSION: Atypical infection.\nLimitations: motion artefact"
    )
    draft = parse_draft(text, n_images=5)
    assert draft.structured
    assert draft.findings[0] == Finding("Ground-glass opacities in both lower lobes (images 2-4).", (2, 3, 4))
    assert draft.findings[1].text == "No pneumothorax."
    assert (draft.impression, draft.limitations) == ("Atypical infection.", "motion artefact")


def test_unstructured_output_is_kept_as_flagged_free_text() -> None:
    draft = parse_draft("the the the lorem ipsum\x00\x07 noise", n_images=2)
    assert not draft.structured
    assert draft.findings == (Finding("the the the lorem ipsum noise"),)
    assert "kept as free text" in draft.problems[-1]
    assert parse_draft("", n_images=1).findings == ()


def test_runaway_output_is_capped() -> None:
    many = json.dumps({"findings": [{"text": f"finding {i}"} for i in range(MAX_FINDINGS + 20)]})
    draft = parse_draft(many, n_images=1)
    assert len(draft.findings) == MAX_FINDINGS and any("dropped" in p for p in draft.problems)
    assert len(parse_draft("x" * 100_000, n_images=1).raw_text) <= 20_000


def test_text_rendering_carries_the_ai_draft_notice() -> None:
    draft = parse_draft('{"findings": [{"text": "Normal", "images": [1]}], "impression": "Normal study."}', 1)
    text = draft.as_text()
    assert text.startswith(AI_DRAFT_NOTICE)
    assert "- Normal [images 1]" in text and "IMPRESSION:\nNormal study." in text
    assert draft.as_json()["findings"] == [{"text": "Normal", "images": [1]}]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000), st.integers(min_value=0, max_value=20))
def test_parser_never_raises_and_references_stay_in_range(text: str, n_images: int) -> None:
    draft = parse_draft(text, n_images)
    for finding in draft.findings:
        assert all(1 <= i <= n_images for i in finding.images)
        assert "\x00" not in finding.text


@pytest.mark.parametrize(
    ("modality", "body_part", "expected"),
    [
        ("CT", "CHEST", "ct-chest/v3"),
        ("CT", "HEAD", "ct-head/v3"),
        ("CT", "ABDOMEN", "ct/v3"),
        ("MR", "KNEE", "mr/v3"),
        ("DX", "CHEST", "radiograph-chest/v3"),
        ("US", None, "general/v3"),
        (None, None, "general/v3"),
    ],
)
def test_template_selection(modality: str | None, body_part: str | None, expected: str) -> None:
    assert select_template(modality, body_part).key == expected


def test_prompt_numbers_images_and_quotes_the_clinical_question() -> None:
    prompt = render_prompt(TEMPLATES[0], ["slice 1/300, lung window", "slice 150/300"], 'Cough "3 weeks"\n, fever?')
    assert prompt.startswith("Image 1: slice 1/300, lung window\nImage 2: slice 150/300")
    assert "The referring clinician asks: \"Cough '3 weeks' , fever?\"" in prompt
    assert '"findings"' in prompt
    assert len({t.key for t in TEMPLATES}) == len(TEMPLATES)


def test_the_schema_fields_of_a_finding_are_read() -> None:
    finding = {
        "text": "Small left pneumothorax.",
        "images": [1],
        "laterality": "Left",
        "body_region": "  chest,\n left  apex ",
        "certainty": ["possible", "likely", "possible", ""],
        "urgency": "critical",
    }
    draft = parse_draft(json.dumps({"findings": [finding], "impression": "x"}), n_images=1)
    assert draft.problems == ()
    assert draft.findings == (
        Finding("Small left pneumothorax.", (1,), "left", "chest, left apex", ("possible", "likely"), "critical"),
    )
    assert draft.findings[0].as_json()["region"] == "chest, left apex"


def test_schema_fields_outside_their_words_are_dropped_and_noted_never_raised() -> None:
    odd = [
        {"text": "a", "laterality": "leftish", "urgency": "URGENT!", "body_region": "x" * 300, "certainty": "maybe"},
        {"text": "b", "laterality": ["left"], "urgency": 3, "body_region": {"a": 1}, "certainty": [{"w": 1}, "y" * 99]},
        {"text": "c", "laterality": None, "urgency": True, "region": "abdomen\x00", "certainty": None},
    ]
    draft = parse_draft(json.dumps({"findings": odd, "impression": "x"}), n_images=1)
    a, b, c = draft.findings
    assert (a.laterality, a.urgency, a.certainty) == (None, None, ("maybe",))
    assert a.region is not None and len(a.region) == 64 and a.region.endswith("\u2026")
    assert (b.laterality, b.urgency, b.region) == (None, None, None)
    assert b.certainty == ("y" * 31 + "\u2026",)
    assert (c.laterality, c.urgency, c.region, c.certainty) == (None, None, "abdomen", ())
    assert "a laterality outside left, right, bilateral, midline, none was dropped" in draft.problems
    assert sum("urgency outside" in problem for problem in draft.problems) == 2  # "URGENT!" and 3 (True is no word)


def test_free_text_findings_carry_no_schema_fields() -> None:
    draft = parse_draft("FINDINGS:\n- Left effusion.\nIMPRESSION: effusion", n_images=1)
    assert draft.findings == (Finding("Left effusion."),)
    assert draft.findings[0].as_json() == {"text": "Left effusion.", "images": []}


def test_control_characters_a_grammar_engine_lets_into_strings_do_not_break_the_json() -> None:
    draft = parse_draft('{"findings": [{"text": "a\tb", "images": []}], "impression": "x"}', n_images=1)
    assert draft.structured and draft.findings == (Finding("a\tb"),)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({"text": st.text(min_size=1, max_size=20)}, optional={
    name: _JSON for name in ("laterality", "body_region", "certainty", "urgency", "images", "box")
}))  # fmt: skip
def test_any_json_in_the_schema_fields_never_raises(finding: dict[str, object]) -> None:
    draft = parse_draft(json.dumps({"findings": [finding], "impression": "x"}), n_images=3)
    for parsed in draft.findings:
        assert parsed.laterality in (None, "left", "right", "bilateral", "midline", "none")
        assert parsed.urgency in (None, "critical", "urgent", "routine", "none")
        assert parsed.region is None or 0 < len(parsed.region) <= 64
        assert len(parsed.certainty) <= 4 and all(0 < len(word) <= 32 for word in parsed.certainty)
        box = parsed.box
        assert box is None or (len(parsed.images) == 1 and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1)


def test_a_box_on_one_image_is_read_and_malformed_or_ambiguous_boxes_are_dropped_and_noted() -> None:
    findings = [
        {"text": "Nodule.", "images": [2], "box": [0.1, 0.2, 0.5, 0.6]},
        {"text": "Opacity.", "images": [1], "bbox": [0, 0, 1, 1]},
        {"text": "On two images.", "images": [1, 2], "box": [0.1, 0.2, 0.5, 0.6]},
        {"text": "In pixels.", "images": [1], "box": [12, 40, 200, 310]},
        {"text": "Upside down.", "images": [1], "box": [0.5, 0.6, 0.1, 0.2]},
        {"text": "Three numbers.", "images": [1], "box": [0.1, 0.2, 0.5]},
        {"text": "Words.", "images": [1], "box": "top left"},
        {"text": "True.", "images": [1], "box": [True, 0, 1, 1]},
    ]
    draft = parse_draft(json.dumps({"findings": findings, "impression": "x"}), n_images=2)
    assert [f.box for f in draft.findings] == [(0.1, 0.2, 0.5, 0.6), (0.0, 0.0, 1.0, 1.0)] + [None] * 6
    assert draft.findings[0].as_json()["box"] == [0.1, 0.2, 0.5, 0.6] and "box" not in draft.findings[2].as_json()
    assert sum("box" in problem for problem in draft.problems) == 6
