"""Processors built from checkpoint files: the image-only Qwen2.5-VL route without torchvision, PIL elsewhere."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models import chat_templates
from models.backend import ModelNotStaged
from models.chat_templates import load_chat_template
from models.processors import (
    ProcessorRoute,
    QwenVLImageOnlyProcessor,
    TemplateSource,
    ensure_image_chat_template,
    load_processor,
    processor_route,
    torchvision_available,
)
from models.registry import FAMILIES
from models.smoke import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
from tests.models.samples import radiograph

QWEN = FAMILIES["qwen2.5-vl"]


def test_this_machine_has_no_torchvision() -> None:
    assert importlib.util.find_spec("torchvision") is None
    assert not torchvision_available()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("has_torchvision", [True, False])
def test_routes(family: str, has_torchvision: bool) -> None:
    route = processor_route(FAMILIES[family], has_torchvision=has_torchvision)
    expected = ProcessorRoute.QWEN_IMAGE_ONLY if family == "qwen2.5-vl" and not has_torchvision else ProcessorRoute.AUTO
    assert route is expected


def test_qwen_loads_image_only_without_torchvision(smoke_dir: Callable[[str], Path]) -> None:
    processor = load_processor(smoke_dir("qwen2.5-vl"), QWEN)
    assert isinstance(processor, QwenVLImageOnlyProcessor)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert processor.image_token == "<|image_pad|>"


def test_with_torchvision_qwen_takes_auto_processor_which_needs_torchvision(smoke_dir: Callable[[str], Path]) -> None:
    # The route a torchvision host takes; here it fails for exactly the reason the image-only route exists.
    with pytest.raises(ImportError, match=r"(?i)torchvision"):
        load_processor(smoke_dir("qwen2.5-vl"), QWEN, has_torchvision=True)


@pytest.mark.parametrize(
    ("name", "image_processor"),
    [
        ("llava", "CLIPImageProcessorPil"),
        ("llava-next", "LlavaNextImageProcessorPil"),
        ("huatuogpt-vision", "CLIPImageProcessorPil"),
        ("medgemma", "Gemma3ImageProcessorPil"),
    ],
)
def test_other_families_get_auto_processors_with_pil_image_processors(
    name: str, image_processor: str, smoke_dir: Callable[[str], Path]
) -> None:
    family = FAMILIES["llava" if name == "llava-next" else name]
    processor = load_processor(smoke_dir(name), family)
    assert type(processor.image_processor).__name__ == image_processor


def expected_tokens(width: int, height: int) -> int:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    resized_height, resized_width = smart_resize(
        height, width, factor=28, min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS
    )
    return int(resized_height // 28) * int(resized_width // 28)


def test_image_placeholders_are_expanded_per_image_grid(smoke_dir: Callable[[str], Path]) -> None:
    processor = QwenVLImageOnlyProcessor.from_directory(smoke_dir("qwen2.5-vl"))
    processor.tokenizer.padding_side = "left"
    sizes = [[(84, 56)], [(28, 28), (140, 28), (56, 84)]]
    conversations = [
        [{"role": "user", "content": [*({"type": "image"} for _ in group), {"type": "text", "text": "Describe."}]}]
        for group in sizes
    ]
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    assert prompts[1].count("<|vision_start|><|image_pad|><|vision_end|>") == 3
    assert prompts[0].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")

    images = [[radiograph(w, h) for w, h in group] for group in sizes]
    inputs = processor(text=prompts, images=images)

    per_row = [sum(expected_tokens(w, h) for w, h in group) for group in sizes]
    image_token_id = processor.image_token_id
    assert (inputs["input_ids"] == image_token_id).sum(dim=1).tolist() == per_row
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == image_token_id).long())
    grids = inputs["image_grid_thw"]
    assert grids.shape == (4, 3)
    assert inputs["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    assert [int(g.prod()) // 4 for g in grids] == [expected_tokens(w, h) for group in sizes for w, h in group]
    # left padding: the shorter prompt starts with padding, both end with the assistant turn
    assert inputs["attention_mask"][0, 0] == 0
    assert inputs["attention_mask"][:, -1].tolist() == [1, 1]


def test_placeholders_must_match_the_images(smoke_dir: Callable[[str], Path]) -> None:
    processor = QwenVLImageOnlyProcessor.from_directory(smoke_dir("qwen2.5-vl"))
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholders for 2 images"):
        processor(text=["<|image_pad|> two?"], images=[[radiograph(28, 28), radiograph(28, 28)]])
    with pytest.raises(ValueError, match="tokenize=False"):
        processor.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)


def test_text_without_images(smoke_dir: Callable[[str], Path]) -> None:
    processor = QwenVLImageOnlyProcessor.from_directory(smoke_dir("qwen2.5-vl"))
    inputs = processor(text=["Hello there.", "Hi."], images=None)
    assert "pixel_values" not in inputs
    assert int(inputs["mm_token_type_ids"].sum()) == 0


def test_processor_level_chat_template_files(smoke_dir: Callable[[str], Path], tmp_path: Path) -> None:
    directory = Path(shutil.copytree(smoke_dir("qwen2.5-vl"), tmp_path / "qwen"))
    from_json = json.loads((directory / "chat_template.json").read_text())["chat_template"]
    assert load_chat_template(directory) == from_json
    (directory / "chat_template.jinja").write_text("{{ 'jinja wins' }}")
    assert load_chat_template(directory) == "{{ 'jinja wins' }}"
    (directory / "chat_template.jinja").unlink()
    (directory / "chat_template.json").unlink()
    assert load_chat_template(directory) is None


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("llava", TemplateSource.PROCESSOR),
        ("llava-next", TemplateSource.PROCESSOR),
        ("medgemma", TemplateSource.PROCESSOR),
        ("qwen2.5-vl", TemplateSource.PROCESSOR),
        # Like the -hf releases, it only has Qwen2's text template: the family's documented layout is used.
        ("huatuogpt-vision", TemplateSource.FAMILY),
    ],
)
def test_the_checkpoint_template_is_used_where_it_places_images(
    name: str, source: TemplateSource, smoke_dir: Callable[[str], Path]
) -> None:
    family = FAMILIES["llava" if name == "llava-next" else name]
    processor = load_processor(smoke_dir(name), family)
    assert ensure_image_chat_template(processor, family, smoke_dir(name)) is source


def test_a_template_kept_with_the_tokenizer_is_found(smoke_dir: Callable[[str], Path], tmp_path: Path) -> None:
    directory = Path(shutil.copytree(smoke_dir("llava"), tmp_path / "llava"))
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    settings["chat_template"] = (directory / "chat_template.jinja").read_text()
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    (directory / "chat_template.jinja").unlink()

    processor = load_processor(directory, FAMILIES["llava"])
    assert ensure_image_chat_template(processor, FAMILIES["llava"], directory) is TemplateSource.TOKENIZER


def test_a_text_only_template_without_a_family_layout_is_refused(
    smoke_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(smoke_dir("llava"), tmp_path / "llava"))
    (directory / "chat_template.jinja").write_text(chat_templates.QWEN2_TEXT)
    processor = load_processor(directory, FAMILIES["llava"])
    with pytest.raises(ModelNotStaged, match="no chat template that places images"):
        ensure_image_chat_template(processor, FAMILIES["llava"], directory)
