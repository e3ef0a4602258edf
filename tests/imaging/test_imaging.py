"""Pixels to model-ready images: LUT and window maths, colour, palettes, frames, and every bundled test file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from integration.imaging.frames import fit, frame_to_rgb, pad_to_square, render_frame
from integration.imaging.pixels import UndecodableImage, decode_frame, number_of_frames
from integration.imaging.windows import (
    WINDOW_PRESETS,
    VoiFunction,
    Window,
    apply_window,
    choose_window,
    preset_window,
)

#: pydicom's bundled test files (never pydicom.data.get_testdata_files: it goes to the network).
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: Files that are broken on purpose; everything else with pixel data must decode.
BROKEN = {
    "JPEG-lossy.dcm": "known-corrupt 12-bit JPEG Extended stream (pydicom's own tests mark it bad)",
    "JPEG2000-embedded-sequence-delimiter.dcm": "a sequence delimiter inside the JPEG 2000 codestream",
    "MR_truncated.dcm": "pixel data shorter than Rows x Columns",
    "badVR.dcm": "Number of Frames '1A'",
    "meta_missing_tsyntax.dcm": "no Transfer Syntax UID, no Image Pixel module",
    "nested_priv_SQ.dcm": "pixel data without an Image Pixel module",
}
#: Every transfer syntax of the bundled files with pixel data.  JPEG Extended
#: (1.2.840.10008.1.2.4.51) is covered by JPGExtended.dcm; its other sample,
#: JPEG-lossy.dcm, is the known-corrupt file.
EXPECTED_SYNTAXES = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
}
#: The same 100x100 RGB picture, stored as YCbCr (JPEG and uncompressed 4:2:2).
YBR_VARIANTS = [
    "SC_rgb_dcmtk_+eb+cy+n1.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
]
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _files_with_pixels() -> list[Path]:
    paths = []
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = _read(path)
        except Exception:  # README, JSON, gzip: not DICOM at all
            continue
        if any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            paths.append(path)
    return paths


PIXEL_FILES = _files_with_pixels()


def _decode_all(ds: Dataset) -> list[np.ndarray]:
    """Decode the first and last frame (all frames would be slow for 30-frame files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        last = number_of_frames(ds) - 1
        return [frame_to_rgb(ds, index) for index in sorted({0, last})]


def gray_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: object) -> Dataset:
    """A minimal single- or multi-frame grayscale image holding ``pixels`` (uint16 or int16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _gray(image: np.ndarray) -> np.ndarray:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    return image[..., 0]


# Stored values 1064, 1164, 964, 0 are 40, 140, -60 and -1024 HU after an intercept of -1024.
STORED = np.array([[1064, 1164], [964, 0]], dtype=np.uint16)


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        # LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, c=40, w=400.
        (None, [[128, 192], [64, 0]]),
        ("LINEAR", [[128, 192], [64, 0]]),
        # LINEAR_EXACT: ((x - c) / w + 0.5) * 255.
        ("LINEAR_EXACT", [[128, 191], [64, 0]]),
        # SIGMOID: 255 / (1 + exp(-4 (x - c) / w)).
        ("SIGMOID", [[128, 186], [69, 0]]),
    ],
)
def test_rescale_then_header_window(function: str | None, expected: list[list[int]]) -> None:
    attributes: dict[str, Any] = {"RescaleIntercept": -1024, "RescaleSlope": 1}
    attributes.update(WindowCenter=[40, 300], WindowWidth=[400, 1500])  # the first pair is used
    if function:
        attributes["VOILUTFunction"] = function
    ds = gray_dataset(STORED, **attributes)
    assert decode_frame(ds).values.tolist() == [[40, 140], [-60, -1024]]
    assert _gray(frame_to_rgb(ds)).tolist() == expected


def test_rescale_slope_is_applied() -> None:
    ds = gray_dataset(np.array([[0, 10]], dtype=np.uint16), RescaleSlope=2.5, RescaleIntercept=-5)
    assert decode_frame(ds).values.tolist() == [[-5, 20]]


def test_monochrome1_is_inverted() -> None:
    normal = gray_dataset(STORED, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    inverted = gray_dataset(STORED, "MONOCHROME1", RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    assert (_gray(frame_to_rgb(inverted)) == 255 - _gray(frame_to_rgb(normal))).all()
    assert _gray(frame_to_rgb(inverted)).tolist() == [[127, 63], [191, 255]]


def _lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    return item


def test_voi_lut_sequence_wins_over_the_header_window_and_spans_its_own_range() -> None:
    # Entries for inputs 10..13; the data only reach 4000 although 16 bits are declared.
    voi = _lut_item([4, 10, 16], [0, 1000, 2000, 4000])
    ds = gray_dataset(np.array([[5, 11], [12, 20]], dtype=np.uint16), WindowCenter=0, WindowWidth=10)
    ds.VOILUTSequence = Sequence([voi])
    rendered = render_frame(decode_frame(ds))
    assert rendered.window == "voi_lut"
    assert _gray(rendered.pixels).tolist() == [[0, 64], [128, 255]]
    explicit = render_frame(decode_frame(ds), Window(11.0, 4.0, "narrow", VoiFunction.LINEAR_EXACT))
    assert explicit.window == "narrow"
    assert _gray(explicit.pixels).tolist() == [[0, 128], [191, 255]]


def test_modality_lut_sequence() -> None:
    ds = gray_dataset(np.array([[0, 1], [2, 9]], dtype=np.uint16))
    item = _lut_item([3, 0, 16], [100, 200, 300])
    item.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = Sequence([item])
    assert decode_frame(ds).values.tolist() == [[100, 200], [300, 300]]


def test_enhanced_multi_frame_uses_each_frames_functional_groups() -> None:
    pixels = np.stack([STORED, STORED])
    ds = gray_dataset(pixels)
    shared = Dataset()
    voi = Dataset()
    voi.WindowCenter = 40
    voi.WindowWidth = 400
    shared.FrameVOILUTSequence = Sequence([voi])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for intercept in (-1024, -924):
        group = Dataset()
        transform = Dataset()
        transform.RescaleIntercept = intercept
        transform.RescaleSlope = 1
        transform.RescaleType = "HU"
        group.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    assert decode_frame(ds, 0).values.tolist() == [[40, 140], [-60, -1024]]
    assert decode_frame(ds, 1).values.tolist() == [[140, 240], [40, -924]]
    assert _gray(frame_to_rgb(ds, 1)).tolist() == [[192, 255], [128, 0]]
    with pytest.raises(IndexError):
        decode_frame(ds, 2)


@pytest.mark.parametrize(
    ("body_part", "series", "study", "expected"),
    [
        ("CHEST", "", "", "lung"),
        ("", "Lung 1.0 B70f", "", "lung"),
        ("", "", "CT THORAX W/O CONTRAST", "lung"),
        ("HEAD", "", "", "brain"),
        ("", "", "CT BRAIN", "brain"),
        ("HEAD", "Bone 0.6 H70h", "", "bone"),
        ("ABDOMEN", "", "", "soft_tissue"),
        ("", "", "", "soft_tissue"),
    ],
)
def test_ct_presets_by_body_part(body_part: str, series: str, study: str, expected: str) -> None:
    ds = gray_dataset(STORED, RescaleIntercept=-1024, BodyPartExamined=body_part)
    ds.SeriesDescription = series
    ds.StudyDescription = study
    assert choose_window(ds) == WINDOW_PRESETS[expected]
    rendered = render_frame(decode_frame(ds))
    assert rendered.window == expected
    assert (rendered.pixels == frame_to_rgb(ds, window=WINDOW_PRESETS[expected])).all()


def test_header_window_beats_presets_and_presets_are_ct_only() -> None:
    ds = gray_dataset(STORED, RescaleIntercept=-1024, BodyPartExamined="CHEST", WindowCenter=50, WindowWidth=350)
    assert choose_window(ds) == Window(50.0, 350.0, "header")
    mr = gray_dataset(STORED, Modality="MR", SOPClassUID=MRImageStorage, BodyPartExamined="HEAD")
    assert preset_window(mr) is None and choose_window(mr) is None
    capture = gray_dataset(STORED, BodyPartExamined="CHEST")  # CT without a modality LUT: not in HU
    assert preset_window(capture) is None


def test_preset_values() -> None:
    presets = {name: (w.center, w.width) for name, w in WINDOW_PRESETS.items()}
    assert presets["lung"] == (-600, 1600)
    assert presets["mediastinum"] == (50, 500)
    assert presets["bone"] == (500, 2000)
    assert presets["brain"] == (40, 80)


def test_invalid_header_window_falls_back_to_the_frame_range() -> None:
    ramp = np.arange(0, 1000, 10, dtype=np.uint16).reshape(10, 10)
    ds = gray_dataset(ramp, Modality="MR", SOPClassUID=MRImageStorage, WindowCenter=100, WindowWidth=0)
    rendered = render_frame(decode_frame(ds))
    assert rendered.window == "auto"
    gray = _gray(rendered.pixels)
    assert gray[0, 0] == 0 and gray[-1, -1] == 255
    assert (np.diff(gray.ravel().astype(int)) >= 0).all()


def test_eight_bit_gray_without_window_is_shown_as_stored() -> None:
    path = TEST_FILES / "image_dfl.dcm"  # 8-bit MONOCHROME2, no window
    ds = _read(path)
    rendered = render_frame(decode_frame(ds))
    assert rendered.window == "native"
    assert (_gray(rendered.pixels) == ds.pixel_array).all()


def test_window_validation() -> None:
    with pytest.raises(ValueError, match="too small"):
        Window(0.0, 0.5, "bad")
    with pytest.raises(ValueError, match="finite"):
        Window(float("nan"), 100.0, "bad")
    assert Window(0.0, 0.5, "exact", VoiFunction.LINEAR_EXACT).width == 0.5


def test_width_one_is_a_threshold() -> None:
    values = np.array([[9.4, 9.5, 9.6]], dtype=np.float32)
    assert apply_window(values, Window(10.0, 1.0, "threshold")).tolist() == [[0, 0, 255]]


@pytest.mark.parametrize("name", YBR_VARIANTS)
def test_ybr_is_converted_to_rgb(name: str) -> None:
    reference = _read(TEST_FILES / "SC_rgb_rle.dcm").pixel_array.astype(int)
    ds = _read(TEST_FILES / name)
    assert ds.PhotometricInterpretation.startswith("YBR_FULL")
    image = frame_to_rgb(ds)
    assert image.shape == (100, 100, 3)
    difference = np.abs(image.astype(int) - reference)
    assert difference.mean() < 4, "lossy JPEG differs a little; YCbCr shown as RGB would differ by ~90"


def test_rgb_of_more_than_eight_bits_is_scaled() -> None:
    eight = frame_to_rgb(_read(TEST_FILES / "SC_rgb_rle.dcm"))
    for name in ("SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"):
        assert np.abs(frame_to_rgb(_read(TEST_FILES / name)).astype(int) - eight).max() <= 1


def test_palette_color() -> None:
    ds = _read(TEST_FILES / "examples_palette.dcm")
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    image = frame_to_rgb(ds)
    assert image.shape == (ds.Rows, ds.Columns, 3) and image.dtype == np.uint8
    expected = apply_color_lut(ds.pixel_array, ds) >> 8  # 16-bit palette entries
    assert (image == expected).all()
    assert (image[..., 0] != image[..., 2]).any(), "a palette image is in colour"
    assert render_frame(decode_frame(ds), WINDOW_PRESETS["lung"]).window is None


def test_multi_frame_frames_are_distinct() -> None:
    ds = _read(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    first, second = frame_to_rgb(ds, 0), frame_to_rgb(ds, 1)
    assert (first == ds.pixel_array[0]).all() and (second == ds.pixel_array[1]).all()
    assert not (first == second).all()
    ultrasound = _read(TEST_FILES / "examples_ybr_color.dcm")  # 30 frames, JPEG YBR_FULL_422
    assert number_of_frames(ultrasound) == 30
    assert frame_to_rgb(ultrasound, 29).shape == (240, 320, 3)


@pytest.mark.parametrize("path", PIXEL_FILES, ids=lambda p: p.relative_to(TEST_FILES).as_posix())
def test_every_bundled_file_with_pixels_decodes_or_is_known_broken(path: Path) -> None:
    ds = _read(path)
    if path.name in BROKEN:
        with pytest.raises(UndecodableImage) as caught:
            _decode_all(ds)
        assert str(caught.value), "the error says why"
        return
    for image in _decode_all(ds):
        assert image.dtype == np.uint8
        assert image.shape == (ds.Rows, ds.Columns, 3)


def test_all_transfer_syntaxes_decode() -> None:
    decoded = set()
    for path in PIXEL_FILES:
        if path.name in BROKEN:
            continue
        ds = _read(path)
        _decode_all(ds)
        decoded.add(str(ds.file_meta.TransferSyntaxUID))
    assert decoded == EXPECTED_SYNTAXES


def test_broken_files_say_why() -> None:
    with pytest.raises(UndecodableImage, match="less than expected"):
        frame_to_rgb(_read(TEST_FILES / "MR_truncated.dcm"))
    with pytest.raises(UndecodableImage, match="JPEG Extended"):
        frame_to_rgb(_read(TEST_FILES / "JPEG-lossy.dcm"))
    with pytest.raises(UndecodableImage, match="Rows is missing"):
        frame_to_rgb(_read(TEST_FILES / "nested_priv_SQ.dcm"))
    no_pixels = gray_dataset(STORED)
    del no_pixels.PixelData
    with pytest.raises(UndecodableImage, match="no pixel data"):
        frame_to_rgb(no_pixels)
    assert issubclass(UndecodableImage, ValueError)


@pytest.mark.parametrize("shape", [(3, 5, 3), (6, 2, 3), (4, 7)])
def test_pad_to_square_centres_and_never_crops(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(1).integers(1, 255, size=shape, dtype=np.uint8)
    padded = pad_to_square(image, fill=0)
    side = max(shape[:2])
    assert padded.shape == (side, side, *shape[2:])
    top, left = (side - shape[0]) // 2, (side - shape[1]) // 2
    assert (padded[top : top + shape[0], left : left + shape[1]] == image).all()
    assert int((padded == 0).sum()) == padded.size - image.size


def test_pad_to_square_fill_and_square_input() -> None:
    image = np.zeros((2, 4, 3), dtype=np.uint8)
    assert (pad_to_square(image, fill=7)[0] == 7).all()
    square = np.ones((3, 3, 3), dtype=np.uint8)
    assert pad_to_square(square) is square


def test_fit_keeps_the_aspect_ratio_and_does_not_enlarge_by_default() -> None:
    image = np.full((1000, 500, 3), 90, dtype=np.uint8)
    shrunk = fit(image, 512)
    assert shrunk.shape == (512, 256, 3) and (shrunk == 90).all()
    small = np.full((40, 20, 3), 90, dtype=np.uint8)
    assert fit(small, 512) is small
    assert fit(small, 80, upscale=True).shape == (80, 40, 3)
    with pytest.raises(ValueError):
        fit(image.astype(np.uint16), 512)
