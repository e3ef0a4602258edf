"""Critical findings: the real medspaCy pipeline (PyRuSH, target matcher, ConText) on draft texts, no mocks."""

from __future__ import annotations

import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from loguru import logger

from integration.draft_checks import CriticalMatch
from integration.findings import Document, Finding
from integration.safety.critical import DEFAULT_CATEGORIES, MODEL_CODE, match_critical, prepare, spellings
from integration.safety_settings import CriticalCategory


def matched(*texts: str, impression: str = "") -> list[tuple[int, str, str]]:
    document = Document(findings=tuple(Finding(text) for text in texts), impression=impression)
    return [(match.finding, match.code, match.phrase) for match in match_critical(document)]


@pytest.mark.parametrize(
    ("text", "code", "phrase"),
    [
        ("Large right pneumothorax.", "pneumothorax", "pneumothorax"),
        ("Right tension pneumothorax with mediastinal shift.", "pneumothorax", "tension pneumothorax"),
        ("Acute subdural haematoma over the left convexity.", "intracranial-haemorrhage", "subdural haematoma"),
        ("Intracranial hemorrhage in the left frontal lobe.", "intracranial-haemorrhage", "Intracranial hemorrhage"),
        ("Free air under the right hemidiaphragm.", "free-air", "Free air"),
        ("Pneumoperitoneum.", "free-air", "Pneumoperitoneum"),
        ("Type A aortic dissection extending into the arch.", "aortic-dissection", "aortic dissection"),
        ("Filling defects consistent with pulmonary emboli.", "pulmonary-embolism", "pulmonary emboli"),
        (
            "The endotracheal tube in the right main bronchus.",
            "malpositioned-line",
            "endotracheal tube in the right main bronchus",
        ),
        ("NG tube in the airway, to be removed.", "malpositioned-line", "NG tube in the airway"),
        ("Malpositioned central venous catheter.", "malpositioned-line", "Malpositioned"),
        ("Acute infarct in the left MCA territory.", "acute-stroke", "Acute infarct"),
    ],
)
def test_affirmed_mentions_are_critical(text: str, code: str, phrase: str) -> None:
    assert matched(text) == [(1, code, phrase)]


@pytest.mark.parametrize(
    "text",
    [
        "No pneumothorax.",
        "No evidence of pulmonary embolism or pneumothorax.",
        "There is no free air.",
        "Lines and tubes in satisfactory position; no malpositioned line.",
        "Negative for intracranial haemorrhage.",
        "Pneumothorax has resolved.",
        "Interval resolution of the pneumothorax.",
        "Evaluate for pneumothorax.",
        "Pneumothorax is not seen.",
        "Pneumothorax not identified.",
        "Pneumothorax: absent.",
        "Pneumothorax - none.",
        "Pneumothorax is excluded.",
        "Previously noted pneumothorax is no longer seen.",
    ],
)
def test_negated_mentions_are_not_critical(text: str) -> None:
    assert matched(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "History of pulmonary embolism.",
        "Family history of intracranial hemorrhage.",
        "If symptoms persist, consider CT for pulmonary embolism.",
    ],
)
def test_historical_family_and_hypothetical_mentions_are_not_critical(text: str) -> None:
    assert matched(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "Possible small left pneumothorax.",
        "Suspected pneumothorax.",
        "Pneumothorax is suspected.",
        "Cannot exclude pneumothorax.",
        "Pneumothorax cannot be excluded.",
        "A pneumothorax is not excluded.",
        "Findings suspicious for pneumothorax.",
        "Lucency concerning for pneumothorax.",
        "Pneumothorax not excluded.",
        "Unable to exclude pneumothorax.",
        "Pneumothorax?",
        "Small pneumothorax cannot be entirely excluded.",
    ],
)
def test_uncertain_mentions_are_critical_and_say_possible(text: str) -> None:
    assert matched(text) == [(1, "pneumothorax", "possible pneumothorax")]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("Large left pneumothorax with absent lung markings.", "pneumothorax"),
        ("Tension pneumothorax on the right, and the small left effusion is not seen.", "Tension pneumothorax"),
        ("Pneumothorax absent.", "Pneumothorax"),  # a bare post-negation is too ambiguous to trust: flagged
    ],
)
def test_post_negations_reach_only_the_words_just_before(text: str, phrase: str) -> None:
    assert matched(text) == [(1, "pneumothorax", phrase)]


def test_rule_out_is_uncertain_per_context() -> None:
    """ConText's own rule: "rule out X" is possible existence (a reviewer should see it), "ruled out" is negation."""
    assert matched("Recommend CT to rule out pulmonary embolism.") == [
        (1, "pulmonary-embolism", "possible pulmonary embolism")
    ]
    assert matched("Pulmonary embolism has been ruled out.") == []


def test_one_sentence_negation_does_not_reach_the_next() -> None:
    assert matched("There is no pneumothorax. There is a large pulmonary embolism.") == [
        (1, "pulmonary-embolism", "pulmonary embolism")
    ]
    assert matched("No pneumothorax, but there is a saddle embolus.") == [(1, "pulmonary-embolism", "saddle embolus")]
    assert matched("Large pneumothorax and free air.") == [
        (1, "pneumothorax", "pneumothorax"),
        (1, "free-air", "free air"),
    ]


def test_one_match_per_finding_and_category_and_the_impression_is_finding_zero() -> None:
    assert matched(
        "Left pneumothorax. Small right pneumothorax too.",
        "Clear lungs.",
        impression="Bilateral pneumothoraces; free air.",
    ) == [
        (1, "pneumothorax", "pneumothorax"),
        (0, "pneumothorax", "pneumothoraces"),
        (0, "free-air", "free air"),
    ]


def test_urgency_field_alone_and_with_the_text() -> None:
    document = Document(
        findings=(
            Finding("Large right pneumothorax.", urgency="critical"),
            Finding("Widened mediastinum.", urgency="critical"),
            Finding("Small effusion.", urgency="urgent"),
            Finding("No pneumothorax.", urgency="routine"),
        )
    )
    assert match_critical(document) == (
        CriticalMatch(1, "pneumothorax", "Pneumothorax", "both", "pneumothorax"),
        CriticalMatch(2, MODEL_CODE, "Critical per model", "urgency", ""),
    )


def test_custom_categories_replace_the_defaults_and_match_both_spellings() -> None:
    categories = [
        CriticalCategory(code="oedema", label="Pulmonary oedema", terms=["pulmonary oedema"]),
        CriticalCategory(code="fracture", label="Hip fracture", terms=["femoral neck fracture"]),
    ]
    document = Document(
        findings=(Finding("Pulmonary edema."), Finding("No femoral neck fracture."), Finding("Pneumothorax."))
    )
    assert match_critical(document, categories) == (
        CriticalMatch(1, "oedema", "Pulmonary oedema", "text", "Pulmonary edema"),
    )
    assert match_critical(document, []) == ()


def test_spellings_of_a_term() -> None:
    assert spellings("Intracranial  Haemorrhage") == ["intracranial haemorrhage", "intracranial hemorrhage"]
    assert spellings("acute ischemic stroke") == ["acute ischaemic stroke", "acute ischemic stroke"]
    assert spellings("ETT in the esophagus") == ["ett in the esophagus", "ett in the oesophagus"]
    assert spellings("hemithorax") == ["hemithorax"]


def test_default_categories_are_valid_and_distinct() -> None:
    codes = [category.code for category in DEFAULT_CATEGORIES]
    assert len(codes) == len(set(codes)) >= 6
    assert {"pneumothorax", "intracranial-haemorrhage", "free-air", "aortic-dissection", "pulmonary-embolism"} <= set(
        codes
    )
    assert "malpositioned-line" in codes


def test_empty_draft_needs_no_pipeline() -> None:
    assert match_critical(Document()) == ()
    assert match_critical(Document(findings=(Finding("Opacity.", urgency="critical"),))) == (
        CriticalMatch(1, MODEL_CODE, "Critical per model", "urgency", ""),
    )


def test_no_text_reaches_the_logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """PyRuSH logs sentences through loguru at DEBUG: the matcher silences it even when someone enabled it."""
    secret = "Pneumothorax beside Zebediah Quillfeather's chest tube."
    records: list[str] = []
    logger.enable("PyRuSH")
    sink = logger.add(lambda message: records.append(str(message)), level="TRACE")
    caplog.set_level(logging.DEBUG)
    try:
        found = match_critical(Document(findings=(Finding(secret),)))
    finally:
        logger.remove(sink)
    assert [match.code for match in found] == ["pneumothorax"]
    out, err = capfd.readouterr()
    for text in (*records, caplog.text, out, err):
        assert "Quillfeather" not in text and "Zebediah" not in text


def test_medspacy_is_imported_only_when_matching_or_prepared() -> None:
    loaded = "print('medspacy' in sys.modules)"
    code = f"import sys, integration.safety.critical as c; {loaded}; c.prepare(); {loaded}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]
    prepare()


def test_threads_share_one_pipeline() -> None:
    texts = ["Large pneumothorax.", "No pneumothorax.", "Possible aortic dissection.", "Free air."] * 4
    expected = [matched(text) for text in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(matched, texts)) == expected
