"""Pixels: one frame of a DICOM image to an 8-bit RGB array for a vision-language model.

The grayscale pipeline follows PS3.4 N.2 without a presentation state:

1. decode the frame and apply the modality LUT (:mod:`integration.imaging.pixels`);
2. VOI: a window, a VOI LUT, or the frame's own value range (:mod:`integration.imaging.windows`);
3. MONOCHROME1 is inverted, so that high values are always bright.

Colour frames (RGB, YBR_*, PALETTE COLOR) are only converted to 8-bit RGB.
:func:`fit` and :func:`pad_to_square` then shape the image for the model:
LLaVA-family models want a square image, and the edges of a radiograph
matter, so the image is padded and never cropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset

from integration.imaging.pixels import MONOCHROME1, UINT8_MAX, Frame, ImageArray, decode_frame
from integration.imaging.windows import Window, apply_voi


@dataclass(frozen=True, eq=False)
class RenderedFrame:
    """A frame shown on an 8-bit RGB display.

    Attributes
    ----------
    pixels : numpy.ndarray
        uint8 RGB, shape (rows, columns, 3).
    window : str or None
        Name of the VOI stage used (``"lung"``, ``"header"``, ``"voi_lut"``,
        ``"auto"``, ``"native"``); None for colour frames.
    """

    pixels: ImageArray
    window: str | None


def render_frame(frame: Frame, window: Window | None = None) -> RenderedFrame:
    """Show a decoded frame as 8-bit RGB.

    For a grayscale frame without ``window``, the VOI LUT Sequence, the header window, a CT preset or
    the frame's value range are used, in that order; ``window`` is ignored for colour frames.
    """
    if frame.is_colour:
        return RenderedFrame(frame.values, None)
    gray, name = apply_voi(frame, window)
    if frame.photometric == MONOCHROME1:
        gray = UINT8_MAX - gray
    return RenderedFrame(np.repeat(gray[:, :, np.newaxis], 3, axis=2), name)


def frame_to_rgb(ds: Dataset, frame_index: int = 0, window: Window | None = None) -> ImageArray:
    """Return one frame (0-based ``frame_index``) of a complete image as shown: uint8 RGB, shape (rows, columns, 3).

    ``window`` is as for :func:`render_frame`.

    Raises
    ------
    UndecodableImage
        If the pixel data cannot be decoded or shown.
    """
    return render_frame(decode_frame(ds, frame_index), window).pixels


def pad_to_square(image: npt.NDArray[Any], fill: int = 0) -> npt.NDArray[Any]:
    """Pad an image evenly on both sides to a square of side max(rows, columns); nothing is ever cropped.

    Works on (rows, columns) or (rows, columns, channels); the input itself when already square.
    """
    rows, columns = image.shape[:2]
    if rows == columns:
        return image
    side = max(rows, columns)
    top = (side - rows) // 2
    left = (side - columns) // 2
    padded = np.full((side, side, *image.shape[2:]), fill, dtype=image.dtype)
    padded[top : top + rows, left : left + columns] = image
    return padded


def fit(image: ImageArray, size: int, *, upscale: bool = False) -> ImageArray:
    """Resize a uint8 image so that its longest side is ``size`` pixels, keeping the aspect ratio.

    Shrinking averages areas (box filter); enlarging is bilinear, and only with ``upscale`` (by default
    smaller images are kept as they are). Returns the input itself when no resizing is needed.

    Raises
    ------
    ValueError
        If ``size`` is not positive or the image is not uint8.
    """
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    if image.dtype != np.uint8:
        raise ValueError(f"fit expects a uint8 image, not {image.dtype}")
    rows, columns = image.shape[:2]
    longest = max(rows, columns)
    if longest == size or (longest < size and not upscale):
        return image
    scale = size / longest
    target = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    resized = Image.fromarray(image).resize(target, resample=resample)
    return np.asarray(resized, dtype=np.uint8)
