"""Smoke-test checkpoints: tiny, marked as noise, reproducible, with trained tokenizers of the family's shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from models.fingerprint import read_safetensors_header, weights_fingerprint
from models.smoke import SMOKE_CONFIG_FIELD, SMOKE_MARKER_FILE, build_smoke_model, is_smoke_model
from tests.models.samples import SMOKE_NAMES

FAMILY_TOKENS = {
    "llava": ("<s>", "</s>", "<pad>", "<image>"),
    "llava-next": ("<s>", "</s>", "<pad>", "<image>"),
    "huatuogpt-vision": ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>"),
    "medgemma": ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<image_soft_token>"),
    "qwen2.5-vl": ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
}


@pytest.mark.parametrize("name", SMOKE_NAMES)
def test_smoke_checkpoints_are_tiny_marked_and_have_trained_tokenizers(
    name: str, smoke_dir: Callable[[str], Path]
) -> None:
    directory = smoke_dir(name)
    assert is_smoke_model(directory)
    assert "its output is noise" in (directory / SMOKE_MARKER_FILE).read_text()
    config = json.loads((directory / "config.json").read_text())
    assert "noise" in config[SMOKE_CONFIG_FIELD]

    header = read_safetensors_header(directory / "model.safetensors")
    assert {entry["dtype"] for entry in header.tensors.values()} == {"F32"}
    parameters = header.data_length // 4
    assert 50_000 < parameters < 1_000_000

    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    vocabulary = tokenizer["model"]["vocab"]
    assert tokenizer["model"]["type"] == "BPE"
    assert 300 <= len(vocabulary) <= 1024
    special = {token["content"] for token in tokenizer["added_tokens"] if token["special"]}
    assert set(FAMILY_TOKENS[name]) <= special


def test_the_seed_decides_the_weights(smoke_dir: Callable[[str], Path], tmp_path: Path) -> None:
    same = build_smoke_model("huatuogpt-vision", tmp_path / "same", seed=0)
    other = build_smoke_model("huatuogpt-vision", tmp_path / "other", seed=1)
    reference = weights_fingerprint(smoke_dir("huatuogpt-vision"))
    assert weights_fingerprint(same) == reference
    assert weights_fingerprint(other) != reference


def test_unknown_smoke_family(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="choose one of llava, llava-next"):
        build_smoke_model("no-such-family", tmp_path)
    assert not is_smoke_model(tmp_path)
