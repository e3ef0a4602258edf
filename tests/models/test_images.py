"""Last-step image preparation: square padding for centre-cropping processors, pixel caps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from models.images import cap_pixels, pad_to_square, prepare_images, square_padding_fill
from models.processors import load_processor
from models.registry import FAMILIES


def test_padding_keeps_every_pixel_centred() -> None:
    wide = Image.new("RGB", (100, 40), (200, 10, 10))
    square = pad_to_square(wide, (1, 2, 3))
    assert square.size == (100, 100)
    assert square.getpixel((50, 0)) == (1, 2, 3)
    assert square.getpixel((50, 99)) == (1, 2, 3)
    assert square.getpixel((0, 30)) == (200, 10, 10)  # left edge kept: nothing cropped
    assert square.getpixel((99, 69)) == (200, 10, 10)
    already = Image.new("RGB", (30, 30))
    assert pad_to_square(already, (0, 0, 0)) is already


def test_pixel_cap_keeps_the_aspect_ratio() -> None:
    image = Image.new("RGB", (4000, 1000))
    capped = cap_pixels(image, 1_000_000)
    assert capped.size[0] * capped.size[1] <= 1_000_000
    assert capped.size[0] / capped.size[1] == pytest.approx(4.0, rel=0.01)
    small = Image.new("RGB", (10, 10))
    assert cap_pixels(small, 1_000_000) is small


@pytest.mark.parametrize(
    ("name", "pads"), [("llava", True), ("huatuogpt-vision", True), ("llava-next", False), ("medgemma", False)]
)
def test_only_single_tile_centre_cropping_processors_pad(
    name: str, pads: bool, smoke_dir: Callable[[str], Path]
) -> None:
    processor = load_processor(smoke_dir(name), FAMILIES["llava" if name == "llava-next" else name])
    fill = square_padding_fill(processor.image_processor)
    assert (fill is not None) == pads
    if fill is not None:
        assert fill == (122, 116, 104)  # OpenAI CLIP mean, as LLaVA-1.5's expand2square


def test_prepare_converts_caps_and_pads() -> None:
    grey = Image.new("L", (2000, 1000), 128)
    (prepared,) = prepare_images([grey], square_fill=(0, 0, 0), max_pixels=200_000)
    assert prepared.mode == "RGB"
    assert prepared.size[0] == prepared.size[1]
    assert prepared.size[0] <= 633
    (untouched,) = prepare_images([Image.new("RGB", (64, 32))], square_fill=None, max_pixels=None)
    assert untouched.size == (64, 32)
