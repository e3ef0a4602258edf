"""Montages: several frames tiled into one image, for models that read one image at a time.

LLaVA-1.5 and LLaVA-NeXT were trained on one image per conversation; shown
several, they answer about the last or blend them.  A single-image model is
therefore given one grid of the chosen slices and windows
(:func:`labelled_montage`), each tile with a small burned-in label: the tile's
number and, where a preset was used, its window (``"3 lung"``), so that the
prompt's text can name tiles and the model can tell the windows apart.  A label
never holds patient data: only a number and a window name.

Tiles are padded to square (nothing is cropped) and scaled to the tile size,
row by row; cells left over in the last row stay black, and a thin black edge
keeps neighbouring labelled tiles apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from integration.imaging.frames import fit, pad_to_square
from integration.imaging.pixels import ImageArray

#: Height of a tile label's text, as a fraction of the tile's side.
LABEL_FRACTION = 0.09
#: Widest a tile label may be, as a fraction of the tile's side (longer labels get smaller text).
LABEL_WIDTH_FRACTION = 0.6
#: Width of the black edge between labelled tiles, as a fraction of the tile's side.
EDGE_FRACTION = 0.008
#: Smallest and largest label text, in pixels.
MIN_LABEL_PIXELS = 8
MAX_LABEL_PIXELS = 48

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def grid_side(count: int) -> int:
    """Return the tiles per side of the smallest square grid that holds ``count`` tiles (at least 1)."""
    return max(1, math.isqrt(max(count, 1) - 1) + 1)


def montage(images: Sequence[ImageArray], grid: int, image_size: int | None) -> ImageArray:
    """Tile images row by row into a ``grid`` x ``grid`` square, each padded to square and scaled to its tile.

    The montage is ``image_size`` pixels a side (rounded down to a multiple of ``grid``); with
    ``image_size`` None, each tile is as large as the largest image.  Images beyond ``grid``
    squared are left out.
    """
    return _tiled([_tile(image, _tile_side(images, grid, image_size)) for image in images[: grid * grid]], grid)


def labelled_montage(images: Sequence[ImageArray], labels: Sequence[str], image_size: int | None) -> ImageArray:
    """Tile images into the smallest square grid that holds them, each with its label burned in at its top left.

    A label is written in white on black inside its own tile (never over a neighbour), its text
    :data:`LABEL_FRACTION` of the tile high or smaller, so that it spans at most
    :data:`LABEL_WIDTH_FRACTION` of the tile.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        uint8 RGB frames, in tile order (row by row).
    labels : sequence of str
        One short label per image (a tile number and window, never patient data).
    image_size : int or None
        Side of the montage (see :func:`montage`).

    Raises
    ------
    ValueError
        If there are no images, or not one label per image.
    """
    if not images or len(labels) != len(images):
        raise ValueError(f"a montage needs one label per image, not {len(labels)} for {len(images)}")
    grid = grid_side(len(images))
    side = _tile_side(images, grid, image_size)
    return _tiled([_burn(_tile(image, side), text) for image, text in zip(images, labels, strict=True)], grid)


def _tile_side(images: Sequence[ImageArray], grid: int, image_size: int | None) -> int:
    """Return the side of one tile, in pixels."""
    return max((image_size // grid) if image_size else max(max(image.shape[:2]) for image in images), 1)


def _tile(image: ImageArray, side: int) -> ImageArray:
    """Pad an image to square and scale it to the tile."""
    return fit(pad_to_square(image), side, upscale=True)


def _tiled(tiles: Sequence[ImageArray], grid: int) -> ImageArray:
    """Place square tiles of one size row by row on a black ``grid`` x ``grid`` canvas."""
    side = tiles[0].shape[0]
    canvas = np.zeros((side * grid, side * grid, 3), dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, grid)
        canvas[row * side : (row + 1) * side, column * side : (column + 1) * side] = tile
    return canvas


def _burn(tile: ImageArray, text: str) -> ImageArray:
    """Return a copy of a tile with ``text`` in white on a black box at its top-left corner, edged in black.

    The black right and bottom edges (:data:`EDGE_FRACTION` of the side, at least a pixel) keep
    neighbouring tiles of one grey apart.
    """
    side = tile.shape[0]
    picture = Image.fromarray(tile)
    draw = ImageDraw.Draw(picture)
    edge = max(1, round(side * EDGE_FRACTION))
    draw.rectangle((side - edge, 0, side - 1, side - 1), fill=(0, 0, 0))
    draw.rectangle((0, side - edge, side - 1, side - 1), fill=(0, 0, 0))
    pixels = min(MAX_LABEL_PIXELS, max(MIN_LABEL_PIXELS, round(side * LABEL_FRACTION)))
    width = draw.textlength(text, font=_font(pixels))
    if width > side * LABEL_WIDTH_FRACTION:
        pixels = max(MIN_LABEL_PIXELS, int(pixels * side * LABEL_WIDTH_FRACTION / width))
    font = _font(pixels)
    margin = max(1, pixels // 5)
    _, _, right, bottom = draw.textbbox((margin, margin), text, font=font)
    draw.rectangle((0, 0, right + margin, bottom + margin), fill=(0, 0, 0))
    draw.text((margin, margin), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture, dtype=np.uint8)


@lru_cache(maxsize=64)
def _font(pixels: int) -> _Font:
    """Return Pillow's built-in font at ``pixels`` (its fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=pixels)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType
        return ImageFont.load_default()
