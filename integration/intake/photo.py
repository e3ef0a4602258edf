"""Clinical photos (JPEG or PNG) wrapped into DICOM Secondary Capture images for the same pipeline.

highdicom has no VL Photographic Image class, so a photo becomes a Secondary Capture Image
(:class:`highdicom.sc.SCImage`, conversion type ``DI``) with Modality ``XC`` (external-camera photography),
RGB pixels stored uncompressed (exactly the decoded image, upright after the EXIF orientation), a new study,
series and instance (or, for a photo added to a telemedicine case, the case's study with a series per upload
batch and instance numbers that continue), the patient module from the form (the name typed as ordinary fields,
:mod:`integration.intake.person_name`), Body Part Examined, and the referrer's clinical question: whole (up to
``upload_question_chars``) in Reason for Visit (0032,1066, UT, of the Patient Study module: dciodvfy accepts it
in a Secondary Capture image, where Requested Procedure Comments in the Request Attributes Sequence is a
standard-extended attribute), where the draft's prompt reads it first (:mod:`integration.imaging.referral`), and
its first 64 characters in Request Attributes Sequence > Reason for the Requested Procedure (0040,1002, LO,
what modalities and viewers show), and Recognizable Visual Features (0028,0302) as the uploader
answered whether the photo shows a face or other recognisable features (``YES`` unless they said no): an
image that says ``YES`` never goes to a model server outside the trust boundary (:mod:`worker.outbound`).

Everything typed is checked against its value representation (length, characters, dates) and refused with
one message per field; the image is checked before it is decoded (format, declared size) so a
decompression bomb costs nothing.  Messages never repeat what was typed.  Nothing here logs patient data.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from integration.intake.person_name import legacy_name, name_from_parts, typed_name_fields

#: Largest photo file accepted.
MAX_PHOTO_BYTES = 32 * 1024**2
#: Most pixels a photo may have (checked from its header, before decoding).
MAX_PHOTO_PIXELS = 50_000_000
#: Image formats accepted (Pillow's names).
PHOTO_FORMATS = ("JPEG", "PNG")
#: Modality of photos: external-camera photography.
PHOTO_MODALITY = "XC"
#: Manufacturer of the converted instances.
MANUFACTURER = "pacs-vlm"
#: Series description of converted photos.
SERIES_DESCRIPTION = "Clinical photograph"
#: Characters of an LO element (the short copy of the question).
LO_CHARS = 64

_LO_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")
_BODY_PART = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


class PhotoInvalid(ValueError):
    """The upload cannot be converted; ``errors`` maps each bad field to what is wrong (never its value).

    Parameters
    ----------
    errors : mapping of str to str
        Field name -> message.
    """

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = dict(errors)


@dataclass(frozen=True)
class PhotoDetails:
    """The validated form fields of a photo upload (patient data: never logged).

    Attributes
    ----------
    patient_id : str
        Patient ID (LO).
    patient_name : str
        Patient's name as a DICOM person name (``Family^Given``).
    birth_date : str
        ``YYYYMMDD``.
    sex : str
        ``M``, ``F`` or ``O``.
    body_part : str
        Body Part Examined (CS, upper case).
    clinical_question : str
        The referrer's question, whole (at most the limit given to :func:`validate_details`).
    study_description : str or None
        Study Description (LO).
    laterality : str or None
        ``R`` or ``L`` for a paired body part.
    recognizable : bool
        The photo shows a face or other features that could identify the patient (the uploader's answer;
        True unless they said no): Recognizable Visual Features (0028,0302) ``YES``.
    """

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    body_part: str
    clinical_question: str
    study_description: str | None = None
    laterality: str | None = None
    recognizable: bool = True


def _long_string(value: str | None, field: str, errors: dict[str, str], *, required: bool) -> str | None:
    """Check a LO value: at most 64 characters, no backslash or control characters."""
    text = (value or "").strip()
    if not text:
        if required:
            errors[field] = "is required"
        return None
    if len(text) > 64:
        errors[field] = "has more than 64 characters"
    elif _LO_FORBIDDEN.search(text):
        errors[field] = "contains a backslash or a control character"
    return text


_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _long_text(value: str | None, field: str, errors: dict[str, str], limit: int) -> str | None:
    """Check a long text (LT): required, at most ``limit`` characters, no control characters but line breaks."""
    text = (value or "").strip().replace("\r\n", "\n")
    if not text:
        errors[field] = "is required"
        return None
    if len(text) > limit:
        errors[field] = f"has more than {limit} characters"
    elif _TEXT_FORBIDDEN.search(text):
        errors[field] = "contains a control character"
    return text


def short_question(question: str) -> str:
    """The first 64 characters of a question on one line, as an LO element may hold them."""
    return " ".join(question.replace("\\", "/").split())[:LO_CHARS].strip()


def _birth_date(value: str | None, errors: dict[str, str], today: date) -> str | None:
    text = (value or "").strip()
    match = _DATE.fullmatch(text)
    if not text:
        errors["birth_date"] = "is required"
        return None
    if match is None:
        errors["birth_date"] = "is not a date as YYYYMMDD or YYYY-MM-DD"
        return None
    try:
        born = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        errors["birth_date"] = "is not a real calendar date"
        return None
    if born > today or born.year < 1900:
        errors["birth_date"] = "is in the future or before 1900"
        return None
    return born.strftime("%Y%m%d")


def validate_details(
    form: Mapping[str, str | None], *, today: date | None = None, question_chars: int = LO_CHARS
) -> PhotoDetails:
    """Check the form fields of a photo upload.

    Parameters
    ----------
    form : mapping of str to str or None
        ``patient_id``, the name (``family_name``, optional ``given_name`` and ``middle_name``; or, for the
        JSON API's older clients, ``patient_name`` as ``Family^Given``), ``birth_date``, ``sex``,
        ``body_part``, ``clinical_question``;
        optionally ``study_description``, ``laterality`` and ``recognizable_features`` (``YES`` or ``NO``,
        any case; ``YES`` when missing or empty).
    today : datetime.date, optional
        The date birth dates may not pass (today by default).
    question_chars : int
        Longest clinical question (``upload_question_chars``; 64 by default).

    Returns
    -------
    PhotoDetails
        The cleaned values.

    Raises
    ------
    PhotoInvalid
        Naming every bad field.
    """
    errors: dict[str, str] = {}
    patient_id = _long_string(form.get("patient_id"), "patient_id", errors, required=True)
    if "patient_name" in form and not typed_name_fields(form):
        patient_name = legacy_name(form.get("patient_name"), errors)
    else:
        patient_name = name_from_parts(form, errors)
    birth_date = _birth_date(form.get("birth_date"), errors, today or date.today())
    sex = (form.get("sex") or "").strip().upper()
    if sex not in ("M", "F", "O"):
        errors["sex"] = "must be M, F or O"
    body_part = (form.get("body_part") or "").strip().upper()
    if not body_part:
        errors["body_part"] = "is required"
    elif not _BODY_PART.fullmatch(body_part):
        errors["body_part"] = "must be 1-16 letters, digits, spaces or underscores (e.g. HAND, SKIN)"
    question = _long_text(form.get("clinical_question"), "clinical_question", errors, question_chars)
    description = _long_string(form.get("study_description"), "study_description", errors, required=False)
    laterality = (form.get("laterality") or "").strip().upper() or None
    if laterality not in (None, "R", "L"):
        errors["laterality"] = "must be R, L or empty"
    recognizable = (form.get("recognizable_features") or "").strip().upper() or "YES"
    if recognizable not in ("YES", "NO"):
        errors["recognizable_features"] = "must be YES or NO"
    if errors:
        raise PhotoInvalid(errors)
    assert patient_id and patient_name and birth_date and question  # no errors: all present
    return PhotoDetails(
        patient_id, patient_name, birth_date, sex, body_part, question, description, laterality, recognizable == "YES"
    )


def decode_photo(data: bytes, *, max_pixels: int = MAX_PHOTO_PIXELS) -> np.ndarray:
    """Decode a JPEG or PNG file to upright 8-bit RGB pixels.

    The format and the declared size are checked from the header before any pixel is decoded.

    Parameters
    ----------
    data : bytes
        The file.
    max_pixels : int
        Most pixels accepted.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8.

    Raises
    ------
    PhotoInvalid
        For the ``file`` field: empty, too large, not JPEG/PNG, too many pixels, or undecodable.
    """
    if not data:
        raise PhotoInvalid({"file": "is empty"})
    if len(data) > MAX_PHOTO_BYTES:
        raise PhotoInvalid({"file": f"is larger than {MAX_PHOTO_BYTES // 1024**2} MiB"})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as image:
                width, height = image.size
                if width < 1 or height < 1 or width * height > max_pixels:
                    raise PhotoInvalid({"file": f"has {width}x{height} pixels; at most {max_pixels} are accepted"})
                image.load()
                upright = ImageOps.exif_transpose(image)
                rgb = _to_rgb(upright)
    except PhotoInvalid:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PhotoInvalid({"file": f"declares too many pixels; at most {max_pixels} are accepted"}) from None
    except UnidentifiedImageError:
        raise PhotoInvalid({"file": "is not a JPEG or PNG image"}) from None
    except (OSError, ValueError, SyntaxError):
        raise PhotoInvalid({"file": "is damaged: the image could not be decoded"}) from None
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is laid over white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        scaled = np.asarray(image, dtype=np.uint32) >> 8  # 16-bit grey to 8 bits
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class PhotoInstance:
    """A photo converted to DICOM.

    Attributes
    ----------
    study_uid, series_uid, sop_instance_uid : str
        The new UIDs.
    part10 : bytes
        The Part 10 file.
    rows, columns : int
        The photo's size in pixels.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    part10: bytes
    rows: int = 0
    columns: int = 0


def photo_to_dicom(
    pixels: np.ndarray,
    details: PhotoDetails,
    *,
    now: datetime | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    study_started: datetime | None = None,
    study_id: str | None = None,
) -> PhotoInstance:
    """Wrap RGB pixels and the form's details into a Secondary Capture image (Modality XC).

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(rows, columns, 3)`` uint8 from :func:`decode_photo`.
    details : PhotoDetails
        Validated patient and request details.
    now : datetime.datetime, optional
        Series and content date and time, and the study's for a new study (local time now by default).
    study_uid, series_uid : str, optional
        The study and series the photo joins (a photo added to a case); new UIDs by default.
    series_number, instance_number : int
        Where the photo stands in its study (1 and 1 for a new study).
    study_started : datetime.datetime, optional
        Study Date and Time of the study joined (``now`` by default).
    study_id : str, optional
        Study ID of the study joined (made from the study's date and time by default).

    Returns
    -------
    PhotoInstance
        New UIDs and the encoded file (Explicit VR Little Endian, UTF-8 character set).
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    moment = now or datetime.now()
    started = study_started or moment
    study, series, sop_uid = study_uid or hd.UID(), series_uid or hd.UID(), hd.UID()
    image = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=study,
        series_instance_uid=series,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_id=details.patient_id,
        patient_name=details.patient_name,
        patient_birth_date=details.birth_date,
        patient_sex=details.sex,
        study_id=study_id or started.strftime("%y%m%d%H%M%S"),
        study_date=started.date(),
        study_time=started.time(),
        patient_orientation=("L", "F"),  # required by highdicom for PATIENT; emptied below (unknown)
        series_description=SERIES_DESCRIPTION,
        specific_character_set="ISO_IR 192",
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    image.Modality = PHOTO_MODALITY
    image.PatientOrientation = []  # type 2C, empty: a photo's orientation is not known
    image.Laterality = details.laterality or ""
    image.BodyPartExamined = details.body_part
    image.RecognizableVisualFeatures = "YES" if details.recognizable else "NO"
    if details.study_description:
        image.StudyDescription = details.study_description
    request = Dataset()
    request.ReasonForTheRequestedProcedure = short_question(details.clinical_question)
    image.RequestAttributesSequence = [request]
    image.ReasonForVisit = details.clinical_question  # UT: the whole question
    buffer = io.BytesIO()
    image.save_as(buffer, enforce_file_format=True)
    rows, columns = int(pixels.shape[0]), int(pixels.shape[1])
    return PhotoInstance(str(study), str(series), str(sop_uid), buffer.getvalue(), rows, columns)
