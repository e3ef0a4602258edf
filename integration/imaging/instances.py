"""The header pass: what each file of a study is, read without its pixel data.

:func:`read_instances` reads only the headers of a study's files;
:func:`skip_reason` says why an instance is not an image for the model at all
(reports, presentation states, RT objects, documents, waveforms, raw data ...);
:func:`derived_kind` says why an image is derived or secondary (localizers,
dose report and protocol screens, screen captures, scanned documents,
reformats): such an image is a picture of the study rather than of the
patient, or a second view of images already there, and the routing rules
leave it out unless one asks for it (``include_derived``).

A Secondary Capture is secondary by definition (its Image Type says so), so a
capture counts as derived only by what it captured: a workstation screen, a
scanned document or a drawing (Conversion Type), or a screen Image Type or
description.  A photograph taken by a camera (``DI``, as the photo upload
writes, or ``DV``) or a scanned film (``SI``, ``DF``) stays an image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    DeformableSpatialRegistrationStorage,
    EnhancedXRayRadiationDoseSRStorage,
    KeyObjectSelectionDocumentStorage,
    MRSpectroscopyStorage,
    ParametricMapStorage,
    PatientRadiationDoseSRStorage,
    RadiopharmaceuticalRadiationDoseSRStorage,
    RawDataStorage,
    RealWorldValueMappingStorage,
    SegmentationStorage,
    SpatialFiducialsStorage,
    SpatialRegistrationStorage,
    SurfaceSegmentationStorage,
    TractographyResultsStorage,
    XRayRadiationDoseSRStorage,
)

from integration.imaging.pixels import UndecodableImage, number_of_frames
from integration.imaging.windows import body_region

#: Header attributes read from every file; pixel data is only seen to be there, not read.
HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "ImageType",
    "ConversionType",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "NumberOfFrames",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
)
_HEADER_TAGS: list[BaseTag] = [Tag(keyword) for keyword in HEADER_KEYWORDS]
#: Attributes without which an instance cannot be placed in its study.
_IDENTITY_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Element values larger than this are left on disk while headers are read.
HEADER_DEFER_BYTES = 1024
#: Root of the composite storage SOP classes (PS3.4 B.5).
_STORAGE = "1.2.840.10008.5.1.4.1.1"
#: SOP classes (exact, or roots of a family of classes) that are not images for the model.
#: The first entry that matches gives the reason, so specific classes come before their family.
NON_IMAGE_SOP_CLASSES: tuple[tuple[str, str], ...] = (
    (KeyObjectSelectionDocumentStorage, "key object selection"),
    (XRayRadiationDoseSRStorage, "radiation dose SR"),
    (RadiopharmaceuticalRadiationDoseSRStorage, "radiation dose SR"),
    (PatientRadiationDoseSRStorage, "radiation dose SR"),
    (EnhancedXRayRadiationDoseSRStorage, "radiation dose SR"),
    (f"{_STORAGE}.88", "structured report"),
    (f"{_STORAGE}.11", "presentation state"),
    (f"{_STORAGE}.481", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.34", "radiotherapy object"),
    (f"{_STORAGE}.104", "encapsulated document"),
    (f"{_STORAGE}.9", "waveform"),
    (SpatialRegistrationStorage, "spatial registration"),
    (SpatialFiducialsStorage, "spatial registration"),
    (DeformableSpatialRegistrationStorage, "spatial registration"),
    (SegmentationStorage, "segmentation"),
    (SurfaceSegmentationStorage, "segmentation"),
    (TractographyResultsStorage, "tractography results"),
    (RawDataStorage, "raw data"),
    (RealWorldValueMappingStorage, "real world value mapping"),
    (ParametricMapStorage, "parametric map"),
    (MRSpectroscopyStorage, "MR spectroscopy"),
    (f"{_STORAGE}.68", "surface scan"),
    (f"{_STORAGE}.78", "ophthalmic measurements"),
    (f"{_STORAGE}.79", "ophthalmic measurements"),
    (f"{_STORAGE}.80", "ophthalmic measurements"),
    (f"{_STORAGE}.90", "content assessment results"),
    (f"{_STORAGE}.91", "annotations"),
    (f"{_STORAGE}.131", "structured display"),
    (f"{_STORAGE}.200", "procedure protocol"),
    (f"{_STORAGE}.201", "inventory"),
    ("1.2.840.10008.5.1.4.38", "hanging protocol"),
    ("1.2.840.10008.5.1.4.39", "color palette"),
)
#: Image Type values that mark a localizer (scout, topogram, surview).
LOCALIZER_IMAGE_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW"})
#: Image Type values of screens: dose reports, protocol pages, screen captures.
SCREEN_IMAGE_TYPES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"DOSE_INFO", "DOSE INFO", "DOSE_REPORT", "DOSE REPORT"}), "dose report"),
    (frozenset({"CSA REPORT", "CSA RESULTS"}), "protocol or report screen"),
    (frozenset({"SCREEN SAVE", "SCREEN_SAVE", "SCREEN SHOT", "SCREENSHOT", "SCREEN CAPTURE"}), "screen capture"),
)
#: Root of the Secondary Capture SOP classes (single-frame, and the multi-frame ones under it).
SECONDARY_CAPTURE = f"{_STORAGE}.7"
#: Conversion Types of a Secondary Capture that are not a picture of the patient.
DERIVED_CONVERSIONS = {"WSD": "secondary capture", "SD": "scanned document", "DRW": "drawing"}
#: Modalities of derived objects.
DERIVED_MODALITIES = {"DOC": "scanned document", "KO": "key object selection"}
#: Series Description phrases of dose reports, protocol pages and screen captures ("LOW DOSE CHEST" is none).
DERIVED_DESCRIPTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bDOSE[ _-]*(REPORT|INFO|SUMMARY|SHEET|SR)\b"), "dose report"),
    (re.compile(r"\bPATIENT[ _-]*PROTOCOL\b"), "protocol or report screen"),
    (re.compile(r"\bSCREEN[ _-]*(SHOT|SAVE|CAPTURE)S?\b"), "screen capture"),
)


class UnreadableInstance(ValueError):
    """A file is not a DICOM instance whose header can be read."""


@dataclass(frozen=True)
class Instance:
    """What the header pass knows about one file of the study.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    sop_class_uid, sop_instance_uid, series_uid : str
        Identity of the instance.
    modality : str or None
        Modality, upper case.
    body_part : str or None
        Body Part Examined as written (upper case).
    region : str or None
        Body region from :func:`integration.imaging.windows.body_region`.
    series_number, instance_number : int or None
        Numbers as written.
    image_type : tuple of str
        Image Type values, upper case.
    position : tuple of float or None
        Image Position (Patient).
    orientation : tuple of float or None
        Image Orientation (Patient), six direction cosines.
    frames : int
        Number of frames.
    has_pixels : bool
        Whether the file holds pixel data.
    derived : str or None
        Why the image is derived or secondary (:func:`derived_kind`), None for an original image.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    modality: str | None
    body_part: str | None
    region: str | None
    series_number: int | None
    instance_number: int | None
    image_type: tuple[str, ...]
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    frames: int
    has_pixels: bool
    derived: str | None = None


def read_instances(files: Sequence[Path]) -> tuple[list[Instance], list[tuple[str, str]]]:
    """Read the headers of a study's files (never the pixel data).

    Returns the readable instances, each SOP instance once, and the skipped ones: unreadable files (by
    file name) and duplicate instances, with reasons.
    """
    instances: list[Instance] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in files:
        try:
            instance = read_instance(path)
        except UnreadableInstance as exc:
            skipped.append((f"file {path.name}", str(exc)))
            continue
        if instance.sop_instance_uid in seen:
            skipped.append((instance.sop_instance_uid, "duplicate of an instance already in the study"))
            continue
        seen.add(instance.sop_instance_uid)
        instances.append(instance)
    return instances, skipped


def read_instance(path: Path) -> Instance:
    """Read the header of one file.

    Raises
    ------
    UnreadableInstance
        If the file cannot be parsed or lacks its SOP Class, SOP Instance or Series UID.
    """
    try:
        ds = pydicom.dcmread(path, defer_size=HEADER_DEFER_BYTES, force=True, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # pydicom raises many types for files that are not DICOM or are damaged
        raise UnreadableInstance(f"not a readable DICOM file ({type(exc).__name__})") from exc
    identity = {keyword: str(ds.get(keyword) or "").strip() for keyword in _IDENTITY_KEYWORDS}
    missing = [keyword for keyword, value in identity.items() if not value]
    if missing:
        raise UnreadableInstance(f"no {', '.join(missing)} in the header")
    try:
        frames = number_of_frames(ds)
    except UndecodableImage as exc:
        raise UnreadableInstance(str(exc)) from exc
    modality = _upper_text(ds.get("Modality"))
    image_type = _image_type(ds.get("ImageType"))
    derived = derived_kind(
        identity["SOPClassUID"],
        image_type,
        modality=modality,
        conversion_type=_upper_text(ds.get("ConversionType")),
        description=_upper_text(ds.get("SeriesDescription")),
    )
    return Instance(
        path=path,
        sop_class_uid=identity["SOPClassUID"],
        sop_instance_uid=identity["SOPInstanceUID"],
        series_uid=identity["SeriesInstanceUID"],
        modality=modality,
        body_part=_upper_text(ds.get("BodyPartExamined")),
        region=body_region(ds),
        series_number=_whole_number(ds.get("SeriesNumber")),
        instance_number=_whole_number(ds.get("InstanceNumber")),
        image_type=image_type,
        position=_position(ds.get("ImagePositionPatient")),
        orientation=_orientation(ds.get("ImageOrientationPatient")),
        frames=frames,
        has_pixels=any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS),
        derived=derived,
    )


def skip_reason(instance: Instance) -> str | None:
    """Return why an instance is not an image for the model (naming the SOP class where that is why), or None.

    Derived images (:attr:`Instance.derived`) are images: whether they are shown is the routing rule's choice.
    """
    uid = instance.sop_class_uid
    for root, reason in NON_IMAGE_SOP_CLASSES:
        if _in_family(uid, root):
            return f"{reason} ({_sop_class_name(uid)})"
    if not instance.has_pixels:
        return f"no pixel data ({_sop_class_name(uid)})"
    return None


def derived_kind(
    sop_class_uid: str,
    image_type: Sequence[str],
    *,
    modality: str | None = None,
    conversion_type: str | None = None,
    description: str | None = None,
) -> str | None:
    """Return why an image is derived or secondary (``"localizer"``, ``"dose report"`` ...), or None.

    Works on plain attributes, so that the series-level query results of an archive (SOP classes and
    Image Type of an instance, the Series Description) are judged as the files we hold are.

    Parameters
    ----------
    sop_class_uid : str
        SOP Class UID.
    image_type : sequence of str
        Image Type values (any case).
    modality : str, optional
        Modality.
    conversion_type : str, optional
        Conversion Type of a Secondary Capture.
    description : str, optional
        Series Description (read for its words only; never logged).

    Returns
    -------
    str or None
        ``"localizer"``, ``"dose report"``, ``"protocol or report screen"``, ``"screen capture"``,
        ``"secondary capture"`` (a workstation's capture), ``"scanned document"``, ``"drawing"``,
        ``"key object selection"`` or ``"reformat or projection"`` (Image Type DERIVED, SECONDARY outside a
        Secondary Capture: MPR, MIP, volume rendering ...); None for an original image.
    """
    values = tuple(value.strip().upper() for value in image_type)
    if LOCALIZER_IMAGE_TYPES.intersection(values):
        return "localizer"
    for marks, kind in SCREEN_IMAGE_TYPES:
        if marks.intersection(values):
            return kind
    mode = (modality or "").strip().upper()
    if mode in DERIVED_MODALITIES:
        return DERIVED_MODALITIES[mode]
    text = (description or "").upper()
    for pattern, kind in DERIVED_DESCRIPTIONS:
        if pattern.search(text):
            return kind
    if _in_family(sop_class_uid, SECONDARY_CAPTURE):
        return DERIVED_CONVERSIONS.get((conversion_type or "").strip().upper())
    if values[:2] == ("DERIVED", "SECONDARY"):
        return "reformat or projection"
    return None


def _in_family(uid: str, root: str) -> bool:
    """Tell whether a UID is ``root`` or one of the UIDs under it."""
    return uid == root or uid.startswith(f"{root}.")


def _sop_class_name(uid: str) -> str:
    """Return the name of a SOP class, or the UID itself when pydicom does not know it."""
    name = UID(uid).name
    return name if name and name != uid else uid


def _upper_text(value: object) -> str | None:
    """Return a text attribute stripped and upper case, or None when empty."""
    if value is None:
        return None
    text = str(value[0] if isinstance(value, MultiValue) and len(value) else value).strip().upper()
    return text or None


def _whole_number(value: object) -> int | None:
    """Return an IS attribute as int, or None when absent or malformed."""
    if value is None or value == "":
        return None
    try:
        return int(float(str(value)))
    except ValueError:
        return None


def _image_type(value: object) -> tuple[str, ...]:
    """Return the Image Type values, stripped and upper case."""
    if value is None:
        return ()
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return tuple(str(v).strip().upper() for v in values)


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    """Return ``count`` finite numbers from a multi-valued DS attribute, or None."""
    if not isinstance(value, MultiValue | list | tuple) or len(value) != count:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(n) for n in numbers) else None


def _position(value: Any) -> tuple[float, float, float] | None:
    """Return Image Position (Patient) as three floats, or None."""
    numbers = _floats(value, 3)
    return (numbers[0], numbers[1], numbers[2]) if numbers else None


def _orientation(value: Any) -> tuple[float, float, float, float, float, float] | None:
    """Return Image Orientation (Patient) as six floats, or None."""
    numbers = _floats(value, 6)
    return (numbers[0], numbers[1], numbers[2], numbers[3], numbers[4], numbers[5]) if numbers else None
