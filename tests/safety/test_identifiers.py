"""Echoed identifiers: the patient's name, ids, accession and birth date masked in a draft and flagged per finding."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.draft_checks import Check
from integration.findings import Document, Finding
from integration.safety.facts import Identifiers, StudyFacts
from integration.safety.identifiers import MASK, mask_identifiers, mask_text
from tests.safety.headers import images

PATIENT = Identifiers(
    names=("Doe", "Jane", "Ann"), ids=("PID-73519", "12"), accessions=("ACC2024-77",), birth_dates=("19600301",)
)


def masked(text: str, identifiers: Identifiers = PATIENT) -> str:
    document, _ = mask_identifiers(Document(findings=(Finding(text),)), identifiers)
    return document.findings[0].text


@pytest.mark.parametrize(
    "date",
    [
        "19600301",
        "1960-03-01",
        "1960/3/1",
        "01/03/1960",
        "03/01/1960",
        "1.3.1960",
        "1 March 1960",
        "1st Mar 1960",
        "01 mar. 1960",
        "March 1, 1960",
        "MARCH 1 1960",
    ],
)
def test_birth_date_in_common_formats(date: str) -> None:
    assert masked(f"Patient born {date}; no fracture.") == f"Patient born {MASK}; no fracture."


@pytest.mark.parametrize("date", ["2 March 1960", "1 March 1961", "1960", "March 1960", "11/03/1960", "119600301"])
def test_other_dates_are_left(date: str) -> None:
    assert masked(f"Seen {date}.") == f"Seen {date}."


def test_name_components_as_whole_words_any_case() -> None:
    assert (
        masked("Jane DOE, ann: stable. Doer and Janet unaffected.")
        == f"{MASK} {MASK}, {MASK}: stable. Doer and Janet unaffected."
    )


def test_ids_and_accession_whole_tokens_with_and_without_separators() -> None:
    text = "MRN PID-73519 (pid73519), accession acc2024-77; 12 mm nodule; PID-735190 is another."
    assert masked(text) == f"MRN {MASK} ({MASK}), accession {MASK}; 12 mm nodule; PID-735190 is another."


def test_checks_name_the_kinds_never_the_values_and_sections_are_finding_zero() -> None:
    document = Document(
        findings=(
            Finding("Nodule, Jane Doe, PID-73519.", images=(1,), laterality="left"),
            Finding("Clear lungs."),
            Finding("Accession ACC2024-77, born 1 March 1960."),
        ),
        impression="Doe: no acute findings.",
        limitations="Dated 01/03/1960.",
        comparison="None for Jane.",
        problems=("Doe",),
    )
    result, checks = mask_identifiers(document, PATIENT)
    assert [f.text for f in result.findings] == [
        f"Nodule, {MASK} {MASK}, {MASK}.",
        "Clear lungs.",
        f"Accession {MASK}, born {MASK}.",
    ]
    assert result.findings[0].images == (1,) and result.findings[0].laterality == "left"
    assert (result.impression, result.limitations, result.comparison) == (
        f"{MASK}: no acute findings.",
        f"Dated {MASK}.",
        f"None for {MASK}.",
    )
    assert result.problems == ("Doe",)  # the parser's notes are not the model's text
    assert checks == (
        Check(1, "identifier", "the model's text repeated the patient's name, ID; masked"),
        Check(3, "identifier", "the model's text repeated the patient's birth date, accession number; masked"),
        Check(0, "identifier", "the model's text repeated the patient's name, birth date; masked"),
    )
    for check in checks:
        assert not any(value.lower() in check.message.lower() for value in ("Doe", "Jane", "PID", "1960", "ACC2024"))


def test_nothing_to_mask_returns_the_same_document() -> None:
    document = Document(findings=(Finding("Clear lungs."),), impression="Normal.")
    assert mask_identifiers(document, PATIENT) == (document, ())
    assert mask_identifiers(document, Identifiers()) == (document, ())


def test_with_identifiers_read_from_a_header(tmp_path: Path) -> None:
    paths = images(tmp_path, {}, PatientName="O'Brien^Mary-Kate", AccessionNumber="A7", PatientBirthDate="19751231")
    identifiers = StudyFacts.read(paths).identifiers
    text = masked("O'Brien, Mary-Kate, Mary, PID-73519, A7, 31/12/1975, 12/31/1975, 31 December 1975.", identifiers)
    assert text == f"{MASK}, {MASK}, {MASK}, {MASK}, A7, {MASK}, {MASK}, {MASK}."  # A7: too short to mask safely


def test_a_mask_longer_than_the_limit_is_cut() -> None:
    finding = Finding(("Doe " * 500).strip())
    document, checks = mask_identifiers(Document(findings=(finding,)), PATIENT)
    assert len(document.findings[0].text) == 2000 and document.findings[0].text.startswith(MASK)
    assert [check.finding for check in checks] == [1]


def test_mask_text_masks_the_raw_answer() -> None:
    answer = '{"findings": [{"text": "Jane Doe, born 1960-03-01, PID-73519", "images": [1]}]}'
    assert (
        mask_text(answer, PATIENT)
        == f'{{"findings": [{{"text": "{MASK} {MASK}, born {MASK}, {MASK}", "images": [1]}}]}}'
    )
    assert mask_text(answer, Identifiers()) == answer
