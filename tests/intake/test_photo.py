"""Photos to DICOM (integration/intake/photo.py): validation, decoding, conversion checked by dciodvfy."""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from integration.imaging.referral import question_in, read_question
from integration.intake.part10 import split_part10
from integration.intake.photo import (
    PHOTO_MODALITY,
    PhotoDetails,
    PhotoInvalid,
    decode_photo,
    photo_to_dicom,
    validate_details,
)

DCIODVFY = "/usr/bin/dciodvfy"
FORM = {
    "patient_id": "MRN-0042",
    "patient_name": "Müller^Jörg",
    "birth_date": "1980-02-29",
    "sex": "m",
    "body_part": "hand",
    "clinical_question": "Pigmented lesion, growing: melanoma?",
    "study_description": "Dermatology photo",
    "laterality": "l",
}


def encoded(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def pixels(rows: int = 48, columns: int = 64) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (rows, columns, 3), dtype=np.uint8)


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims another size (CRC fixed, so only the size is wrong)."""
    raw = bytearray(encoded(np.zeros((1, 1, 3), np.uint8), "PNG"))
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def test_details_are_cleaned() -> None:
    details = validate_details(FORM, today=date(2026, 1, 1))
    assert details == PhotoDetails(
        patient_id="MRN-0042",
        patient_name="Müller^Jörg",
        birth_date="19800229",
        sex="M",
        body_part="HAND",
        clinical_question="Pigmented lesion, growing: melanoma?",
        study_description="Dermatology photo",
        laterality="L",
    )
    minimal = validate_details({**FORM, "study_description": " ", "laterality": "", "birth_date": "19991231"})
    assert minimal.study_description is None and minimal.laterality is None and minimal.birth_date == "19991231"


def test_a_photo_shows_recognizable_features_unless_the_uploader_says_no() -> None:
    assert validate_details(FORM).recognizable is True  # not asked: YES
    assert validate_details({**FORM, "recognizable_features": " "}).recognizable is True
    assert validate_details({**FORM, "recognizable_features": "YES"}).recognizable is True
    assert validate_details({**FORM, "recognizable_features": "no"}).recognizable is False
    image = pixels(8, 8)
    default = pydicom.dcmread(io.BytesIO(photo_to_dicom(image, validate_details(FORM)).part10))
    assert default.RecognizableVisualFeatures == "YES"
    said_no = photo_to_dicom(image, validate_details({**FORM, "recognizable_features": "No"}))
    assert pydicom.dcmread(io.BytesIO(said_no.part10)).RecognizableVisualFeatures == "NO"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"patient_id": ""}, "patient_id", "required"),
        ({"patient_id": "a\\b"}, "patient_id", "backslash"),
        ({"patient_id": "x" * 65}, "patient_id", "64"),
        ({"patient_name": "  "}, "patient_name", "required"),
        ({"patient_name": "Doe^Jane\x07"}, "patient_name", "person name"),
        ({"patient_name": "^^^"}, "patient_name", "no name"),
        ({"birth_date": "01/02/1980"}, "birth_date", "YYYYMMDD"),
        ({"birth_date": "19810229"}, "birth_date", "calendar"),
        ({"birth_date": "2090-01-01"}, "birth_date", "future"),
        ({"birth_date": ""}, "birth_date", "required"),
        ({"sex": "X"}, "sex", "M, F or O"),
        ({"body_part": "left/hand"}, "body_part", "letters"),
        ({"body_part": "A" * 17}, "body_part", "letters"),
        ({"clinical_question": "q" * 65}, "clinical_question", "64"),
        ({"clinical_question": ""}, "clinical_question", "required"),
        ({"study_description": "line\nbreak"}, "study_description", "control"),
        ({"laterality": "B"}, "laterality", "R, L"),
        ({"recognizable_features": "maybe"}, "recognizable_features", "YES or NO"),
    ],
)
def test_each_bad_field_is_named_without_its_value(changes: dict[str, str], field: str, message: str) -> None:
    with pytest.raises(PhotoInvalid) as caught:
        validate_details({**FORM, **changes}, today=date(2026, 1, 1))
    assert list(caught.value.errors) == [field] and message in caught.value.errors[field]
    for value in changes.values():
        if len(value) > 3:
            assert value not in str(caught.value)


def test_all_bad_fields_are_named_at_once() -> None:
    with pytest.raises(PhotoInvalid) as caught:
        validate_details({})
    assert set(caught.value.errors) == {  # the name is asked as ordinary fields; the family name is required
        "patient_id",
        "family_name",
        "birth_date",
        "sex",
        "body_part",
        "clinical_question",
    }


def test_png_and_jpeg_decode_to_rgb_and_modes_convert() -> None:
    image = pixels()
    assert np.array_equal(decode_photo(encoded(image, "PNG")), image)
    jpeg = encoded(image, "JPEG", quality=90)
    assert np.array_equal(decode_photo(jpeg), np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    decoded = decode_photo(encoded(grey, "PNG"))
    assert decoded.shape == (16, 16, 3) and np.array_equal(decoded[..., 1], grey)
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black: laid over white
    assert (decode_photo(encoded(rgba, "PNG")) == 255).all()


def test_exif_orientation_is_applied() -> None:
    image = pixels(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", exif=exif, quality=95)
    assert decode_photo(buffer.getvalue()).shape == (30, 20, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "not a JPEG or PNG"),
        (encoded(pixels(8, 8), "GIF"), "not a JPEG or PNG"),
        (encoded(pixels(8, 8), "BMP"), "not a JPEG or PNG"),
        (png_declaring(100_000, 100_000), "pixels"),
        (png_declaring(8000, 8000), "pixels"),
        (encoded(pixels(), "PNG")[:60], "damaged"),
    ],
)
def test_bad_files_are_refused_before_decoding(data: bytes, message: str) -> None:
    with pytest.raises(PhotoInvalid) as caught:
        decode_photo(data)
    assert list(caught.value.errors) == ["file"] and message in caught.value.errors["file"]


def test_photo_becomes_a_valid_secondary_capture_with_the_question_where_the_prompt_reads_it(tmp_path: Path) -> None:
    image = pixels()
    details = validate_details(FORM)
    instance = photo_to_dicom(image, details)
    path = tmp_path / "photo.dcm"
    path.write_bytes(instance.part10)

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.Modality == PHOTO_MODALITY
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        instance.study_uid,
        instance.series_uid,
        instance.sop_instance_uid,
    )
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert np.array_equal(ds.pixel_array, image)
    assert str(ds.PatientName) == "Müller^Jörg" and ds.PatientID == "MRN-0042"
    assert ds.PatientBirthDate == "19800229" and ds.PatientSex == "M"
    assert ds.BodyPartExamined == "HAND" and ds.Laterality == "L" and ds.StudyDescription == "Dermatology photo"
    assert ds.RecognizableVisualFeatures == "YES"  # the default: the uploader did not say otherwise
    assert ds.RequestAttributesSequence[0].ReasonForTheRequestedProcedure == details.clinical_question
    assert read_question(path) == details.clinical_question
    assert split_part10(instance.part10).transfer_syntax_uid == "1.2.840.10008.1.2.1"

    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    assert "SCImage" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report

    other = photo_to_dicom(image, details)
    assert len({instance.study_uid, other.study_uid, instance.sop_instance_uid, other.sop_instance_uid}) == 4


def test_name_fields_become_a_person_name_and_each_part_is_checked() -> None:
    form = {k: v for k, v in FORM.items() if k != "patient_name"}
    parts = {"family_name": " Rossi ", "given_name": "Maria", "middle_name": "Anna"}
    assert validate_details({**form, **parts}, today=date(2026, 1, 1)).patient_name == "Rossi^Maria^Anna"
    assert validate_details({**form, "family_name": "Rossi"}, today=date(2026, 1, 1)).patient_name == "Rossi"
    for field, bad in (
        ("given_name", "Ma^ria"),
        ("middle_name", "A=B"),
        ("family_name", "Ro\\ssi"),
        ("given_name", "M\x01"),
    ):
        with pytest.raises(PhotoInvalid) as caught:
            validate_details({**form, **parts, field: bad}, today=date(2026, 1, 1))
        assert list(caught.value.errors) == [field]
    with pytest.raises(PhotoInvalid) as caught:
        validate_details({**form, "family_name": "R" * 40, "given_name": "M" * 30}, today=date(2026, 1, 1))
    assert "64" in caught.value.errors["family_name"]


def test_a_long_question_is_kept_whole_in_reason_for_visit_and_cut_in_the_lo() -> None:
    question = "Spreading erythema after a cat bite; " * 20
    details = validate_details({**FORM, "clinical_question": question}, today=date(2026, 1, 1), question_chars=2000)
    ds = pydicom.dcmread(io.BytesIO(photo_to_dicom(pixels(), details).part10))
    assert ds.ReasonForVisit == question.strip()
    assert ds.RequestAttributesSequence[0].ReasonForTheRequestedProcedure == question[:64].strip()
    assert question_in(ds) == " ".join(question.split())
    with pytest.raises(PhotoInvalid) as caught:
        validate_details({**FORM, "clinical_question": "x" * 2001}, question_chars=2000)
    assert "2000" in caught.value.errors["clinical_question"]
