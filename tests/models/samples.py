"""Shared test inputs for the model layer: smoke model names and synthetic images."""

from __future__ import annotations

from PIL import Image

#: Every smoke model: the registry's families and the LLaVA-NeXT variant of ``llava``.
SMOKE_NAMES = ("llava", "llava-next", "huatuogpt-vision", "medgemma", "qwen2.5-vl")
#: The registry family of each smoke model.
SMOKE_FAMILY = {"llava-next": "llava"}


def family_of(name: str) -> str:
    return SMOKE_FAMILY.get(name, name)


def radiograph(width: int, height: int, shade: int = 0) -> Image.Image:
    """A synthetic grey image with a gradient and a bright square (a stand-in for a radiograph)."""
    image = Image.linear_gradient("L").resize((width, height)).point(lambda value: (value + shade) % 256)
    image.paste(255, (width // 4, height // 4, width // 2, height // 2))
    return image.convert("RGB")
