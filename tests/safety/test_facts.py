"""Study facts read from real DICOM headers written by the test: present, missing, conflicting, unreadable."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from integration.safety.facts import ImageFacts, StudyFacts
from tests.safety.headers import images


def test_facts_of_a_mammography_study(tmp_path: Path) -> None:
    paths = images(
        tmp_path,
        {"ImageLaterality": "L", "ViewPosition": "CC"},
        {"ImageLaterality": "R", "ViewPosition": "MLO", "Laterality": "R"},
        {"ViewPosition": "LMLO"},
        modality="MG",
        PatientSex="F",
        BodyPartExamined="BREAST",
        StudyDescription="MAMMO SCREENING",
        AccessionNumber="ACC123456",
        OtherPatientIDs=["MRN-0042", "X99"],
        PatientName="Doe^Jane Ann^^Dr",
    )
    facts = StudyFacts.read({1: paths[0], 2: paths[1], 3: paths[2]})
    assert facts.sex == "F"
    assert facts.modalities == {"MG"}
    assert facts.body_parts == {"BREAST"}
    assert facts.descriptions == ("MAMMO SCREENING",)
    assert facts.contrast is False
    assert facts.images == {
        1: ImageFacts(image_laterality="L", view="CC"),
        2: ImageFacts(laterality="R", image_laterality="R", view="MLO"),
        3: ImageFacts(view="LMLO"),
    }
    assert [facts.images[n].side for n in (1, 2, 3)] == [
        ("L", "Image Laterality"),
        ("R", "Image Laterality"),
        ("L", "View Position"),
    ]
    identifiers = facts.identifiers
    assert identifiers.names == ("Doe", "Jane", "Ann", "Dr")
    assert identifiers.ids == ("PID-73519", "MRN-0042", "X99")
    assert identifiers.accessions == ("ACC123456",)
    assert identifiers.birth_dates == ("19600229",)
    assert "Doe" not in repr(facts) and "PID" not in repr(facts) and "1960" not in repr(facts)
    assert repr(identifiers) == "Identifiers(names=4, ids=3, accessions=1, birth_dates=1)"


def test_missing_attributes_are_unknown(tmp_path: Path) -> None:
    paths = images(tmp_path, {}, PatientName="", PatientID="", PatientBirthDate="")
    facts = StudyFacts.read([paths[0]])
    assert facts.sex is None and facts.body_parts == frozenset() and facts.descriptions == ()
    assert facts.images == {1: ImageFacts()} and facts.images[1].side is None
    assert facts.contrast is False
    assert not facts.identifiers


def test_unreadable_files_add_nothing(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    facts = StudyFacts.read({1: junk, 2: tmp_path / "missing.dcm"})
    assert facts == StudyFacts(images=facts.images, contrast=None)
    assert dict(facts.images) == {1: ImageFacts(), 2: ImageFacts()}


def test_the_study_files_add_study_facts_and_a_file_may_be_several_images(tmp_path: Path) -> None:
    seen = images(tmp_path / "seen", {"Laterality": "L"}, PatientSex="M", modality="CR", BodyPartExamined="KNEE")
    other = images(tmp_path / "other", {}, PatientSex="M", modality="SR", ContrastBolusAgent="IOHEXOL")
    facts = StudyFacts.read({1: seen[0], 2: seen[0]}, [*seen, *other])
    assert facts.modalities == {"CR", "SR"} and facts.contrast is True and facts.sex == "M"
    assert facts.images[1] == facts.images[2] == ImageFacts(laterality="L")


def test_conflicting_sex_is_unknown(tmp_path: Path) -> None:
    paths = images(tmp_path, {"PatientSex": "F"}, {"PatientSex": "M"})
    assert StudyFacts.read(paths).sex is None


def test_the_contrast_agent_sequence_counts(tmp_path: Path) -> None:
    item = Dataset()
    item.CodeValue = "C-B0300"
    paths = images(tmp_path, {}, ContrastBolusAgentSequence=[item])
    assert StudyFacts.read(paths).contrast is True


@pytest.mark.parametrize(
    ("description", "contrast"),
    [
        ("CT HEAD WO CONTRAST", False),
        ("CT HEAD W/O", False),
        ("CT CHEST NON-CONTRAST", False),
        ("CT ABD PELVIS W/WO", True),
        ("CT CHEST C+", True),
        ("MR BRAIN POST GAD", True),
        ("CTA CHEST", True),
        ("CT ABDOMEN PORTAL VENOUS", True),
        ("XR CHEST PA", False),
    ],
)
def test_descriptions_that_say_contrast(tmp_path: Path, description: str, contrast: bool) -> None:
    paths = images(tmp_path, {"SeriesDescription": description})
    assert StudyFacts.read(paths).contrast is contrast


def test_invalid_values_are_read_without_logging_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """pydicom's reading validation warns and logs about invalid values of a header: facts are read without it."""
    long_name = "Quillfeather" * 7 + "^Zebediah"
    with pydicom_config.disable_value_validation():
        paths = images(tmp_path, {}, PatientName=long_name, PatientSex="F", PatientID="Q" * 70)
    caplog.set_level(logging.DEBUG)
    with warnings_recorded() as caught:
        facts = StudyFacts.read(paths)
    assert facts.identifiers.names == ("Quillfeather" * 7, "Zebediah") and facts.sex == "F"
    assert facts.identifiers.ids == ("Q" * 70,)
    assert caught == [] and caplog.records == []  # pydicom would warn and log the lengths (some versions, the value)


@contextmanager
def warnings_recorded() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
