"""Pixel data to values: decode one frame of a DICOM image and apply the modality LUT.

The first two stages of the grayscale pipeline of PS3.4 N.2 (the VOI stage is
in :mod:`integration.imaging.windows`, display in :mod:`integration.imaging.frames`):

1. decode the frame with pydicom's decoders (YCbCr is converted to RGB there);
2. modality LUT: the Modality LUT Sequence, or Rescale Slope and Intercept
   (for enhanced multi-frame objects, from the frame's functional groups).

Colour frames (RGB, YBR_*, PALETTE COLOR) are only converted to 8-bit RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

#: An 8-bit RGB (or gray) image as the model receives it.
ImageArray = npt.NDArray[np.uint8]
#: Frame values after the modality LUT (Hounsfield units for CT).
ValueArray = npt.NDArray[np.float32]
#: Largest 8-bit output value.
UINT8_MAX = 255
#: A LUT Descriptor's first value of 0 means this many entries (PS3.3 C.11.1.1.1).
LUT_ENTRIES_WHEN_ZERO = 2**16
#: Largest value of a signed 16-bit LUT Descriptor "first mapped" value.
INT16_MAX = 2**15 - 1
#: Longest decoder message repeated in an UndecodableImage.
MAX_REASON_CHARS = 300
#: Bits kept when colour samples deeper than 8 bits are shown.
DISPLAY_BITS = 8
MONOCHROME1 = "MONOCHROME1"
MONOCHROME2 = "MONOCHROME2"
PALETTE_COLOR = "PALETTE COLOR"
RGB = "RGB"
#: Photometric interpretations that are shown after the VOI stage.
GRAYSCALE = frozenset({MONOCHROME1, MONOCHROME2})
#: Attributes needed to decode pixel data at all.
_REQUIRED_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
#: Keywords of the elements that may hold pixel data.
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Top-level attributes copied into a frame's attribute view.
_FRAME_VIEW_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "PixelRepresentation",
    "BitsStored",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)
#: Functional group macros of enhanced multi-frame objects that override the top level per frame.
_FUNCTIONAL_GROUP_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


class UndecodableImage(ValueError):
    """The pixel data of an instance cannot be turned into an image (the message says why)."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame, before the VOI stage.

    Attributes
    ----------
    values : numpy.ndarray
        Grayscale: float32 values after the modality LUT, shape (rows, columns).
        Colour: uint8 RGB, shape (rows, columns, 3).
    photometric : str
        The photometric interpretation of ``values`` (``"RGB"`` for every colour frame).
    attributes : pydicom.dataset.Dataset
        The attributes that govern display of this frame: the top-level ones,
        overridden by the frame's functional groups in enhanced objects.
    bits_stored : int
        Bits Stored of the decoded data.
    little_endian : bool
        Byte order of the source, for LUT Data encoded as OW.
    """

    values: npt.NDArray[Any]
    photometric: str
    attributes: Dataset
    bits_stored: int
    little_endian: bool = True

    @property
    def is_colour(self) -> bool:
        """True for frames already in RGB."""
        return self.photometric not in GRAYSCALE


def number_of_frames(ds: Dataset) -> int:
    """Return the number of frames of an image (1 when Number of Frames is absent or zero).

    Raises
    ------
    UndecodableImage
        If Number of Frames is not a whole number, or is negative.
    """
    value = ds.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        frames = int(str(value))
    except ValueError as exc:
        raise UndecodableImage(f"Number of Frames {str(value)[:16]!r} is not a whole number") from exc
    if frames < 0:
        raise UndecodableImage(f"Number of Frames {frames} is negative")
    return max(frames, 1)


def frame_attributes(ds: Dataset, frame_index: int = 0) -> Dataset:
    """Return the attributes that govern the display of one frame (0-based ``frame_index``).

    Top-level attributes are overridden by the Pixel Value Transformation and Frame VOI LUT macros of
    the shared, then the per-frame, functional groups. The result is a new, flat data set whose
    elements are shared with ``ds``.
    """
    view = Dataset()
    for keyword in _FRAME_VIEW_KEYWORDS:
        if keyword in ds:
            view.add(ds[keyword])
    for group in _functional_groups(ds, frame_index):
        for macro in _FUNCTIONAL_GROUP_MACROS:
            items = group.get(macro)
            if items:
                for element in items[0]:
                    view.add(element)
    return view


def decode_frame(ds: Dataset, frame_index: int = 0) -> Frame:
    """Decode one frame and apply the modality LUT (grayscale) or convert it to 8-bit RGB (colour).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A complete image (read with its pixel data).
    frame_index : int
        0-based frame index (the DICOM frame number minus one).

    Raises
    ------
    UndecodableImage
        If the pixel data is missing, broken, or in a form that cannot be shown.
    IndexError
        If the image has no such frame.
    """
    frames = number_of_frames(ds)
    if not 0 <= frame_index < frames:
        raise IndexError(f"frame index {frame_index} is out of range for {frames} frame(s)")
    array, photometric, bits_stored = _decode(ds, frame_index)
    attributes = frame_attributes(ds, frame_index)
    little_endian = _is_little_endian(ds)
    if photometric == PALETTE_COLOR:
        return Frame(_palette_to_rgb(array, ds), RGB, attributes, DISPLAY_BITS, little_endian)
    if photometric == RGB:
        return Frame(_colour_to_uint8(array, bits_stored), RGB, attributes, DISPLAY_BITS, little_endian)
    if photometric not in GRAYSCALE:
        raise UndecodableImage(f"photometric interpretation {photometric!r} is not supported")
    if array.ndim != 2:
        raise UndecodableImage(f"a {photometric} frame must have one sample per pixel, not shape {array.shape}")
    values = _apply_modality_lut(array, attributes, little_endian)
    return Frame(values, photometric, attributes, bits_stored, little_endian)


def first_number(value: object) -> float | None:
    """Return the first value of a (possibly multi-valued) DS/IS or number attribute.

    None when absent, empty, not a number or not finite.
    """
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def lookup_table(item: Dataset, little_endian: bool, signed: bool) -> tuple[int, npt.NDArray[np.int64]]:
    """Return a LUT's first mapped value and its entries, as many as the LUT Descriptor says (PS3.3 C.11.1.1).

    Parameters
    ----------
    item : pydicom.dataset.Dataset
        An item of a Modality LUT or VOI LUT Sequence.
    little_endian : bool
        Byte order of LUT Data encoded as OW.
    signed : bool
        Whether the first mapped value is a signed 16-bit number.

    Raises
    ------
    UndecodableImage
        If the descriptor or the data is missing or too short.
    """
    try:
        entries, first_mapped, _bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
    except (AttributeError, TypeError, ValueError) as exc:
        raise UndecodableImage("a lookup table has no valid LUT Descriptor and LUT Data") from exc
    entries = entries or LUT_ENTRIES_WHEN_ZERO
    if signed and first_mapped > INT16_MAX:
        first_mapped -= 2**16
    if isinstance(data, bytes):
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2").astype(np.int64)
    else:
        table = np.asarray(data if isinstance(data, list | MultiValue) else [data], dtype=np.int64)
    if table.size < entries:
        raise UndecodableImage(f"a lookup table has {table.size} entries where its descriptor says {entries}")
    return first_mapped, table[:entries]


def look_up(values: npt.NDArray[Any], first_mapped: int, table: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Map values (rounded to integers) through a :func:`lookup_table`; values outside take the first or last entry."""
    index = np.clip(np.rint(values).astype(np.int64) - first_mapped, 0, table.size - 1)
    return np.asarray(table[index], dtype=np.int64)


def _functional_groups(ds: Dataset, frame_index: int) -> list[Dataset]:
    """Return the shared and then the frame's own functional group items, where present."""
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame_index < len(per_frame):
        groups.append(per_frame[frame_index])
    return groups


def _is_little_endian(ds: Dataset) -> bool:
    """Return the byte order of the data set (little endian unless the file says otherwise)."""
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax:
        return bool(UID(syntax).is_little_endian) if UID(syntax).is_transfer_syntax else True
    little = ds.original_encoding[1]
    return True if little is None else bool(little)


def _check_pixel_module(ds: Dataset) -> None:
    """Raise UndecodableImage naming the first missing attribute needed for decoding."""
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise UndecodableImage("the instance has no pixel data")
    for keyword in _REQUIRED_PIXEL_KEYWORDS:
        if ds.get(keyword) in (None, ""):
            raise UndecodableImage(f"the pixel data cannot be read: {keyword} is missing")
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if not syntax:
        raise UndecodableImage("the pixel data cannot be read: the file meta has no Transfer Syntax UID")


def _decode(ds: Dataset, frame_index: int) -> tuple[npt.NDArray[Any], str, int]:
    """Decode one frame; return the array, its photometric interpretation and its Bits Stored."""
    _check_pixel_module(ds)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UndecodableImage(f"transfer syntax {syntax.name} ({syntax}) is not supported") from exc
    if not decoder.is_available:
        raise UndecodableImage(f"no decoder for {syntax.name} ({syntax}) is installed")
    options: dict[str, Any] = as_pixel_options(ds)
    options["as_rgb"] = True  # YBR_FULL and YBR_FULL_422 come back as RGB
    try:
        array, properties = decoder.as_array(ds, index=frame_index, **options)
    except Exception as exc:  # pydicom and its plugins raise many types for damaged data
        raise UndecodableImage(f"{syntax.name} frame {frame_index + 1} cannot be decoded: {_reason(exc)}") from exc
    photometric = str(properties.get("photometric_interpretation", "")).strip().upper()
    bits_stored = int(properties.get("bits_stored") or properties.get("bits_allocated") or DISPLAY_BITS)
    return array, photometric, bits_stored


def _reason(exc: BaseException) -> str:
    """Return an exception's message on one line, shortened for error messages."""
    text = " ".join(str(exc).split())
    return text[:MAX_REASON_CHARS] if text else type(exc).__name__


def _palette_to_rgb(indices: npt.NDArray[Any], ds: Dataset) -> ImageArray:
    """Map PALETTE COLOR indices through the image's palette to 8-bit RGB."""
    try:
        rgb = apply_color_lut(indices, ds)
    except Exception as exc:  # malformed palettes fail in many ways inside pydicom
        raise UndecodableImage(f"the PALETTE COLOR lookup table cannot be applied: {_reason(exc)}") from exc
    if rgb.dtype == np.uint8:
        return np.asarray(rgb, dtype=np.uint8)
    # 16-bit palette entries; some writers put 8-bit values in them, keep those as they are.
    if int(rgb.max(initial=0)) <= UINT8_MAX:
        return rgb.astype(np.uint8)
    return (rgb >> (rgb.dtype.itemsize * 8 - DISPLAY_BITS)).astype(np.uint8)


def _colour_to_uint8(rgb: npt.NDArray[Any], bits_stored: int) -> ImageArray:
    """Scale RGB samples of any depth to 8 bits."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise UndecodableImage(f"an RGB frame must have three samples per pixel, not shape {rgb.shape}")
    if rgb.dtype == np.uint8:
        return rgb
    shift = max(bits_stored - DISPLAY_BITS, 0)
    return np.asarray(np.clip(rgb.astype(np.int64) >> shift, 0, UINT8_MAX), dtype=np.uint8)


def _apply_modality_lut(array: npt.NDArray[Any], attributes: Dataset, little_endian: bool) -> ValueArray:
    """Apply the Modality LUT Sequence, or Rescale Slope and Intercept, as float32."""
    sequence = attributes.get("ModalityLUTSequence")
    if sequence:
        signed = int(attributes.get("PixelRepresentation") or 0) == 1
        first_mapped, table = lookup_table(sequence[0], little_endian, signed)
        return look_up(array, first_mapped, table).astype(np.float32)
    slope = first_number(attributes.get("RescaleSlope"))
    intercept = first_number(attributes.get("RescaleIntercept"))
    if slope == 0:
        raise UndecodableImage("Rescale Slope is 0")
    values = array.astype(np.float32)
    if slope is not None and slope != 1:
        values *= np.float32(slope)
    if intercept:
        values += np.float32(intercept)
    return values
