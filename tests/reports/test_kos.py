"""The key images document of a draft: dciodvfy-clean, read back through highdicom."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import KeyObjectSelectionDocumentStorage, generate_uid

from integration.findings import Finding
from integration.reports.kos import DESCRIPTION, build_key_images, read_key_images
from integration.reports.sr import Algorithm, ReportForSr, build_draft_sr
from integration.reports.sr_content import SeenFrame
from integration.samples import pydicom_test_file, write_ct_series
from integration.store.viewer_tables import KEY_IMAGES_SERIES_NUMBER
from tests.support.sr_tools import check_with_tools

ALGORITHM = Algorithm("FreedomIntelligence/HuatuoGPT-Vision-7B-hf", "3f1c2a9", "huatuogpt-vision", "ct-chest/v1")


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, tuple[SeenFrame, ...]]:
    files = write_ct_series(tmp_path_factory.mktemp("ct"), 3, rows=16, columns=16)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seen = tuple(
        SeenFrame(n, str(h.SOPClassUID), str(h.SOPInstanceUID), str(h.SeriesInstanceUID))
        for n, h in enumerate(headers, start=1)
    )
    return headers[0], seen


def draft_sr(source: Dataset, seen: tuple[SeenFrame, ...]) -> Dataset:
    report = ReportForSr(
        findings=(Finding("Spiculated nodule.", (1,)),),
        impression="Nodule.",
        limitations="",
        evidence=seen,
        algorithm=ALGORITHM,
        created_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
    )
    return build_draft_sr(report, source, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid())


def written(document: Dataset, path: Path) -> Dataset:
    document.save_as(path, enforce_file_format=True)
    check_with_tools(path)
    return pydicom.dcmread(path)


def test_key_images_list_the_images_seen_and_the_draft(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = ct
    prior = SeenFrame(4, seen[0].sop_class_uid, generate_uid(), generate_uid(), study_uid=generate_uid())
    sr = draft_sr(source, seen)
    sop_uid = generate_uid()
    document = build_key_images(
        source, (*seen, prior), sr, ALGORITHM, sop_instance_uid=sop_uid, series_instance_uid=generate_uid()
    )
    reading = read_key_images(written(document, tmp_path / "kos.dcm"))
    assert document.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert document.StudyInstanceUID == source.StudyInstanceUID and document.PatientID == source.PatientID
    assert (reading.sop_instance_uid, reading.series_number, reading.title) == (
        sop_uid,
        KEY_IMAGES_SERIES_NUMBER,
        "Of Interest",
    )
    assert reading.description == DESCRIPTION and "AI" in reading.description
    assert [image.sop_instance_uid for image in reading.images] == [s.sop_instance_uid for s in seen]  # no prior
    assert reading.documents == (str(sr.SOPInstanceUID),)
    assert set(reading.evidence) == {*(s.sop_instance_uid for s in seen), str(sr.SOPInstanceUID)}
    assert reading.device_observer_uid == ALGORITHM.device_uid


def test_multiframe_key_images_carry_their_frames(tmp_path: Path) -> None:
    header = pydicom.dcmread(pydicom_test_file("examples_ybr_color.dcm"), stop_before_pixels=True)
    uids = (str(header.SOPClassUID), str(header.SOPInstanceUID), str(header.SeriesInstanceUID))
    count = int(header.NumberOfFrames)
    seen = (SeenFrame(1, *uids, 1, count), SeenFrame(2, *uids, 30, count))
    sr = draft_sr(header, seen)
    document = build_key_images(
        header, seen, sr, ALGORITHM, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid()
    )
    reading = read_key_images(written(document, tmp_path / "us.dcm"))
    assert [(image.sop_instance_uid, image.frames) for image in reading.images] == [(uids[1], (1, 30))]


def test_a_draft_that_saw_no_image_of_the_study_still_references_its_sr(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, _ = ct
    sr = draft_sr(source, ())
    document = build_key_images(
        source, (), sr, ALGORITHM, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid()
    )
    reading = read_key_images(written(document, tmp_path / "none.dcm"))
    assert reading.images == () and reading.documents == (str(sr.SOPInstanceUID),)


def test_a_rebuilt_key_images_document_is_the_same(ct: tuple[Dataset, tuple[SeenFrame, ...]]) -> None:
    source, seen = ct
    sr = draft_sr(source, seen)
    uids = {"sop_instance_uid": generate_uid(), "series_instance_uid": generate_uid()}
    first, second = (build_key_images(source, seen, sr, ALGORITHM, **uids) for _ in range(2))
    assert first == second
