"""The VOI stage: which window a grayscale frame is shown with, and the window maths.

Stage 3 of the grayscale pipeline of PS3.4 N.2 (after :mod:`integration.imaging.pixels`):
an explicit :class:`Window`, else the VOI LUT Sequence, else the header's
Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID), else a CT preset
chosen by body part, else the frame's own value range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from integration.imaging.pixels import (
    DISPLAY_BITS,
    UINT8_MAX,
    Frame,
    ImageArray,
    ValueArray,
    first_number,
    look_up,
    lookup_table,
)
from integration.imaging.regions import body_region as region_named

#: Percentiles of the frame used as its window when the header gives none (non-CT).
AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
#: Slope factor of the SIGMOID VOI LUT function (PS3.3 C.11.2.1.3.1).
SIGMOID_STEEPNESS = 4.0


class VoiFunction(StrEnum):
    """VOI LUT Function (0028,1056): how Window Center/Width map values to display."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True)
class Window:
    """A VOI window: values around ``center`` over ``width`` are spread over the display range.

    Parameters
    ----------
    center : float
        Window Center, in the units after the modality LUT (Hounsfield units for CT).
    width : float
        Window Width; at least 1 for LINEAR, positive otherwise.
    name : str
        Short name shown in labels: a preset name, ``"header"`` or ``"auto"``.
    function : VoiFunction
        The VOI LUT Function.

    Raises
    ------
    ValueError
        If the centre or width is not finite or the width is too small for the function.
    """

    center: float
    width: float
    name: str
    function: VoiFunction = VoiFunction.LINEAR

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError(f"window {self.name!r}: centre and width must be finite numbers")
        smallest = 1.0 if self.function is VoiFunction.LINEAR else 0.0
        if self.width < smallest or self.width == 0:
            raise ValueError(f"window {self.name!r}: width {self.width} is too small for {self.function.value}")


#: CT presets (centre/width in Hounsfield units).
WINDOW_PRESETS: Mapping[str, Window] = MappingProxyType(
    {
        "lung": Window(-600.0, 1600.0, "lung"),
        "mediastinum": Window(50.0, 500.0, "mediastinum"),
        "bone": Window(500.0, 2000.0, "bone"),
        "brain": Window(40.0, 80.0, "brain"),
        "soft_tissue": Window(40.0, 400.0, "soft_tissue"),
    }
)
#: Preset for CT images whose body part has no preset of its own.
DEFAULT_CT_PRESET = "soft_tissue"
#: The CT preset of each body region that has one.
REGION_PRESETS: Mapping[str, str] = MappingProxyType({"HEAD": "brain", "CHEST": "lung"})
#: Words of a series description that ask for the bone window (bone reconstructions).
BONE_KEYWORDS = frozenset({"BONE", "OSTEO", "SKELETON"})
_WORD = re.compile(r"[A-Z0-9]+")


def body_region(ds: Dataset) -> str | None:
    """Return the body region an image shows (``"CHEST"``, ``"HEAD"`` ...), or None.

    The words are those of :func:`integration.imaging.regions.body_region`.

    Body Part Examined is read first, then the Series Description, then the
    Study Description; the first of them that names a region decides.
    """
    texts = [" ".join(_words(ds.get(k))) for k in ("BodyPartExamined", "SeriesDescription", "StudyDescription")]
    return region_named(*texts)


def header_window(ds: Dataset) -> Window | None:
    """Return the header's first Window Center/Width pair, with its VOI LUT Function, as window ``"header"``.

    None when absent or invalid (a width of zero, a text that is no number).
    """
    center = first_number(ds.get("WindowCenter"))
    width = first_number(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    function_name = str(ds.get("VOILUTFunction") or VoiFunction.LINEAR.value).strip().upper()
    function = VoiFunction(function_name) if function_name in VoiFunction.__members__ else VoiFunction.LINEAR
    try:
        return Window(center, width, "header", function)
    except ValueError:
        return None


def preset_window(ds: Dataset) -> Window | None:
    """Return the CT preset for an image's body part (bone reconstructions get the bone window); None if not CT.

    Presets are in Hounsfield units, so they apply only to CT images with a
    modality LUT (Rescale Intercept or a Modality LUT Sequence), not to, say,
    8-bit secondary captures of a CT.
    """
    if str(ds.get("Modality", "")).strip().upper() != "CT":
        return None
    if "RescaleIntercept" not in ds and "ModalityLUTSequence" not in ds:
        return None
    if _words(ds.get("SeriesDescription")) & BONE_KEYWORDS:
        return WINDOW_PRESETS["bone"]
    region = body_region(ds)
    return WINDOW_PRESETS[REGION_PRESETS.get(region or "", DEFAULT_CT_PRESET)]


def choose_window(ds: Dataset) -> Window | None:
    """Return the window an image is shown with when none is asked for: the header's, else a CT preset.

    None when the frame's own value range is to be used instead.
    """
    return header_window(ds) or preset_window(ds)


def apply_window(values: ValueArray, window: Window) -> ImageArray:
    """Map values after the modality LUT through a window to uint8 0..255 (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    center = np.float32(window.center)
    width = np.float32(window.width)
    if window.function is VoiFunction.SIGMOID:
        fraction = 1.0 / (1.0 + np.exp(-SIGMOID_STEEPNESS * (values - center) / width))
    elif window.function is VoiFunction.LINEAR_EXACT:
        fraction = (values - center) / width + 0.5
    elif width == 1:
        # PS3.3 C.11.2.1.2.1: a width of 1 is a threshold at centre - 0.5.
        fraction = (values > center - 0.5).astype(np.float32)
    else:
        fraction = (values - (center - 0.5)) / (width - 1) + 0.5
    return _to_uint8(fraction)


def apply_voi(frame: Frame, window: Window | None) -> tuple[ImageArray, str]:
    """Apply the VOI stage chosen for a grayscale frame.

    Parameters
    ----------
    window : Window or None
        The window to use; when None, the VOI LUT Sequence, the header window,
        a CT preset or the frame's value range are used, in that order.

    Returns
    -------
    gray : numpy.ndarray
        uint8 gray values, same shape as the frame, before any MONOCHROME1 inversion.
    name : str
        Name of the VOI stage used (a window's name, ``"voi_lut"`` or ``"native"``).
    """
    if window is not None:
        return apply_window(frame.values, window), window.name
    sequence = frame.attributes.get("VOILUTSequence")
    if sequence:
        return _apply_voi_lut(frame, sequence[0]), "voi_lut"
    chosen = choose_window(frame.attributes)
    if chosen is not None:
        return apply_window(frame.values, chosen), chosen.name
    if frame.bits_stored == DISPLAY_BITS and _within_uint8(frame.values):
        return frame.values.astype(np.uint8), "native"
    return apply_window(frame.values, _auto_window(frame.values)), "auto"


def _words(value: object) -> frozenset[str]:
    """Return the upper-case words of a text attribute (all values of a multi-valued one)."""
    if value is None:
        return frozenset()
    text = " ".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    return frozenset(_WORD.findall(text.upper()))


def _apply_voi_lut(frame: Frame, item: Dataset) -> ImageArray:
    """Map values through a VOI LUT, spreading the LUT's own output range over 0..255.

    The output range is taken from the LUT Data rather than from the declared
    bit depth, which writers often get wrong (12-bit data declared as 16).
    """
    signed = int(frame.attributes.get("PixelRepresentation") or 0) == 1 or float(frame.values.min(initial=0)) < 0
    first_mapped, table = lookup_table(item, frame.little_endian, signed)
    looked_up = look_up(frame.values, first_mapped, table).astype(np.float32)
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return np.zeros(frame.values.shape, dtype=np.uint8)
    return _to_uint8((looked_up - low) / (high - low))


def _within_uint8(values: ValueArray) -> bool:
    """Tell whether all values lie within 0..255."""
    return float(values.min(initial=0)) >= 0 and float(values.max(initial=0)) <= UINT8_MAX


def _auto_window(values: ValueArray) -> Window:
    """Return a LINEAR_EXACT window over the frame's robust value range (percentiles, else min/max)."""
    low, high = (float(v) for v in np.percentile(values, AUTO_WINDOW_PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        # A constant frame: show it black rather than as an arbitrary grey.
        return Window(low + 0.5, 1.0, "auto", VoiFunction.LINEAR_EXACT)
    return Window((low + high) / 2, high - low, "auto", VoiFunction.LINEAR_EXACT)


def _to_uint8(fraction: npt.NDArray[Any]) -> ImageArray:
    """Scale fractions of the display range (clipped to 0..1) to rounded uint8 values."""
    scaled = np.clip(fraction, 0.0, 1.0) * np.float32(UINT8_MAX) + np.float32(0.5)
    return np.asarray(scaled, dtype=np.uint8)
