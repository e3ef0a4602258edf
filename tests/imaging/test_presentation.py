"""How the chosen images are given to a model: segment centres, separate images, a labelled montage, a whole series."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, generate_uid

from integration.imaging.montage import grid_side, labelled_montage
from integration.imaging.routing import PRESENTATIONS, RoutingRule
from integration.imaging.selection import MONTAGE_MAX_TILES, Evidence, prepare_study
from integration.imaging.slices import even_sample
from tests.imaging.builders import PATIENT_ID, PATIENT_NAME, axial_series, dataset, uids, write

CHEST = {"BodyPartExamined": "CHEST"}


@pytest.mark.parametrize(("count", "expected"), [(2, [75, 225]), (4, [37, 112, 187, 262]), (1, [150])])
def test_a_sample_of_300_slices_takes_the_centres_of_equal_segments(count: int, expected: list[int]) -> None:
    assert even_sample(list(range(300)), count) == expected


def test_two_of_300_real_slices_are_a_quarter_and_three_quarters_down_the_volume(tmp_path: Path) -> None:
    uid = generate_uid()
    heights = list(range(300))
    random.Random(7).shuffle(heights)
    study = [dataset(uid, position=[0, 0, z], number=n) for n, z in enumerate(heights, 1)]
    prepared = prepare_study(write(tmp_path, study), rules=[RoutingRule(modality="CT")], max_images=2, image_size=8)
    by_height = sorted(study, key=lambda ds: ds.ImagePositionPatient[2])
    assert uids(prepared.images) == [[by_height[75].SOPInstanceUID], [by_height[225].SOPInstanceUID]]
    assert [image.label for image in prepared.images] == [
        "CT series 1, slice 76/300, soft tissue window",
        "CT series 1, slice 226/300, soft tissue window",
    ]


def test_a_montage_is_one_image_of_every_position_in_every_window_labelled_and_in_order(tmp_path: Path) -> None:
    study = axial_series(40, **CHEST)
    prepared = prepare_study(write(tmp_path, study), presentation="montage", max_images=1, image_size=384)
    assert prepared.rule.name == "ct-chest"
    (image,) = prepared.images
    positions = [study[i] for i in (5, 15, 25, 35)]  # the centres of four segments of 40 slices
    expected = [
        Evidence(CTImageStorage, ds.SOPInstanceUID, ds.SeriesInstanceUID, 1, window)
        for window in ("lung", "mediastinum")
        for ds in positions
    ]
    assert image.evidence == tuple(expected)
    assert image.window == "lung"
    assert image.label == (
        "montage of 4 slices x 2 windows (8 tiles, numbered row by row): CT series 1, slices 6, 16, 26, 36/40; "
        "tiles 1-4 lung window; tiles 5-8 mediastinum window"
    )
    assert image.pixels.shape == (384, 384, 3) and not image.pixels.flags.writeable
    tiles = [image.pixels[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128, 0] for r in range(3) for c in range(3)]
    for tile in tiles[:8]:
        # Every slice is -1024 HU: one grey level, but for the white text of the burned-in tile label.
        assert tile[:20, :77].max() > 200, "a label in the top-left corner, at most 60 % of the tile wide"
        assert len(np.unique(tile[24:-1, :-1])) == len(np.unique(tile[:-1, 78:-1])) == 1, "nothing burned elsewhere"
        assert not tile[-1].any() and not tile[:, -1].any(), "a black edge between tiles"
    assert not tiles[8].any(), "the ninth cell of the 3x3 grid is empty"
    single = write(tmp_path / "one", axial_series(1, **CHEST))
    (one,) = prepare_study(single, presentation="montage", image_size=64).images
    assert one.label.startswith("montage of 1 slice x 2 windows (2 tiles, numbered row by row): CT series 1, slice 1/1")
    assert [e.window for e in one.evidence] == ["lung", "mediastinum"]


def test_a_montage_in_the_header_window_numbers_its_tiles(tmp_path: Path) -> None:
    study = axial_series(10)
    rule = RoutingRule(modality="CT", max_images=4)
    (image,) = prepare_study(write(tmp_path, study), rules=[rule], presentation="montage", image_size=64).images
    assert [e.sop_instance_uid for e in image.evidence] == [study[i].SOPInstanceUID for i in (1, 3, 6, 8)]
    assert all(e.window is None for e in image.evidence), "one window: the image's"
    assert image.label == (
        "montage of 4 slices (tiles numbered row by row): CT series 1, slices 2, 4, 7, 9/10, soft tissue window"
    )
    for text in (PATIENT_NAME, "Doe", PATIENT_ID):
        assert text not in image.label


def test_a_montage_takes_at_most_sixteen_tiles_and_one_frame_stays_unlabelled(tmp_path: Path) -> None:
    many = write(tmp_path / "ct", axial_series(40))
    (image,) = prepare_study(many, rules=[RoutingRule(modality="CT", max_images=100)], presentation="montage").images
    assert len(image.evidence) == MONTAGE_MAX_TILES
    radiograph = dataset(generate_uid(), sop_class=DigitalXRayImageStorageForPresentation, modality="DX", value=300)
    paths = write(tmp_path / "dx", [radiograph])
    (alone,) = prepare_study(paths, presentation="montage").images
    (separate,) = prepare_study(paths).images
    assert np.array_equal(alone.pixels, separate.pixels) and alone.label == separate.label


def test_labelled_montage_lays_tiles_out_row_by_row() -> None:
    assert [grid_side(n) for n in (1, 2, 4, 5, 9, 10, 16)] == [1, 2, 2, 3, 3, 4, 4]
    images = [np.full((10, 20, 3), 60 * n, dtype=np.uint8) for n in range(4)]
    canvas = labelled_montage(images, ["1", "2", "3", "4"], 200)
    assert canvas.shape == (200, 200, 3)
    assert [int(canvas[50, 50 + 100 * c, 0]) for c in range(2)] == [0, 60], "scaled to the tile"
    assert int(canvas[10, 150, 0]) == 0, "padded to square above and below"
    assert int(canvas[150, 150, 0]) == 180, "row by row"
    with pytest.raises(ValueError, match="one label per image"):
        labelled_montage(images, ["1"], 200)


def test_the_series_presentation_gives_every_slice_in_every_window_capped_by_the_model(tmp_path: Path) -> None:
    study = axial_series(12, **CHEST)
    paths = write(tmp_path, study)
    whole = prepare_study(paths, presentation="series", image_size=8)
    assert (whole.rule.name, len(whole.images)) == ("ct-chest", 24)
    assert uids(whole.images[:12]) == [[ds.SOPInstanceUID] for ds in study] == uids(whole.images[12:])
    assert {image.window for image in whole.images[12:]} == {"mediastinum"}
    capped = prepare_study(paths, presentation="series", max_images=6, image_size=8)
    assert uids(capped.images[:3]) == [[study[i].SOPInstanceUID] for i in (2, 6, 10)]
    assert len(capped.images) == 6


def test_an_unknown_presentation_is_refused(tmp_path: Path) -> None:
    assert PRESENTATIONS == ("montage", "separate", "series")
    with pytest.raises(ValueError, match="presentation must be one of"):
        prepare_study(write(tmp_path, axial_series(2)), presentation="grid")  # type: ignore[arg-type]
