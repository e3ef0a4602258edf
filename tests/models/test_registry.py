"""The family registry: recognising checkpoints from config.json, and the GPU memory to plan."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest

from integration.imaging.routing import PRESENTATIONS
from integration.imaging.selection import prepare_study
from integration.samples import write_ct_series
from models.backend import ModelNotStaged
from models.registry import (
    DEFAULT_IMAGE_PRESENTATION,
    FAMILIES,
    ImagePresentation,
    UnsupportedModel,
    bf16_memory_gib,
    detect_family,
    family_for_config,
)
from tests.models.samples import SMOKE_NAMES, family_of


@pytest.mark.parametrize("name", SMOKE_NAMES)
def test_each_smoke_checkpoint_is_recognised(name: str, smoke_dir: Callable[[str], Path]) -> None:
    assert detect_family(smoke_dir(name)) is FAMILIES[family_of(name)]


@pytest.mark.parametrize(
    ("config", "family"),
    [
        # llava-hf/llava-1.5-7b-hf
        ({"model_type": "llava", "text_config": {"model_type": "llama"}}, "llava"),
        # llava-hf/llava-v1.6-mistral-7b-hf
        ({"model_type": "llava_next", "text_config": {"model_type": "mistral"}}, "llava"),
        # FreedomIntelligence/HuatuoGPT-Vision-7B-hf: LLaVA with a Qwen2 language model
        ({"model_type": "llava", "text_config": {"model_type": "qwen2"}}, "huatuogpt-vision"),
        # google/medgemma-4b-it
        ({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}, "medgemma"),
        # Lingshu-7B: Qwen2.5-VL checkpoints keep the language model's settings at the top level
        ({"model_type": "qwen2_5_vl", "hidden_size": 3584, "vision_config": {"depth": 32}}, "qwen2.5-vl"),
        # no model_type: the architectures decide
        ({"architectures": ["Gemma3ForConditionalGeneration"]}, "medgemma"),
        (
            {"architectures": ["LlavaForConditionalGeneration"], "text_config": {"model_type": "qwen2"}},
            "huatuogpt-vision",
        ),
    ],
)
def test_published_config_layouts_map_to_their_family(config: dict[str, Any], family: str) -> None:
    assert family_for_config(config).name == family


@pytest.mark.parametrize(
    ("model_type", "advice"),
    [
        ("llava_mistral", "convert it once to the llava-hf layout"),
        ("gemma3_text", "text-only"),
        ("bert", "Supported model types: llava: llava, llava_next"),
    ],
)
def test_unsupported_checkpoints_say_what_to_do(model_type: str, advice: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(UnsupportedModel, match=re.escape(advice)):
        detect_family(tmp_path)


def test_a_huatuogpt_vision_release_with_a_llama_language_model_is_recognised_by_name(tmp_path: Path) -> None:
    # HuatuoGPT-Vision-34B-hf: LLaVA with Yi-1.5, a Llama-architecture model; only its name tells it apart.
    config = {"model_type": "llava", "text_config": {"model_type": "llama"}}
    assert family_for_config(config, "HuatuoGPT-Vision-34B-hf").name == "huatuogpt-vision"
    assert family_for_config(config, "llava-1.5-7b-hf").name == "llava"
    directory = tmp_path / "HuatuoGPT-Vision-34B-hf"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    assert detect_family(directory).name == "huatuogpt-vision"


def test_a_missing_or_broken_config_is_a_staging_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelNotStaged, match=re.escape("no config.json")):
        detect_family(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "lla')
    with pytest.raises(ModelNotStaged, match=re.escape("config.json is unreadable")):
        detect_family(tmp_path)


def test_families_are_consistent() -> None:
    assert set(FAMILIES) == {"llava", "huatuogpt-vision", "medgemma", "qwen2.5-vl", "longllava"}
    for key, family in FAMILIES.items():
        assert family.name == key
        assert family.max_images >= 3
        assert family.examples
        assert all(re.fullmatch(r"[\w.-]+/[\w.-]+", example) for example in family.examples)
        assert family.gpu_memory_gib
    assert FAMILIES["llava"].image_tokens == 576
    assert FAMILIES["huatuogpt-vision"].image_tokens == 576
    assert FAMILIES["medgemma"].image_tokens == 256
    assert FAMILIES["longllava"].image_tokens == 144
    assert FAMILIES["qwen2.5-vl"].image_tokens is None
    assert FAMILIES["qwen2.5-vl"].max_image_pixels == 1280 * 28 * 28
    assert not FAMILIES["llava"].supports_system_prompt
    assert not FAMILIES["huatuogpt-vision"].supports_system_prompt
    assert FAMILIES["medgemma"].supports_system_prompt
    assert FAMILIES["qwen2.5-vl"].supports_system_prompt
    assert "google/medgemma-4b-it" in FAMILIES["medgemma"].examples
    assert "lingshu-medical-mllm/Lingshu-7B" in FAMILIES["qwen2.5-vl"].examples
    assert "FreedomIntelligence/HuatuoGPT-Vision-7B-hf" in FAMILIES["huatuogpt-vision"].examples


def test_gpu_memory_is_bf16_weights_plus_headroom() -> None:
    # 7B parameters are 13.0 GiB in bf16; plus 10 % and 2 GiB.
    assert bf16_memory_gib(7.0) == 16.5
    assert FAMILIES["llava"].gpu_memory_gib["7B"] == pytest.approx(18.0)
    assert FAMILIES["medgemma"].gpu_memory_gib == {"4B": 11.0, "27B": 58.5}
    assert FAMILIES["llava"].gpu_memory_gib["34B"] == pytest.approx(73.5)
    for family in FAMILIES.values():
        for size, gib in family.gpu_memory_gib.items():
            billions = float(size.removesuffix("B"))
            assert billions * 2 * 1e9 / 2**30 < gib < billions * 2.6 * 1e9 / 2**30 + 3


def test_each_family_says_how_it_is_given_a_studys_images() -> None:
    assert set(get_args(ImagePresentation)) == set(PRESENTATIONS), "the same strings as the imaging side"
    assert {name: family.image_presentation for name, family in FAMILIES.items()} == {
        "llava": "montage",  # LLaVA-1.5 / LLaVA-NeXT / converted LLaVA-Med: trained on one image
        "huatuogpt-vision": "separate",
        "medgemma": "separate",
        "qwen2.5-vl": "separate",
        "longllava": "series",
    }
    assert DEFAULT_IMAGE_PRESENTATION == "separate", "an unregistered served model (OpenAI-compatible)"


def test_each_family_gets_no_more_images_than_it_takes(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path, 40, rows=16, columns=16)
    counts = {
        name: len(
            prepare_study(
                files, max_images=family.image_limit, image_size=32, presentation=family.image_presentation
            ).images
        )
        for name, family in FAMILIES.items()
    }
    assert counts == {"llava": 1, "huatuogpt-vision": 4, "medgemma": 8, "qwen2.5-vl": 8, "longllava": 80}
