"""Consistency between a draft and its study's header: real DICOM files each kind, no false flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from integration.draft_checks import Check
from integration.findings import Document, Finding
from integration.safety.consistency import check_consistency, cited_in_answer
from integration.safety.facts import StudyFacts
from tests.safety.headers import images


def facts_of(tmp_path: Path, *per_image: dict[str, Any], modality: str = "CT", **common: Any) -> StudyFacts:
    return StudyFacts.read(images(tmp_path, *per_image, modality=modality, **common))


def checks(
    facts: StudyFacts, *findings: Finding | str, impression: str = "", **kwargs: Any
) -> list[tuple[int, str, str]]:
    document = Document(
        findings=tuple(f if isinstance(f, Finding) else Finding(f) for f in findings), impression=impression
    )
    return [(c.finding, c.kind, c.message) for c in check_consistency(document, facts, **kwargs)]


@pytest.fixture
def left_knee(tmp_path: Path) -> StudyFacts:
    return facts_of(
        tmp_path,
        {"Laterality": "L"},
        {"Laterality": "L", "ViewPosition": "LAT"},
        modality="CR",
        BodyPartExamined="KNEE",
    )


def test_laterality_of_cited_images_and_of_the_study(left_knee: StudyFacts) -> None:
    assert checks(left_knee, Finding("Right knee joint effusion.", images=(1,))) == [
        (1, "laterality", "says right; image 1 is L (Laterality)")
    ]
    assert checks(left_knee, Finding("Joint effusion.", images=(1, 2), laterality="right")) == [
        (1, "laterality", "says right; images 1, 2 are L (Laterality)")
    ]
    assert checks(left_knee, "Effusion in the right knee.", impression="Right knee effusion.") == [
        (1, "laterality", "says right; the study's images are all L (Laterality)"),
        (0, "laterality", "says right; the study's images are all L (Laterality)"),
    ]


@pytest.mark.parametrize(
    "finding",
    [
        Finding("Left knee joint effusion.", images=(1,)),
        Finding("Joint effusion.", images=(2,), laterality="left"),
        Finding("Bilateral degenerative change, right worse than left."),
        Finding("Right knee comparison would help.", laterality="bilateral"),
        Finding("Both knees: osteophytes on the right."),
        Finding("Small effusion, no fracture."),
        Finding("Patella displaced to the right."),
    ],
)
def test_laterality_not_flagged(left_knee: StudyFacts, finding: Finding) -> None:
    assert checks(left_knee, finding) == []


def test_laterality_of_a_mixed_study_needs_the_cited_images(tmp_path: Path) -> None:
    facts = facts_of(
        tmp_path,
        {"ImageLaterality": "L", "ViewPosition": "CC"},
        {"ImageLaterality": "R"},
        {"ViewPosition": "RMLO"},
        modality="MG",
    )
    assert checks(facts, "Mass in the left breast.") == []
    assert checks(facts, Finding("Mass in the left breast.", images=(2, 3))) == [
        (1, "laterality", "says left; images 2, 3 are R (Image Laterality)")
    ]
    assert checks(facts, Finding("Mass in the left breast.", images=(1, 2))) == []
    assert checks(facts, Finding("Mass in the left breast.", images=(3,))) == [
        (1, "laterality", "says left; image 3 is R (View Position)")
    ]


def test_no_laterality_in_the_header_flags_nothing(tmp_path: Path) -> None:
    both = facts_of(tmp_path / "both", {"ImageLaterality": "B", "Laterality": "R"}, modality="MG")
    assert checks(both, Finding("Left breast mass.", images=(1,))) == []
    facts = facts_of(tmp_path, {}, {}, BodyPartExamined="CHEST")
    assert checks(facts, Finding("Left lower lobe consolidation.", images=(1,))) == []


def test_heart_chambers_are_not_sides(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, {"ImageLaterality": "R"}, modality="MR", BodyPartExamined="BREAST")
    assert checks(facts, "Left ventricle appears normal.", "Right breast: irregular mass.") == []


@pytest.mark.parametrize(
    ("sex", "text", "expected"),
    [
        ("F", "Enlarged prostate gland.", "mentions prostate; Patient's Sex is F (female)"),
        ("M", "Uterine fibroid.", "mentions uterine; Patient's Sex is M (male)"),
        ("M", "Small left ovarian cyst.", "mentions ovarian; Patient's Sex is M (male)"),
        ("F", "Right testicular mass.", "mentions testicular; Patient's Sex is F (female)"),
        ("M", "Enlarged prostate gland.", None),
        ("F", "Uterine fibroid.", None),
        ("M", "Cervix normal.", "mentions cervix; Patient's Sex is M (male)"),
        ("F", "Cervical spine alignment normal; status post prostatectomy per history.", None),
        ("O", "Uterine fibroid.", None),
        ("", "Uterine fibroid.", None),
    ],
)
def test_sex_specific_anatomy(tmp_path: Path, sex: str, text: str, expected: str | None) -> None:
    facts = facts_of(tmp_path, {}, PatientSex=sex, BodyPartExamined="PELVIS")
    assert checks(facts, text) == ([(1, "sex", expected)] if expected else [])


@pytest.mark.parametrize(
    ("attributes", "text", "expected"),
    [
        (
            {"BodyPartExamined": "CHEST"},
            "Small focus of brain oedema.",
            "mentions brain; the study is CHEST (Body Part Examined)",
        ),
        (
            {"BodyPartExamined": "KNEE"},
            "Left lower lobe pneumonia; lungs otherwise clear.",
            "mentions lungs; the study is LOWER LIMB (Body Part Examined)",
        ),
        (
            {"BodyPartExamined": "HEAD"},
            "Small pneumothorax.",
            "mentions pneumothorax; the study is HEAD (Body Part Examined)",
        ),
        ({"StudyDescription": "CT HEAD WO"}, "Fatty liver.", "mentions liver; the study is HEAD (Study Description)"),
        (
            {"BodyPartExamined": "ABDOMENPELVIS"},
            "Cerebral atrophy.",
            "mentions cerebral; the study is ABDOMEN AND PELVIS (Body Part Examined)",
        ),
        ({"BodyPartExamined": "CHEST"}, "Hepatic steatosis in the imaged liver.", None),
        ({"BodyPartExamined": "PELVIS"}, "Renal hilar vessels normal.", None),
        ({"BodyPartExamined": "ABDOMEN"}, "Lung bases clear.", None),
        ({"BodyPartExamined": "CSPINE"}, "Cerebellar tonsils normal.", None),
        ({"BodyPartExamined": "HEADNECK"}, "Lung apices clear.", None),
        ({"BodyPartExamined": "EXTREMITY"}, "Lungs clear.", None),
        ({"StudyDescription": "CT BODY"}, "Brain normal.", None),
        ({}, "Brain normal.", None),
    ],
)
def test_body_region(tmp_path: Path, attributes: dict[str, str], text: str, expected: str | None) -> None:
    facts = facts_of(tmp_path, {}, **attributes)
    assert checks(facts, text) == ([(1, "region", expected)] if expected else [])


def test_body_region_of_the_schema_field(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, {}, BodyPartExamined="CHEST")
    assert checks(facts, Finding("Normal appearance.", region="head")) == [
        (1, "region", "body region head; the study is CHEST (Body Part Examined)")
    ]
    assert checks(facts, Finding("Normal appearance.", region="upper abdomen"), Finding("Clear.", region="chest")) == []


@pytest.mark.parametrize(
    ("modality", "text", "expected"),
    [
        ("CT", "On this MRI there is a small infarct.", 'says "this MRI"; the study\'s Modality is CT'),
        ("MR", "CT shows a small infarct.", 'says "CT shows"; the study\'s Modality is MR'),
        ("CR", "The ultrasound demonstrates a cyst.", 'says "ultrasound demonstrates"; the study\'s Modality is CR'),
        ("CT", "CT shows a small infarct.", None),
        ("CT", "Compared with the prior MRI, the infarct is smaller.", None),
        ("CT", "Recommend MRI for further characterisation.", None),
        ("CT", "MR correlation may help.", None),
        ("MR", "The calcification is better seen on CT.", None),
        ("SC", "On this MRI there is a small infarct.", None),
    ],
)
def test_modality_words(tmp_path: Path, modality: str, text: str, expected: str | None) -> None:
    facts = facts_of(tmp_path, {}, modality=modality)
    assert checks(facts, text) == ([(1, "modality", expected)] if expected else [])


@pytest.mark.parametrize(
    ("modality", "attributes", "text", "expected"),
    [
        (
            "CT",
            {},
            "Contrast-enhanced images show a mass.",
            "mentions contrast-enhanced; no contrast agent recorded (Contrast/Bolus Agent, descriptions)",
        ),
        (
            "CT",
            {},
            "Post-contrast images show a mass.",
            "mentions post-contrast; no contrast agent recorded (Contrast/Bolus Agent, descriptions)",
        ),
        (
            "MR",
            {},
            "Peripherally enhancing lesion.",
            "mentions enhancing; no contrast agent recorded (Contrast/Bolus Agent, descriptions)",
        ),
        ("CT", {}, "Examined without contrast; no mass.", None),
        ("CT", {}, "Recommend contrast-enhanced CT.", None),
        ("US", {}, "Cyst with posterior acoustic enhancement.", None),
        ("CT", {"ContrastBolusAgent": "IOHEXOL"}, "Contrast-enhanced images show a mass.", None),
        ("CT", {"StudyDescription": "CT ABD PELVIS W/WO"}, "Enhancing liver lesion.", None),
    ],
)
def test_contrast(tmp_path: Path, modality: str, attributes: dict[str, str], text: str, expected: str | None) -> None:
    facts = facts_of(tmp_path, {}, modality=modality, **attributes)
    assert checks(facts, text) == ([(1, "contrast", expected)] if expected else [])


def test_cited_images_that_do_not_exist(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, {}, {})
    findings = '[{"text": "Nodule.", "images": [1, 5]}, {"text": ""}, {"text": "Clear.", "images": [2]}]'
    answer = f'```json\n{{"findings": {findings}}}\n```'
    cited = cited_in_answer(answer)
    assert cited == ((1, 5), (2,))
    assert checks(facts, Finding("Nodule.", images=(1,)), "Clear.", cited=cited) == [
        (1, "image", "cites image 5; the model was shown images 1, 2")
    ]
    assert checks(facts, "Nodule on images 2-4 and image 9.") == [
        (1, "image", "cites images 3, 4, 9; the model was shown images 1, 2")
    ]
    assert checks(facts, "Nodule (image 3).", images_seen=range(1, 5)) == []
    assert cited_in_answer("FINDINGS: nodule [image 3]") is None


def test_a_consistent_draft_has_no_checks(tmp_path: Path) -> None:
    facts = facts_of(
        tmp_path,
        {"ImageLaterality": "L"},
        {"ImageLaterality": "L"},
        modality="MR",
        BodyPartExamined="KNEE",
        PatientSex="M",
        StudyDescription="MR KNEE LEFT",
    )
    document = Document(
        findings=(
            Finding(
                "Tear of the posterior horn of the medial meniscus of the left knee.", images=(1,), laterality="left"
            ),
            Finding("Small joint effusion on this MRI.", images=(1, 2), region="knee"),
            Finding("Anterior cruciate ligament intact (image 2)."),
        ),
        impression="Left medial meniscal tear.",
    )
    assert check_consistency(document, facts, images_seen=(1, 2), cited=((1,), (1, 2), ())) == ()


def test_one_check_per_finding_and_kind_with_several_kinds(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, {"Laterality": "R"}, PatientSex="M", BodyPartExamined="CHEST")
    document = Document(
        findings=(Finding("Left ovarian cyst and brain lesion on this MRI; uterus normal.", images=(1, 3)),)
    )
    assert check_consistency(document, facts) == (
        Check(1, "sex", "mentions ovarian; Patient's Sex is M (male)"),
        Check(1, "region", "mentions brain; the study is CHEST (Body Part Examined)"),
        Check(1, "modality", 'says "this MRI"; the study\'s Modality is CT'),
        Check(1, "image", "cites image 3; the model was shown images 1"),
    )
