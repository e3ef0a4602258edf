"""Draft and signed DICOM SR documents: valid for dciodvfy and dsrdump, and read back through highdicom."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from integration.findings import MAX_FINDING_CHARS, Document, Finding, InvalidFindings, PriorReference, clean_text
from integration.reports.sr import (
    Algorithm,
    ReportForSr,
    SrReading,
    Verification,
    build_draft_sr,
    build_signed_sr,
    read_sr,
)
from integration.reports.sr_content import ImageReference, SeenFrame
from integration.reports.sr_priors import ReadComparison, ReadPrior
from integration.samples import pydicom_test_file, write_ct_series
from tests.support.sr_tools import check_with_tools

ALGORITHM = Algorithm("FreedomIntelligence/HuatuoGPT-Vision-7B-hf", "3f1c2a9", "huatuogpt-vision", "ct-chest/v1")
SIGNED_AT = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def save(document: Dataset, path: Path) -> Path:
    document.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, tuple[SeenFrame, ...]]:
    """A generated CT series: the first slice's header as source, four single-frame images seen."""
    files = write_ct_series(tmp_path_factory.mktemp("ct"), 4, rows=16, columns=16)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seen = tuple(
        SeenFrame(n, str(h.SOPClassUID), str(h.SOPInstanceUID), str(h.SeriesInstanceUID))
        for n, h in enumerate(headers, start=1)
    )
    return headers[0], seen


@pytest.fixture(scope="module")
def multiframe() -> tuple[Dataset, tuple[SeenFrame, ...]]:
    """A 30-frame ultrasound instance: image 1 shows frames 1 and 15, image 2 frame 30."""
    header = pydicom.dcmread(pydicom_test_file("examples_ybr_color.dcm"), stop_before_pixels=True)
    uids = (str(header.SOPClassUID), str(header.SOPInstanceUID), str(header.SeriesInstanceUID))
    count = int(header.NumberOfFrames)
    seen = (SeenFrame(1, *uids, 1, count), SeenFrame(1, *uids, 15, count), SeenFrame(2, *uids, 30, count))
    return header, seen


def a_report(seen: tuple[SeenFrame, ...], findings: tuple[Finding, ...] | None = None) -> ReportForSr:
    return ReportForSr(
        findings=findings
        or (
            Finding("Spiculated nodule in the right upper lobe.", (1, 2)),
            Finding("No pleural effusion.", (2,)),
            Finding("Degenerative changes, not tied to an image.", ()),
        ),
        impression="Suspicious right upper lobe nodule; CT follow-up advised.",
        limitations="Single series; no prior studies for comparison.",
        evidence=seen,
        algorithm=ALGORITHM,
        created_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
    )


def draft_and_signed(
    source: Dataset, report: ReportForSr, folder: Path, verification: Verification | None = None
) -> tuple[SrReading, SrReading, Dataset, Dataset]:
    draft = build_draft_sr(report, source, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    signed = build_signed_sr(
        report,
        source,
        verification=verification or Verification("Doe^Jane", "St Elsewhere", SIGNED_AT),
        predecessor=draft,
        sop_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        instance_number=2,
    )
    readings = []
    for name, document in (("draft", draft), ("signed", signed)):
        path = save(document, folder / f"{name}.dcm")
        check_with_tools(path)
        readings.append(read_sr(pydicom.dcmread(path)))
    return readings[0], readings[1], draft, signed


def refs(references: tuple[ImageReference, ...]) -> list[tuple[str, tuple[int, ...]]]:
    return [(r.sop_instance_uid, r.frames) for r in references]


def test_ct_draft_and_signed_sr_are_valid_and_read_back(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = ct
    report = a_report(seen)
    draft, signed, _, _ = draft_and_signed(source, report, tmp_path)
    for reading in (draft, signed):
        assert [f.text for f in reading.findings] == [f.text for f in report.findings]
        assert refs(reading.findings[0].references) == [(seen[0].sop_instance_uid, ()), (seen[1].sop_instance_uid, ())]
        assert refs(reading.findings[1].references) == [(seen[1].sop_instance_uid, ())]
        assert reading.findings[2].references == ()
        assert reading.impression == report.impression and reading.limitations == report.limitations
        assert reading.study_instance_uid == source.StudyInstanceUID
        assert reading.evidence == tuple(s.sop_instance_uid for s in seen)  # everything the model saw
        assert reading.algorithm_name == ALGORITHM.model_id and reading.algorithm_version == ALGORITHM.model_revision
        assert "prompt version: ct-chest/v1" in reading.algorithm_parameters
        assert reading.device_observer_uid == ALGORITHM.device_uid
    assert (draft.completion_flag, draft.verification_flag, draft.preliminary_flag) == (
        "PARTIAL",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert draft.series_description == "AI draft, not verified" and draft.verifying_observers == ()
    assert draft.predecessors == () and draft.person_observers == ()
    assert (signed.completion_flag, signed.verification_flag, signed.preliminary_flag) == (
        "COMPLETE",
        "VERIFIED",
        "FINAL",
    )
    [observer] = signed.verifying_observers
    assert (observer.name, observer.organization) == ("Doe^Jane", "St Elsewhere")
    assert observer.verified_at.startswith("202611")
    assert signed.predecessors == (draft.sop_instance_uid,)
    assert signed.person_observers == ("Doe^Jane",)
    assert signed.sop_instance_uid != draft.sop_instance_uid and signed.instance_number == 2


def test_patient_and_study_modules_are_copied_from_the_source(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = ct
    _, _, draft, signed = draft_and_signed(source, a_report(seen), tmp_path)
    for document in (draft, signed):
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
            assert document[keyword].value == source[keyword].value, keyword
        for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
            assert document[keyword].value == source[keyword].value, keyword
        assert document.Modality == "SR" and document.SeriesInstanceUID != source.SeriesInstanceUID


def test_multiframe_references_carry_frame_numbers(
    multiframe: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = multiframe
    report = a_report(seen, (Finding("Finding on image 1", (1,)), Finding("Finding on both", (1, 2))))
    draft, signed, _, _ = draft_and_signed(source, report, tmp_path)
    uid = seen[0].sop_instance_uid
    for reading in (draft, signed):
        assert refs(reading.findings[0].references) == [(uid, (1, 15))]
        assert refs(reading.findings[1].references) == [(uid, (1, 15, 30))]
        assert reading.study_instance_uid == source.StudyInstanceUID


def test_hostile_model_text_still_makes_a_valid_sr(ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path) -> None:
    source, seen = ct
    hostile = (
        ("bell\x07 null\x00 esc\x1b[31m red \x9b C1 \ud800 lone surrogate \ufffe", [1]),
        ("x" * 100_000, [2]),
        ("<script>alert(1)</script> [red]markup[/red] back\\slash ^caret^ =eq Ünïcödé 肺结节 🫁", [3]),
        ("   ", []),
    )
    for text, images in (hostile[0], hostile[1], hostile[3]):  # unsafe text cannot become a finding as it is ...
        with pytest.raises(InvalidFindings):
            Finding(text, tuple(images))
    stored = {"findings": [{"text": text, "images": images} for text, images in hostile]}
    document = Document.read(stored)  # ... only through the lenient reading of the stored document
    report = a_report(seen, document.findings)
    draft, signed, _, _ = draft_and_signed(source, report, tmp_path)
    for reading in (draft, signed):
        texts = [f.text for f in reading.findings]
        assert texts[0] == "bell null esc[31m red  C1  lone surrogate"
        assert len(texts[1]) == MAX_FINDING_CHARS and texts[1].endswith("\u2026")
        assert texts[2] == hostile[2][0]
        assert len(texts) == 3  # the finding without text is left out
        assert texts == [clean_text(text, MAX_FINDING_CHARS) for text, _ in hostile[:3]]


def test_non_ascii_patient_names_survive_the_utf8_report(tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path / "ct", 1, rows=8, columns=8)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    source.SpecificCharacterSet = "ISO_IR 100"
    source.PatientName = "Müller^Jürgen"
    source.save_as(path, enforce_file_format=True)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    seen = (SeenFrame(1, str(source.SOPClassUID), str(source.SOPInstanceUID), str(source.SeriesInstanceUID)),)
    _, _, document, _ = draft_and_signed(source, a_report(seen), tmp_path)
    assert document.SpecificCharacterSet == "ISO_IR 192"
    assert str(pydicom.dcmread(tmp_path / "draft.dcm").PatientName) == "Müller^Jürgen"


def test_a_rebuilt_draft_is_the_same_document(ct: tuple[Dataset, tuple[SeenFrame, ...]]) -> None:
    source, seen = ct
    uids = {"sop_instance_uid": generate_uid(), "series_instance_uid": generate_uid()}
    first, second = (build_draft_sr(a_report(seen), source, **uids) for _ in range(2))
    assert first == second


@pytest.mark.parametrize(
    ("name", "organization"),
    [
        ("", "St Elsewhere"),
        ("Doe\\Jane", "St Elsewhere"),
        ("Doe^Jane\n", "X"),
        ("Doe^Jane", ""),
        ("Doe^Jane", "x" * 65),
    ],
)
def test_verification_refuses_bad_names_and_organizations(name: str, organization: str) -> None:
    with pytest.raises(ValueError):
        Verification(name, organization, SIGNED_AT)


def test_verification_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        Verification("Doe^Jane", "St Elsewhere", datetime(2026, 11, 24, 9, 30))


@pytest.fixture(scope="module")
def prior_ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[SeenFrame, ...]:
    """Two slices of another CT study (the prior), seen as images 1 and 2 before the current ones."""
    files = write_ct_series(tmp_path_factory.mktemp("prior"), 2, rows=16, columns=16)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return tuple(
        SeenFrame(n, str(h.SOPClassUID), str(h.SOPInstanceUID), str(h.SeriesInstanceUID), study_uid=h.StudyInstanceUID)
        for n, h in enumerate(headers, start=1)
    )


def test_sr_names_the_comparison_study_and_references_its_instances_as_other_evidence(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], prior_ct: tuple[SeenFrame, ...], tmp_path: Path
) -> None:
    source, seen = ct
    prior_uid = str(prior_ct[0].study_uid)
    assert prior_uid != source.StudyInstanceUID
    current = tuple(dataclasses.replace(frame, image=frame.image + 2) for frame in seen)
    prior = PriorReference.of(prior_uid, "20240301", modality="CT", description="CT CHEST W CONTRAST", accession="A1")
    findings = (Finding("Nodule in the right upper lobe, unchanged in size.", (1, 3)), Finding("No effusion.", (4,)))
    report = dataclasses.replace(
        a_report((*prior_ct, *current), findings),
        comparison="Compared with the CT of 2024-03-01: the nodule is unchanged.",
        priors=(prior,),
    )
    draft, signed, _, document = draft_and_signed(source, report, tmp_path)
    for reading in (draft, signed):
        [named] = reading.comparison.priors
        assert named == ReadPrior(prior_uid, "CT, 2024-03-01: CT CHEST W CONTRAST", "20240301", "CT", "A1")
        assert reading.comparison.statements == ("Compared with the CT of 2024-03-01: the nodule is unchanged.",)
        assert reading.evidence == tuple(s.sop_instance_uid for s in seen)  # the current study's, where they were
        assert reading.other_evidence == tuple((prior_uid, s.sop_instance_uid) for s in prior_ct)
        assert refs(reading.findings[0].references) == [
            (prior_ct[0].sop_instance_uid, ()),
            (seen[0].sop_instance_uid, ()),
        ]
    [other] = document.PertinentOtherEvidenceSequence
    assert other.StudyInstanceUID == prior_uid
    assert [item.StudyInstanceUID for item in document.CurrentRequestedProcedureEvidenceSequence] == [
        source.StudyInstanceUID
    ]


@pytest.mark.parametrize(
    ("note", "said"),
    [
        ("", "No prior study available."),
        (
            "Prior study not available: the PACS did not answer in 60 s.",
            "Prior study not available: the PACS did not answer in 60 s.",
        ),
    ],
)
def test_sr_without_a_prior_says_so(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path, note: str, said: str
) -> None:
    source, seen = ct
    draft, signed, _, document = draft_and_signed(
        source, dataclasses.replace(a_report(seen), prior_note=note), tmp_path
    )
    for reading in (draft, signed):
        assert reading.comparison == ReadComparison((), (said,))
        assert reading.other_evidence == ()
    assert "PertinentOtherEvidenceSequence" not in document
