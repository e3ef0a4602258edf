"""TID 1500 Measurement Reports of drafts and signed versions: dciodvfy-clean, read back through highdicom."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import EnhancedSRStorage, generate_uid
from sqlalchemy import select

from integration.config import Settings
from integration.findings import Finding
from integration.reports.drafts import ensure_draft_sr, report_object_file, sign_report
from integration.reports.kos import read_key_images
from integration.reports.report_objects import ObjectUnavailable, ensure_draft_objects
from integration.reports.sr import Algorithm, ReportForSr, Verification
from integration.reports.sr_content import SeenFrame
from integration.reports.sr_measurement import (
    MeasurementReading,
    build_measurement_report,
    finding_code,
    read_measurement_report,
)
from integration.samples import pydicom_test_file, write_ct_series
from integration.store.migrate import upgrade
from integration.store.session import session_scope
from integration.store.tables import Report, ReportStatus
from integration.store.viewer_tables import (
    MEASUREMENT_DRAFT_SERIES_NUMBER,
    MEASUREMENT_SIGNED_SERIES_NUMBER,
    ReportObject,
    ReportObjectKind,
)
from tests.reports.test_signing import add_report, evidence_of, store_study
from tests.support.sr_tools import check_with_tools

ALGORITHM = Algorithm("FreedomIntelligence/HuatuoGPT-Vision-7B-hf", "3f1c2a9", "huatuogpt-vision", "ct-chest/v1")
SIGNED_AT = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
FINDINGS = (
    Finding("Possible small right pneumothorax.", (1, 2), urgency="critical", certainty=("possible",)),
    Finding("No pleural effusion.", (2,), urgency="none"),
    Finding("Degenerative changes, not tied to an image.", ()),
)


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


def a_report(seen: tuple[SeenFrame, ...], findings: tuple[Finding, ...] = FINDINGS) -> ReportForSr:
    return ReportForSr(
        findings=findings,
        impression="Small right pneumothorax; clinical correlation advised.",
        limitations="Single series.",
        evidence=seen,
        algorithm=ALGORITHM,
        created_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
    )


def build_and_check(document: Dataset, path: Path) -> MeasurementReading:
    document.save_as(path, enforce_file_format=True)
    check_with_tools(path)
    return read_measurement_report(pydicom.dcmread(path))


def test_draft_and_signed_measurement_reports_are_valid_and_read_back(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = ct
    report = a_report(seen)
    draft_doc = build_measurement_report(
        report, source, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid()
    )
    draft = build_and_check(draft_doc, tmp_path / "draft.dcm")
    signed_doc = build_measurement_report(
        report,
        source,
        sop_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        verification=Verification("Doe^Jane", "St Elsewhere", SIGNED_AT),
        predecessor=draft_doc,
        instance_number=2,
    )
    signed = build_and_check(signed_doc, tmp_path / "signed.dcm")
    assert draft_doc.SOPClassUID == EnhancedSRStorage
    for reading in (draft, signed):
        assert [f.text for f in reading.findings] == [f.text for f in FINDINGS]
        assert [f.tracking_id for f in reading.findings] == ["Finding 1", "Finding 2", "Finding 3"]
        first, second, third = reading.findings
        assert [r.sop_instance_uid for r in first.references] == [seen[0].sop_instance_uid, seen[1].sop_instance_uid]
        assert [r.sop_instance_uid for r in second.references] == [seen[1].sop_instance_uid]
        assert third.references == ()
        assert first.finding_type is not None and first.finding_type.value == codes.SCT.Pneumothorax.value
        assert second.finding_type is None  # "No pleural effusion." is not a pleural effusion
        assert [r.sop_instance_uid for r in reading.library] == [s.sop_instance_uid for s in seen]
        assert reading.impression == report.impression and reading.limitations == report.limitations
        assert reading.device_observer_uid == ALGORITHM.device_uid
        assert reading.algorithm_name == ALGORITHM.model_id
    assert (draft.completion_flag, draft.verification_flag, draft.series_number) == (
        "PARTIAL",
        "UNVERIFIED",
        MEASUREMENT_DRAFT_SERIES_NUMBER,
    )
    assert draft.verifying_observers == () and draft.person_observers == ()
    assert (draft.findings[0].urgency, draft.findings[0].certainty) == ("Critical", "possible")
    assert (signed.completion_flag, signed.verification_flag, signed.series_number) == (
        "COMPLETE",
        "VERIFIED",
        MEASUREMENT_SIGNED_SERIES_NUMBER,
    )
    assert signed.verifying_observers == ("Doe^Jane",) and signed.person_observers == ("Doe^Jane",)
    assert signed.predecessors == (draft.sop_instance_uid,)
    assert signed.findings[0].urgency == ""  # the model's categories belong to the draft
    assert first.tracking_uid != draft.findings[0].tracking_uid  # each document tracks its own findings


def test_multiframe_sources_carry_frame_numbers(tmp_path: Path) -> None:
    header = pydicom.dcmread(pydicom_test_file("examples_ybr_color.dcm"), stop_before_pixels=True)
    uids = (str(header.SOPClassUID), str(header.SOPInstanceUID), str(header.SeriesInstanceUID))
    count = int(header.NumberOfFrames)
    seen = (SeenFrame(1, *uids, 1, count), SeenFrame(1, *uids, 15, count), SeenFrame(2, *uids, 30, count))
    report = a_report(seen, (Finding("A cyst.", (1,)), Finding("Another view.", (2,))))
    document = build_measurement_report(
        report, header, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid()
    )
    reading = build_and_check(document, tmp_path / "us.dcm")
    assert [r.frames for r in reading.findings[0].references] == [(1, 15)]
    assert [r.frames for r in reading.findings[1].references] == [(30,)]
    assert [r.frames for r in reading.library] == [(1, 15, 30)]


def test_a_draft_without_findings_is_still_a_measurement_report(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = ct
    document = build_measurement_report(
        a_report(seen, ()), source, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid()
    )
    reading = build_and_check(document, tmp_path / "empty.dcm")
    assert reading.findings == () and reading.impression.startswith("Small right pneumothorax")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Right pleural effusion, moderate.", codes.SCT.PleuralEffusion),
        ("Small pericardial effusion.", codes.SCT.PericardialEffusion),
        ("Spiculated nodule in the right upper lobe.", codes.SCT.Nodule),
        ("Ground-glass opacities in both lower lobes.", codes.DCM.GroundGlassOpacity),
        ("No pneumothorax.", None),
        ("Pneumothorax is not seen.", None),
        ("Degenerative changes.", None),
    ],
)
def test_findings_are_coded_only_when_named_and_not_negated(text: str, code: object) -> None:
    assert finding_code(text) == code


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Settings, int, list[Any]]:
    """A CT study of three slices in the store (SQLite) and a draft on it."""
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'data' / 'db.sqlite'}")
    upgrade(settings.database_url)
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 3, rows=16, columns=16))
    return settings, add_report(settings, study_id, evidence_of(headers)), headers


def objects(settings: Settings) -> dict[tuple[str, str], ReportObject]:
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(ReportObject)).all()
        session.expunge_all()
    return {(row.subject, row.kind.value): row for row in rows}


def test_the_draft_gets_its_measurement_report_and_key_images_beside_its_sr_once(
    stored: tuple[Settings, int, list[Any]],
) -> None:
    settings, report_id, headers = stored
    sr_path = ensure_draft_sr(settings, report_id)
    rows = objects(settings)
    assert set(rows) == {(f"draft:{report_id}", "tid1500"), (f"draft:{report_id}", "kos")}
    measurement, key_images = rows[(f"draft:{report_id}", "tid1500")], rows[(f"draft:{report_id}", "kos")]
    for row in (measurement, key_images):
        assert row.path == f"reports/{headers[0].StudyInstanceUID}/{row.sop_instance_uid}.dcm"
        assert (settings.data_dir / row.path).parent == sr_path.parent
        check_with_tools(settings.data_dir / row.path)
    reading = read_measurement_report(pydicom.dcmread(settings.data_dir / str(measurement.path)))
    assert reading.sop_instance_uid == measurement.sop_instance_uid and reading.verification_flag == "UNVERIFIED"
    assert [f.text for f in reading.findings] == ["Nodule in the right upper lobe.", "No effusion."]
    images = read_key_images(pydicom.dcmread(settings.data_dir / str(key_images.path)))
    assert [i.sop_instance_uid for i in images.images] == [str(h.SOPInstanceUID) for h in headers]
    assert images.documents == (str(pydicom.dcmread(sr_path).SOPInstanceUID),)
    # again, and with a lost file: the same rows, the same instance
    (settings.data_dir / str(measurement.path)).unlink()
    files = ensure_draft_objects(settings, report_id, sr_path)
    assert {k: r.sop_instance_uid for k, r in objects(settings).items()} == {
        k: r.sop_instance_uid for k, r in rows.items()
    }
    assert files["tid1500"] == settings.data_dir / str(measurement.path) and files["tid1500"].is_file()


def test_each_signed_version_gets_a_verified_measurement_report_and_no_key_images(
    stored: tuple[Settings, int, list[Any]],
) -> None:
    settings, report_id, _ = stored
    edited = [{"text": "Spiculated nodule, right upper lobe, 14 mm.", "images": [1]}]
    first = sign_report(settings, report_id, author="Doe^Jane", organization="St Elsewhere", findings=edited)
    second = sign_report(settings, report_id, author="Roe^Richard", organization="St Elsewhere")
    rows = objects(settings)
    assert (f"signed:{first}", "kos") not in rows and (f"signed:{second}", "kos") not in rows
    draft, v2, v3 = (rows[(s, "tid1500")] for s in (f"draft:{report_id}", f"signed:{first}", f"signed:{second}"))
    assert v2.revision_id == first and v2.series_uid == v3.series_uid != draft.series_uid
    for row in (v2, v3):
        check_with_tools(settings.data_dir / str(row.path))
    readings = [read_measurement_report(pydicom.dcmread(settings.data_dir / str(r.path))) for r in (v2, v3)]
    for reading, name in zip(readings, ("Doe^Jane", "Roe^Richard"), strict=True):
        assert (reading.completion_flag, reading.verification_flag) == ("COMPLETE", "VERIFIED")
        assert reading.verifying_observers == (name,)
        assert [f.text for f in reading.findings] == ["Spiculated nodule, right upper lobe, 14 mm."]
    assert readings[0].predecessors == (draft.sop_instance_uid,) and readings[1].predecessors == (v2.sop_instance_uid,)
    assert report_object_file(settings, report_id, second, ReportObjectKind.MEASUREMENT) == settings.data_dir / str(
        v3.path
    )
    with pytest.raises(ObjectUnavailable, match="no key images"):
        report_object_file(settings, report_id, second, ReportObjectKind.KEY_IMAGES)


def test_a_withdrawn_draft_gets_no_new_object(stored: tuple[Settings, int, list[Any]]) -> None:
    settings, report_id, _ = stored
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.status = ReportStatus.WITHDRAWN
    assert ensure_draft_sr(settings, report_id).is_file()  # the SR (a rejection note needs it)
    assert objects(settings) == {}
    with pytest.raises(ObjectUnavailable, match="closed"):
        report_object_file(settings, report_id, None, ReportObjectKind.MEASUREMENT)


def test_a_rebuilt_measurement_report_is_the_same_document(ct: tuple[Dataset, tuple[SeenFrame, ...]]) -> None:
    source, seen = ct
    uids = {"sop_instance_uid": generate_uid(), "series_instance_uid": generate_uid()}
    first, second = (build_measurement_report(a_report(seen), source, **uids) for _ in range(2))
    assert first == second


@pytest.fixture(scope="module")
def two_shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, tuple[SeenFrame, ...]]:
    """Two single-frame images of different aspect: 40 x 80 (wide) and 90 x 30 (tall), rows by columns."""
    folder = tmp_path_factory.mktemp("shapes")
    wide = pydicom.dcmread(write_ct_series(folder / "wide", 1, rows=40, columns=80)[0], stop_before_pixels=True)
    tall = pydicom.dcmread(write_ct_series(folder / "tall", 1, rows=90, columns=30)[0], stop_before_pixels=True)
    seen = tuple(
        SeenFrame(
            n, str(h.SOPClassUID), str(h.SOPInstanceUID), str(h.SeriesInstanceUID), rows=h.Rows, columns=h.Columns
        )
        for n, h in enumerate((wide, tall), start=1)
    )
    return wide, seen


def rectangle(left: float, top: float, right: float, bottom: float) -> tuple[tuple[float, float], ...]:
    return ((left, top), (right, top), (right, bottom), (left, bottom), (left, top))


def test_a_finding_with_a_box_is_a_rectangle_on_the_pixels_of_its_frame(
    two_shapes: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = two_shapes
    findings = (
        # wide 40 x 80: the model's square is 80 x 80, the frame 20 rows down in it
        Finding("Spiculated nodule in the right upper lobe.", (1,), box=(0.25, 0.25, 0.75, 0.5)),
        # tall 90 x 30: the square is 90 x 90, the frame 30 columns right in it; the box runs past its edge
        Finding("Opacity at the left base.", (2,), box=(0.4, 0.1, 0.9, 0.5)),
        Finding("No pleural effusion.", (2,)),
        Finding("A box wholly in the padding.", (2,), box=(0.0, 0.0, 0.2, 0.2)),
    )
    document = build_measurement_report(
        a_report(seen, findings), source, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid()
    )
    reading = build_and_check(document, tmp_path / "regions.dcm")  # dciodvfy clean, read back through highdicom
    nodule, opacity, effusion, padding = reading.findings
    assert [f.text for f in reading.findings] == [f.text for f in findings]
    assert nodule.region == rectangle(20.0, 0.0, 60.0, 20.0)
    assert opacity.region == rectangle(6.0, 9.0, 30.0, 45.0)
    assert [r.sop_instance_uid for r in nodule.references] == [seen[0].sop_instance_uid]
    assert [r.sop_instance_uid for r in opacity.references] == [seen[1].sop_instance_uid]
    assert nodule.finding_type is not None and nodule.finding_type.value == codes.SCT.Nodule.value
    assert (nodule.label, opacity.label) == (findings[0].text, findings[1].text)  # OHIF's label
    assert opacity.finding_type is None  # its Finding row holds the free-text label, not a concept
    assert effusion.region == () and padding.region == () and effusion.label == ""
    assert [r.sop_instance_uid for r in padding.references] == [seen[1].sop_instance_uid]
    schemes = [item.CodingSchemeDesignator for item in document.CodingSchemeIdentificationSequence]
    assert "CORNERSTONEJS" in schemes
    graphic = [
        item
        for group in document.ContentSequence[-2].ContentSequence
        for item in group.ContentSequence
        if item.ValueType == "SCOORD"
    ]
    assert [(g.GraphicType, len(g.GraphicData)) for g in graphic] == [("POLYLINE", 10), ("POLYLINE", 10)]


def test_a_box_on_a_montage_or_without_a_known_frame_size_stays_image_level(
    two_shapes: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = two_shapes
    montage = (replace(seen[0], image=1), replace(seen[1], image=1), replace(seen[1], image=2, rows=0, columns=0))
    findings = (Finding("Nodule.", (1,), box=(0.1, 0.1, 0.5, 0.5)), Finding("Mass.", (2,), box=(0.1, 0.1, 0.5, 0.5)))
    document = build_measurement_report(
        a_report(montage, findings), source, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid()
    )
    reading = build_and_check(document, tmp_path / "montage.dcm")
    assert [f.region for f in reading.findings] == [(), ()]
    assert "CORNERSTONEJS" not in [i.CodingSchemeDesignator for i in document.CodingSchemeIdentificationSequence]


def test_a_stored_draft_box_reaches_its_report_and_an_unchanged_signed_finding_keeps_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'data' / 'db.sqlite'}")
    upgrade(settings.database_url)
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 2, rows=40, columns=80))
    report_id = add_report(settings, study_id, evidence_of(headers))
    boxed = {"text": "Nodule in the right upper lobe.", "images": [1], "box": [0.25, 0.25, 0.75, 0.5]}
    with session_scope(settings.database_url) as session:
        row = session.get(Report, report_id)
        assert row is not None
        row.findings = {**row.findings, "findings": [boxed, {"text": "No effusion.", "images": [2]}]}
    ensure_draft_sr(settings, report_id)
    unchanged = sign_report(settings, report_id, author="Doe^Jane", organization="St Elsewhere", findings=[boxed])
    edited = [{"text": "Nodule in the right upper lobe, 9 mm.", "images": [1]}]
    changed = sign_report(settings, report_id, author="Doe^Jane", organization="St Elsewhere", findings=edited)
    rows = objects(settings)
    readings = [
        read_measurement_report(pydicom.dcmread(settings.data_dir / str(rows[(subject, "tid1500")].path)))
        for subject in (f"draft:{report_id}", f"signed:{unchanged}", f"signed:{changed}")
    ]
    assert [r.findings[0].region for r in readings] == [rectangle(20.0, 0.0, 60.0, 20.0)] * 2 + [()]
    assert readings[0].findings[1].region == ()
