"""Last-step image preparation for a loaded model: RGB, pixel cap and padding to square.

The caller hands over model-ready radiographs and slices.  Two things still depend on the model:
processors that resize the short side and centre-crop (LLaVA-1.5's CLIP processor) would cut off
the edges of a non-square image, which matter on radiographs, so such images are padded to a
square with the processor's mean colour first, as LLaVA-1.5 itself was trained
(``expand2square``); and families whose token count grows with image size get their images
scaled down to a pixel cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL import Image


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad an RGB image to a square with ``fill``, centred, without cropping or scaling (itself when already square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def cap_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """Scale an image down, keeping its aspect ratio, to at most ``max_pixels`` (width times height); else itself."""
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def square_padding_fill(image_processor: Any) -> tuple[int, int, int] | None:
    """The padding colour for processors that centre-crop a single tile, else None.

    The processor's mean colour in 0-255 when it centre-crops and has no any-resolution tiling
    (LLaVA-NeXT's ``image_grid_pinpoints``).
    """
    if not getattr(image_processor, "do_center_crop", False) or getattr(image_processor, "image_grid_pinpoints", None):
        return None
    mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
    values = [float(value) for value in (mean if isinstance(mean, list | tuple) else [mean] * 3)]
    red, green, blue = (int(value * 255) for value in (values * 3)[:3])
    return (red, green, blue)


def prepare_images(
    images: Sequence[Image.Image], *, square_fill: tuple[int, int, int] | None, max_pixels: int | None
) -> list[Image.Image]:
    """Convert one request's images to RGB, cap the pixel count and pad to square, as the model needs.

    ``square_fill`` is the padding colour when images must be square (see :func:`square_padding_fill`);
    ``max_pixels`` the family's pixel cap.
    """
    prepared = []
    for image in images:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if max_pixels is not None:
            rgb = cap_pixels(rgb, max_pixels)
        if square_fill is not None:
            rgb = pad_to_square(rgb, square_fill)
        prepared.append(rgb)
    return prepared
