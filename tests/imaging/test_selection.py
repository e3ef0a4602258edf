"""Which series, slices and frames go to the model: real files written to tmp_path, no mocks."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RawDataStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)

from integration.imaging.instances import read_instance
from integration.imaging.routing import DEFAULT_RULES, WINDOW_PRESET_NAMES, RoutingRule
from integration.imaging.selection import Evidence, NoImages, NoRoutingRule, prepare_study
from integration.imaging.slices import even_sample, sort_slices
from integration.imaging.windows import WINDOW_PRESETS
from integration.samples import write_ct_series
from tests.imaging.builders import (
    PATIENT_ID,
    PATIENT_NAME,
    SAGITTAL,
    TEST_FILES,
    axial_series,
    dataset,
    uids,
    write,
)

CT_ONLY = [RoutingRule(name="ct", modality="CT", max_images=7)]


def test_non_images_and_localizers_are_skipped_with_reasons(tmp_path: Path) -> None:
    study = axial_series(3)
    series = study[0].SeriesInstanceUID
    non_images = {
        "presentation state": dataset(series, sop_class=GrayscaleSoftcopyPresentationStateStorage, pixels=False),
        "key object selection": dataset(series, sop_class=KeyObjectSelectionDocumentStorage, pixels=False),
        "radiation dose SR": dataset(series, sop_class=XRayRadiationDoseSRStorage, pixels=False),
        "encapsulated document": dataset(series, sop_class=EncapsulatedPDFStorage, pixels=False),
        "raw data": dataset(series, sop_class=RawDataStorage, pixels=False),
        "no pixel data": dataset(series, pixels=False),
        "localizer": dataset(series, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
    }
    paths = write(tmp_path, [*study, *non_images.values()])
    bundled = {"test-SR.dcm": "structured report", "rtplan.dcm": "radiotherapy object"}
    bundled |= {"rtdose.dcm": "radiotherapy object", "rtstruct.dcm": "radiotherapy object"}
    bundled["waveform_ecg.dcm"] = "waveform"
    for name in bundled:
        shutil.copy(TEST_FILES / name, tmp_path / name)
    prepared = prepare_study([*paths, *(tmp_path / name for name in bundled)], rules=CT_ONLY)
    reasons = dict(prepared.skipped)
    for reason, ds in non_images.items():
        assert reasons.pop(ds.SOPInstanceUID).startswith(reason)
    for name, reason in bundled.items():
        assert reasons.pop(pydicom.dcmread(TEST_FILES / name, force=True).SOPInstanceUID).startswith(reason)
    assert not reasons
    assert "X-Ray Radiation Dose SR Storage" in dict(prepared.skipped)[non_images["radiation dose SR"].SOPInstanceUID]
    assert uids(prepared.images) == [[ds.SOPInstanceUID] for ds in study]


def test_a_study_of_reports_only_raises_no_images(tmp_path: Path) -> None:
    for name in ("test-SR.dcm", "reportsi.dcm"):
        shutil.copy(TEST_FILES / name, tmp_path / name)
    with pytest.raises(NoImages) as caught:
        prepare_study([tmp_path / "test-SR.dcm", tmp_path / "reportsi.dcm"])
    assert str(caught.value) == (
        "no image for the model among 2 file(s): 1 x structured report (Comprehensive SR Storage); "
        "1 x structured report (Basic Text SR Storage)"
    )
    assert len(caught.value.skipped) == 2


@pytest.mark.filterwarnings("ignore:Expected implicit VR")  # pydicom, parsing the text file
def test_unreadable_and_duplicate_files_are_skipped(tmp_path: Path) -> None:
    study = axial_series(2)
    paths = write(tmp_path / "a", study)
    copy = tmp_path / "copy.dcm"
    shutil.copy(paths[0], copy)
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    prepared = prepare_study([*paths, copy, junk], rules=CT_ONLY)
    assert prepared.skipped == [
        (study[0].SOPInstanceUID, "duplicate of an instance already in the study"),
        ("file notes.txt", "no SOPClassUID, SOPInstanceUID, SeriesInstanceUID in the header"),
    ]
    assert len(prepared.images) == 2


def test_slices_are_sorted_by_position_not_instance_number(tmp_path: Path) -> None:
    uid = generate_uid()
    heights = [30.0, -10.0, 0.0, 20.0, 10.0, -20.0, 40.0]
    misleading_numbers = [1, 2, 3, 4, 5, 6, 7]
    study = [dataset(uid, position=[0, 0, z], number=n) for z, n in zip(heights, misleading_numbers, strict=True)]
    prepared = prepare_study(write(tmp_path, study), rules=CT_ONLY)
    by_height = sorted(study, key=lambda ds: ds.ImagePositionPatient[2])
    assert uids(prepared.images) == [[ds.SOPInstanceUID] for ds in by_height]
    assert prepared.images[1].label == "CT series 1, slice 2/7, soft tissue window"


def test_oblique_slices_follow_the_normal_and_missing_positions_fall_back(tmp_path: Path) -> None:
    uid = generate_uid()
    # Sagittal: the normal is row x column = (0,1,0) x (0,0,-1) = (-1,0,0), so larger x comes first.
    sagittal = [dataset(uid, position=[x, 5, 7], orientation=SAGITTAL, number=i) for i, x in enumerate([1, 3, 2])]
    instances = [read_instance(path) for path in write(tmp_path / "sag", sagittal)]
    ordered, by_position = sort_slices(instances)
    assert by_position
    assert [i.position[0] for i in ordered if i.position] == [3, 2, 1]
    unplaced = [dataset(uid, number=n) for n in (3, 1, 2)] + [dataset(uid), dataset(uid)]
    instances = [read_instance(path) for path in write(tmp_path / "numbers", unplaced)]
    ordered, by_position = sort_slices(instances)
    assert not by_position
    assert [i.instance_number for i in ordered] == [1, 2, 3, None, None]
    assert ordered[3].sop_instance_uid < ordered[4].sop_instance_uid


@pytest.mark.parametrize(("total", "count"), [(300, 8), (10, 4), (7, 7), (5, 9), (2, 2), (100, 2), (9, 1), (0, 3)])
def test_even_sample_takes_the_centre_of_each_equal_segment(total: int, count: int) -> None:
    items = list(range(total))
    picked = even_sample(items, count)
    assert len(picked) == min(total, count)
    assert picked == sorted(set(picked))
    if total > count:
        assert picked == [int((i + 0.5) * total / count) for i in range(count)]
        assert picked[0] > 0 and picked[-1] < total - 1, "never the first and last slice"
    if count == 1 and total:
        assert picked == [total // 2]
    assert even_sample(items, count) == picked, "deterministic"
    if total > count >= 2:
        gaps = np.diff(picked)
        assert gaps.max() - gaps.min() <= 1


def test_evidence_names_exactly_the_sampled_instances(tmp_path: Path) -> None:
    study = axial_series(20)
    prepared = prepare_study(write(tmp_path, study), rules=[RoutingRule(modality="CT", max_images=5)])
    # floor((i + 0.5) * 20 / 5) for i = 0..4: the centres of five segments of four slices
    expected = [study[i] for i in (2, 6, 10, 14, 18)]
    assert [image.evidence for image in prepared.images] == [
        (Evidence(CTImageStorage, ds.SOPInstanceUID, ds.SeriesInstanceUID, 1),) for ds in expected
    ]
    assert prepared.series_uids == [study[0].SeriesInstanceUID]


def test_frames_of_a_multi_frame_instance_are_sampled_evenly(tmp_path: Path) -> None:
    ds = dataset(
        generate_uid(),
        sop_class=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        modality="OT",
        shape=(10, 6, 6),
    )
    prepared = prepare_study(write(tmp_path, [ds]), max_images=4)
    assert [[e.frame for e in image.evidence] for image in prepared.images] == [[2], [4], [7], [9]]
    assert {e.sop_instance_uid for image in prepared.images for e in image.evidence} == {ds.SOPInstanceUID}
    assert prepared.images[1].label == "OT series 1, frame 4/10, automatic window"
    assert prepared.rule.name == "default"


def test_routing_by_calling_ae_body_part_and_modality(tmp_path: Path) -> None:
    rules = [
        RoutingRule(name="emergency", calling_ae="ER_CT", modality="CT", max_images=2),
        RoutingRule(name="chest", modality="CT", body_part="CHEST", windows=("lung",), max_images=3),
        RoutingRule(name="any"),
    ]
    chest = write(tmp_path / "chest", axial_series(6, SeriesDescription="Thorax 1.0"))
    assert prepare_study(chest, rules=rules, calling_ae="ER_CT").rule.name == "emergency"
    routed = prepare_study(chest, rules=rules, calling_ae="OTHER_AE")
    assert (routed.rule.name, routed.body_part, len(routed.images)) == ("chest", "CHEST", 3)
    assert {image.window for image in routed.images} == {"lung"}
    head = write(tmp_path / "head", axial_series(6, BodyPartExamined="HEAD"))
    assert prepare_study(head, rules=rules).rule.name == "any"
    mr = write(tmp_path / "mr", axial_series(4, modality="MR", sop_class=MRImageStorage))
    assert prepare_study(mr, rules=rules, calling_ae="ER_CT").rule.name == "any"
    with pytest.raises(NoRoutingRule, match="modalities MR"):
        prepare_study(mr, rules=rules[:2])


def test_default_rules_chest_ct_in_lung_and_mediastinum_windows(tmp_path: Path) -> None:
    prepared = prepare_study(write(tmp_path, axial_series(30, BodyPartExamined="CHEST")))
    assert (prepared.rule.name, prepared.modality, prepared.body_part) == ("ct-chest", "CT", "CHEST")
    assert [image.window for image in prepared.images] == ["lung"] * 4 + ["mediastinum"] * 4
    assert uids(prepared.images[:4]) == uids(prepared.images[4:])
    # Four positions, the centres of four segments of the 30 slices (0-based 3, 11, 18, 26).
    assert prepared.images[0].label == "CT series 1, slice 4/30, lung window"
    assert prepared.images[7].label == "CT series 1, slice 27/30, mediastinum window"
    assert set(prepared.timings) == {"read", "select", "decode", "preprocess", "total"}
    assert prepared.rule in DEFAULT_RULES
    single = prepare_study(write(tmp_path / "again", axial_series(30, BodyPartExamined="CHEST")), max_images=1)
    assert [image.window for image in single.images] == ["lung"]


def test_default_rules_head_ct_in_brain_window(tmp_path: Path) -> None:
    prepared = prepare_study(write(tmp_path, axial_series(5, StudyDescription="CT HEAD W/O")))
    assert prepared.rule.name == "ct-head"
    assert {image.window for image in prepared.images} == {"brain"}


def test_the_largest_series_is_chosen(tmp_path: Path) -> None:
    small = axial_series(3, series_number=2)
    large = axial_series(6, series_number=3)
    prepared = prepare_study(write(tmp_path, [*small, *large]), rules=CT_ONLY)
    assert prepared.series_uids == [large[0].SeriesInstanceUID]


def test_radiographs_take_images_across_series(tmp_path: Path) -> None:
    frontal = dataset(generate_uid(), sop_class=DigitalXRayImageStorageForPresentation, modality="DX", value=300)
    lateral = dataset(
        generate_uid(), sop_class=DigitalXRayImageStorageForPresentation, modality="DX", series_number=2, value=300
    )
    prepared = prepare_study(write(tmp_path, [lateral, frontal]))
    assert prepared.rule.name == "dx"
    assert prepared.series_uids == [frontal.SeriesInstanceUID, lateral.SeriesInstanceUID]
    assert [image.label for image in prepared.images] == [
        "DX series 1, image 1/1, automatic window",
        "DX series 2, image 1/1, automatic window",
    ]


def test_montage_records_every_tile_in_order(tmp_path: Path) -> None:
    # A header window of 0..1000 shows stored value v as about v / 1000 * 255.
    uid = generate_uid()
    window = {"WindowCenter": 500, "WindowWidth": 1001}
    study = [
        dataset(uid, position=[0, 0, z], number=z + 1, value=100 * z, RescaleIntercept=0, **window) for z in range(8)
    ]
    rule = RoutingRule(modality="CT", montage=True, montage_grid=2, max_images=2)
    prepared = prepare_study(write(tmp_path, study), rules=[rule], image_size=64)
    assert uids(prepared.images) == [[ds.SOPInstanceUID for ds in study[:4]], [ds.SOPInstanceUID for ds in study[4:]]]
    first = prepared.images[0]
    assert first.pixels.shape == (64, 64, 3)
    tiles = [first.pixels[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32, 0] for r in range(2) for c in range(2)]
    assert [int(tile.mean()) for tile in tiles] == [0, 26, 51, 77]
    assert first.label == "CT series 1, slices 1, 2, 3, 4/8 (2x2 montage), header window"


def test_whole_series_passes_every_slice_unless_the_caller_caps_it(tmp_path: Path) -> None:
    study = axial_series(12)
    paths = write(tmp_path, study)
    rule = RoutingRule(modality="CT", whole_series=True, max_images=2)
    assert uids(prepare_study(paths, rules=[rule]).images) == [[ds.SOPInstanceUID] for ds in study]
    capped = prepare_study(paths, rules=[rule], max_images=3)
    assert uids(capped.images) == [[study[i].SOPInstanceUID] for i in (2, 6, 10)]


def test_images_are_square_and_shrunk_but_not_enlarged(tmp_path: Path) -> None:
    study = axial_series(2, shape=(8, 12), value=500)
    paths = write(tmp_path, study)
    native = prepare_study(paths, rules=CT_ONLY, image_size=None)
    assert {image.pixels.shape for image in native.images} == {(12, 12, 3)}
    assert {image.pixels.shape for image in prepare_study(paths, rules=CT_ONLY).images} == {(12, 12, 3)}
    shrunk = prepare_study(paths, rules=CT_ONLY, image_size=6)
    assert {image.pixels.shape for image in shrunk.images} == {(6, 6, 3)}
    pixels = native.images[0].pixels
    assert not pixels.flags.writeable
    assert (pixels[:2] == 0).all() and (pixels[-2:] == 0).all(), "padded above and below, nothing cropped"


def test_an_undecodable_frame_is_skipped_and_the_rest_are_kept(tmp_path: Path) -> None:
    study = axial_series(3)
    study[1].PixelData = study[1].PixelData[:-10]
    prepared = prepare_study(write(tmp_path, study), rules=CT_ONLY)
    assert uids(prepared.images) == [[study[0].SOPInstanceUID], [study[2].SOPInstanceUID]]
    ((uid, reason),) = prepared.skipped
    assert uid == study[1].SOPInstanceUID and reason.startswith("undecodable:")


def test_no_patient_data_in_logs_labels_or_reasons(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="integration")
    study = axial_series(4)
    study[2].PixelData = b""
    paths = write(tmp_path, [*study, dataset(generate_uid(), sop_class=EncapsulatedPDFStorage, pixels=False)])
    prepared = prepare_study(paths, rules=CT_ONLY)
    texts = [record.getMessage() for record in caplog.records]
    texts += [image.label for image in prepared.images] + [reason for _, reason in prepared.skipped]
    assert texts
    for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "19600229"):
        assert not any(secret in text for text in texts)


def test_rule_validation() -> None:
    with pytest.raises(ValidationError, match="Hounsfield"):
        RoutingRule(modality="MR", windows=("brain",))
    with pytest.raises(ValidationError, match="unknown window"):
        RoutingRule(modality="CT", windows=("liver",))
    with pytest.raises(ValidationError):
        RoutingRule(max_images=0)
    rule = RoutingRule.model_validate({"modality": " ct ", "body_part": "chest", "windows": ["lung"]})
    assert (rule.modality, rule.body_part, rule.windows) == ("CT", "CHEST", ("lung",))
    assert DEFAULT_RULES[-1].modality is None, "a catch-all comes last"


def test_routing_names_every_window_preset() -> None:
    assert tuple(WINDOW_PRESETS) == WINDOW_PRESET_NAMES
    for name in WINDOW_PRESET_NAMES:
        assert RoutingRule(modality="CT", windows=(name,)).windows == (name,)


def test_generated_ct_series_end_to_end(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, 30, rows=64, columns=64)
    prepared = prepare_study(paths)
    assert prepared.rule.name == "ct-chest"
    assert len(prepared.images) == 8
    # write_ct_series places slice i at z = -i, so in position order the files are reversed; the first
    # of four segment centres is sorted index floor(0.5 * 30 / 4) = 3: the fourth file from the end.
    first_uid = pydicom.dcmread(paths[-4], stop_before_pixels=True).SOPInstanceUID
    assert prepared.images[0].evidence[0].sop_instance_uid == first_uid
    assert all(image.pixels.shape == (64, 64, 3) for image in prepared.images)
