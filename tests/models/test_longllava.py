"""LongLLaVA: a tiny random instance built, saved, loaded and run with real transformers code on the CPU."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from integration.imaging.routing import RoutingRule
from integration.imaging.selection import prepare_study
from integration.samples import write_ct_series
from models.backend import GenerationRequest
from models.longllava.configuration import LongLlavaConfig, nest_published_config
from models.longllava.modeling import LongLlavaForConditionalGeneration
from models.longllava.processing import LongLlavaProcessor
from models.registry import FAMILIES, UnsupportedModel, family_for_config
from models.transformers_backend import TransformersBackend

LONGLLAVA = FAMILIES["longllava"]
Loaded = tuple[LongLlavaForConditionalGeneration, LongLlavaProcessor]


@pytest.fixture(scope="module")
def model_dir(smoke_dir: Callable[[str], Path]) -> Path:
    return smoke_dir("longllava")


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> Loaded:
    model = LongLlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()  # type: ignore[no-untyped-call]
    return model, LongLlavaProcessor.from_directory(model_dir)


def _images(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (40 + index, 32), (index * 10 % 255, 80, 160)) for index in range(count)]


def _prompt(processor: LongLlavaProcessor, images: int) -> str:
    content = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": "Describe the findings."}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def test_the_prompt_is_longllavas_jamba_conversation_format(loaded: Loaded) -> None:
    _, processor = loaded
    assert _prompt(processor, 2) == (
        "<|startoftext|><|User|>\n<image>\n<image>\nDescribe the findings.\n<|startoftext|><|Assistant|>\n"
    )


def test_each_image_placeholder_becomes_144_image_tokens(loaded: Loaded) -> None:
    model, processor = loaded
    inputs = processor(text=[_prompt(processor, 3)], images=[_images(3)], return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 3 * 144
    assert inputs["pixel_values"].shape == (3, 3, 336, 336)
    assert processor.image_token_id == model.config.image_token_id
    with pytest.raises(ValueError, match="2 <image> placeholders for 1 images"):
        processor(text=[_prompt(processor, 2)], images=[_images(1)])


def test_twenty_images_give_144_visual_tokens_each_in_one_forward(loaded: Loaded) -> None:
    model, processor = loaded
    inputs = processor(text=[_prompt(processor, 20)], images=[_images(20)], return_tensors="pt")
    with torch.inference_mode():
        features = model.model.get_image_features(inputs["pixel_values"])
        output = model(**inputs)
    text_config: Any = model.config.text_config
    assert features.shape == (20, 144, text_config.hidden_size)
    assert output.logits.shape == (1, inputs["input_ids"].shape[1], text_config.vocab_size)
    assert inputs["input_ids"].shape[1] > 20 * 144
    assert torch.isfinite(output.logits).all()


def test_too_few_image_tokens_for_the_images_is_refused(loaded: Loaded) -> None:
    model, processor = loaded
    inputs = processor(text=[_prompt(processor, 1)], images=[_images(1)], return_tensors="pt")
    with pytest.raises(ValueError, match="144 image tokens for 2 images"):
        model(input_ids=inputs["input_ids"], pixel_values=torch.cat([inputs["pixel_values"]] * 2))


def test_save_and_load_round_trip_gives_the_same_logits(loaded: Loaded, tmp_path: Path) -> None:
    model, processor = loaded
    inputs = processor(text=[_prompt(processor, 2)], images=[_images(2)], return_tensors="pt")
    model.save_pretrained(tmp_path)
    again = LongLlavaForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True).eval()  # type: ignore[no-untyped-call]
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


def test_the_original_checkpoint_layout_loads_to_the_same_model(
    loaded: Loaded, model_dir: Path, tmp_path: Path
) -> None:
    # The published layout: a flat Jamba config.json with mm_* keys, and the CLIP tower's keys under
    # LLaVA's wrapper as CLIPVisionModel saved them (model.vision_tower.vision_tower.vision_model.*).
    model, processor = loaded
    published = tmp_path / "LongLLaVA-9B"
    shutil.copytree(model_dir, published)
    nested = json.loads((model_dir / "config.json").read_text())
    flat = {
        **nested["text_config"],
        "model_type": "llava_jamba",
        "architectures": ["LlavaJambaForCausalLM"],
        "mm_vision_tower": "./models/clip_vit_large_patch14_336",
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "resamplePooling": "2d",
        "mm_hidden_size": nested["vision_config"]["hidden_size"],
    }
    flat.pop("max_position_embeddings")
    flat["n_ctx"] = 262144
    (published / "config.json").write_text(json.dumps(flat))
    weights = load_file(published / "model.safetensors")
    prefix = "model.vision_tower.vision_tower."
    renamed = {
        (prefix + "vision_model." + key.removeprefix(prefix) if key.startswith(prefix) else key): value
        for key, value in weights.items()
    }
    assert any(key.startswith(prefix + "vision_model.encoder.layers.0.") for key in renamed)
    assert any(key.startswith("model.mm_projector.2.") for key in renamed)
    save_file(renamed, published / "model.safetensors", metadata={"format": "pt"})

    config = LongLlavaConfig.from_dict(flat)
    # The smoke model's CLIP is tiny; a real checkpoint's config names none and gets CLIP ViT-L/14-336.
    assert config.vision_config.image_size == 336 and config.vision_config.num_hidden_layers == 24
    assert family_for_config(flat).name == "longllava"
    vision = nested["vision_config"]
    original = LongLlavaForConditionalGeneration.from_pretrained(
        published,
        config=LongLlavaConfig.from_dict({**nest_published_config(flat), "vision_config": vision}),
        local_files_only=True,
    ).eval()  # type: ignore[no-untyped-call]
    original.config.image_token_id = processor.image_token_id
    inputs = processor(text=[_prompt(processor, 1)], images=[_images(1)], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, original(**inputs).logits)


def test_the_backend_loads_and_generates_on_the_cpu(model_dir: Path) -> None:
    backend = TransformersBackend(model_dir, device="cpu", max_new_tokens=4)
    assert backend.family is LONGLLAVA
    requests = [
        GenerationRequest(request_id="a", prompt="Describe.", images=tuple(_images(5)), max_new_tokens=4),
        GenerationRequest(request_id="b", prompt="Compare.", images=tuple(_images(2)), max_new_tokens=2),
    ]
    results = backend.generate(requests)
    assert [result.request_id for result in results] == ["a", "b"]
    assert results[0].tokens_out == 4 and results[1].tokens_out <= 2
    assert results[0].tokens_in > 5 * 144 and 2 * 144 < results[1].tokens_in < 5 * 144
    assert backend.device == "cpu"


def test_a_text_only_jamba_is_refused_with_advice(model_dir: Path, tmp_path: Path) -> None:
    jamba = tmp_path / "Jamba-v0.1"
    shutil.copytree(model_dir, jamba)
    config = json.loads((model_dir / "config.json").read_text())["text_config"]
    (jamba / "config.json").write_text(json.dumps({**config, "architectures": ["JambaForCausalLM"]}))
    with pytest.raises(UnsupportedModel, match=re.escape("text-only Jamba model")):
        TransformersBackend(jamba, device="cpu")


def test_the_token_budget_gives_longllava_hundreds_of_images_and_llava_four() -> None:
    assert LONGLLAVA.image_tokens == 144
    assert 800 <= LONGLLAVA.image_limit <= 1024
    assert FAMILIES["llava"].image_limit == 4
    assert FAMILIES["huatuogpt-vision"].image_limit == 4
    assert set(LONGLLAVA.gpu_memory_gib) == {"9B", "53B"}
    assert LONGLLAVA.gpu_memory_gib["9B"] < 80 < LONGLLAVA.gpu_memory_gib["53B"]


@pytest.mark.parametrize("rule", [RoutingRule(name="ct", modality="CT"), RoutingRule(modality="CT", whole_series=True)])
def test_a_whole_ct_series_goes_to_longllava_and_a_sample_to_llava(tmp_path: Path, rule: RoutingRule) -> None:
    files = write_ct_series(tmp_path / "ct", 100, rows=32, columns=32)
    whole = prepare_study(files, rules=[rule], max_images=LONGLLAVA.image_limit, image_size=64)
    sampled = prepare_study(files, rules=[rule], max_images=FAMILIES["llava"].image_limit, image_size=64)
    assert len(whole.images) == 100
    assert len({image.evidence[0].sop_instance_uid for image in whole.images}) == 100
    assert len(sampled.images) == 4
