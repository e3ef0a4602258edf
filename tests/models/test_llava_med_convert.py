"""LLaVA-Med v1.5 conversion: a tiny checkpoint in the original LLaVA layout, converted and compared logit for logit.

The original checkpoint is written here as the LLaVA code saves one (``llava_mistral`` config.json,
``model.mm_projector.*``, Mistral weights, ``lm_head``; the CLIP tower staged apart as a CLIPModel
checkpoint, as ``openai/clip-vit-large-patch14-336`` is).  The reference forward pass runs the
original weights directly: CLIP vision tower, layer -2 without CLS, the mlp2x_gelu projector,
features spliced at the image positions, Mistral, lm_head.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.backend import GenerationRequest
from models.conversion import ConversionError
from models.conversion.llava_med import CONVERSION_NOTE, IMAGE_TOKEN, convert_llava_med
from models.registry import detect_family
from models.smoke_vocabulary import train_smoke_tokenizer
from models.transformers_backend import TransformersBackend
from tests.models.samples import radiograph

IMAGE_SIZE = 56
PATCH_SIZE = 14
PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,
}
#: A tower with 64-wide heads, so that its configuration can be inferred from the weights' shapes.
VISION: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 1}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _tokenizer() -> Any:
    """A Mistral-shaped tokenizer (``<unk>``, ``<s>``, ``</s>``, bos added) without an ``<image>`` token."""
    return train_smoke_tokenizer(
        special_tokens=("<unk>", "<s>", "</s>"),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        unk_token="<unk>",
        add_bos_token=True,
    )


def _llava_config(vocab_size: int) -> dict[str, Any]:
    """config.json as LLaVA-Med v1.5's training code writes it (sizes shrunk)."""
    return {
        "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
        "architectures": ["LlavaMistralForCausalLM"],
        "model_type": "llava_mistral",
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        **TEXT,
        "vocab_size": vocab_size,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.36.2",
        "use_cache": False,
        "image_aspect_ratio": "pad",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "unfreeze_mm_vision_tower": False,
        "use_mm_proj": True,
        "mm_hidden_size": VISION["hidden_size"],
        "mm_patch_merge_type": "flat",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
    }


def _vision_config() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**VISION, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32)


def _clip_vision_weights(seed: int) -> dict[str, torch.Tensor]:
    """Random CLIP vision encoder weights, named without the ``vision_model.`` prefix."""
    from transformers import CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(_vision_config())
    state = {name.removeprefix("vision_model."): tensor for name, tensor in model.state_dict().items()}
    # Random (not default) layer norms, so that a swapped or missing weight changes the logits.
    return {name: torch.randn_like(tensor) * 0.5 if "norm" in name else tensor for name, tensor in state.items()}


def write_clip_dir(directory: Path, seed: int = 1) -> Path:
    """Stage a tiny CLIP model the way openai/clip-vit-large-patch14-336 ships (CLIPModel, both towers)."""
    from transformers import CLIPConfig

    directory.mkdir(parents=True)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    CLIPConfig(text_config=text, vision_config=_vision_config().to_dict(), projection_dim=32).save_pretrained(directory)
    weights = {f"vision_model.{name}": tensor for name, tensor in _clip_vision_weights(seed).items()}
    weights["text_model.embeddings.token_embedding.weight"] = torch.randn(50, 32)
    weights["logit_scale"] = torch.tensor(2.6592)
    save_file(weights, str(directory / "model.safetensors"))
    preprocessor = {
        "crop_size": IMAGE_SIZE,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
        "size": IMAGE_SIZE,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor), encoding="utf-8")
    return directory


def write_original_checkpoint(
    directory: Path, *, seed: int = 0, tower: dict[str, torch.Tensor] | None = None, pytorch_bin: bool = False
) -> Path:
    """Write a tiny LLaVA-Med v1.5 checkpoint in the original layout (two shards with an index)."""
    from transformers import MistralConfig, MistralForCausalLM

    directory.mkdir(parents=True)
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    language = MistralForCausalLM(MistralConfig(**TEXT, vocab_size=len(tokenizer), tie_word_embeddings=False))
    weights = {name: tensor.clone() for name, tensor in language.state_dict().items()}
    weights["model.norm.weight"] = torch.randn_like(weights["model.norm.weight"])
    first = torch.nn.Linear(VISION["hidden_size"], TEXT["hidden_size"])
    second = torch.nn.Linear(TEXT["hidden_size"], TEXT["hidden_size"])
    for index, layer in ((0, first), (2, second)):
        weights[f"model.mm_projector.{index}.weight"] = layer.weight.detach().clone()
        weights[f"model.mm_projector.{index}.bias"] = layer.bias.detach().clone()
    for name, tensor in (tower or {}).items():
        weights[f"model.vision_tower.vision_tower.vision_model.{name}"] = tensor
    config = _llava_config(len(tokenizer))
    if tower is not None:
        config["unfreeze_mm_vision_tower"] = True
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "max_length": 4096, "pad_token_id": 0}
    (directory / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")

    if pytorch_bin:
        torch.save(weights, directory / "pytorch_model.bin")
        return directory
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({name: weights[name].contiguous() for name in shard_names}, str(directory / shard))
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return directory


def _original_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / "pytorch_model.bin").is_file():
        loaded: dict[str, torch.Tensor] = torch.load(directory / "pytorch_model.bin", weights_only=True)
        return loaded
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(str(shard)))
    return weights


def reference_logits(
    original: Path, tower: dict[str, torch.Tensor], input_ids: torch.Tensor, pixel_values: torch.Tensor, image_id: int
) -> torch.Tensor:
    """LLaVA's forward pass, computed directly from the original-layout weights."""
    from transformers import CLIPVisionModel, MistralConfig, MistralForCausalLM

    weights = _original_weights(original)
    clip = CLIPVisionModel(_vision_config()).eval()
    clip.load_state_dict(tower, strict=True)
    language = MistralForCausalLM(
        MistralConfig(**TEXT, vocab_size=weights["lm_head.weight"].shape[0], tie_word_embeddings=False)
    ).eval()
    language.load_state_dict(
        {name: tensor for name, tensor in weights.items() if "mm_projector" not in name and "vision_tower" not in name},
        strict=True,
    )
    with torch.no_grad():
        hidden = clip(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        first = torch.nn.functional.linear(
            hidden, weights["model.mm_projector.0.weight"], weights["model.mm_projector.0.bias"]
        )
        features = torch.nn.functional.linear(
            torch.nn.functional.gelu(first),
            weights["model.mm_projector.2.weight"],
            weights["model.mm_projector.2.bias"],
        )
        is_image = input_ids == image_id
        text_ids = input_ids.masked_fill(is_image, 0)
        embeds = language.model.embed_tokens(text_ids)
        embeds[is_image] = features.reshape(-1, features.shape[-1])
        return language(inputs_embeds=embeds).logits


def _clip_tower(clip_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(clip_dir / "model.safetensors"))
    return {
        name.removeprefix("vision_model."): tensor
        for name, tensor in weights.items()
        if name.startswith("vision_model.")
    }


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip_dir(tmp_path_factory.mktemp("clip") / "clip-vit-tiny-patch14-56")


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_original_checkpoint(tmp_path_factory.mktemp("original") / "llava-med-v1.5-mistral-tiny")


@pytest.fixture(scope="module")
def converted_dir(original_dir: Path, clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_llava_med(
        original_dir, tmp_path_factory.mktemp("converted") / "llava-med-hf", vision_tower_dir=clip_dir
    )


def _converted_logits(converted: Path, image_seed: int = 0) -> tuple[Any, torch.Tensor, int, int]:
    """Run the converted checkpoint as the loader does; return its inputs, logits, image token id and vocab."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(converted, local_files_only=True)
    model, info = AutoModelForImageTextToText.from_pretrained(
        converted, local_files_only=True, output_loading_info=True
    )
    assert not any(info.values()), info  # every weight found, none left over
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a pneumothorax?"}]}
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert prompt == "[INST] <image>\nIs there a pneumothorax? [/INST]"
    inputs = processor(text=[prompt], images=[[radiograph(80, 48, shade=image_seed)]], return_tensors="pt")
    image_id = int(model.config.image_token_index)
    assert int((inputs["input_ids"] == image_id).sum()) == PATCHES
    assert inputs["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        logits = model.eval()(**inputs).logits
    return inputs, logits, image_id, int(model.config.text_config.vocab_size)


def test_converted_model_matches_the_original_logit_for_logit(
    original_dir: Path, clip_dir: Path, converted_dir: Path
) -> None:
    inputs, logits, image_id, vocab_size = _converted_logits(converted_dir)
    original_vocab = json.loads((original_dir / "config.json").read_text())["vocab_size"]
    assert vocab_size % 64 == 0 and vocab_size > original_vocab  # grown for <image>
    expected = reference_logits(
        original_dir, _clip_tower(clip_dir), inputs["input_ids"], inputs["pixel_values"], image_id
    )
    torch.testing.assert_close(logits[..., :original_vocab], expected)


def test_a_tower_saved_in_the_checkpoint_is_converted_from_pytorch_bin(tmp_path: Path) -> None:
    tower = _clip_vision_weights(seed=7)
    original = write_original_checkpoint(tmp_path / "original", seed=3, tower=tower, pytorch_bin=True)
    converted = convert_llava_med(original, tmp_path / "converted")
    inputs, logits, image_id, _ = _converted_logits(converted, image_seed=40)
    expected = reference_logits(original, tower, inputs["input_ids"], inputs["pixel_values"], image_id)
    torch.testing.assert_close(logits[..., : expected.shape[-1]], expected)
    note = json.loads((converted / CONVERSION_NOTE).read_text())
    assert note["vision_tower"] == "checkpoint" and note["source_weight_files"] == ["pytorch_model.bin"]


def test_converted_directory_is_a_staged_llava_checkpoint(original_dir: Path, converted_dir: Path) -> None:
    from transformers import AutoTokenizer

    config = json.loads((converted_dir / "config.json").read_text())
    assert config["model_type"] == "llava" and config["text_config"]["model_type"] == "mistral"
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "default"
    assert config["text_config"]["rope_parameters"]["rope_theta"] == TEXT["rope_theta"]
    tokenizer = AutoTokenizer.from_pretrained(converted_dir, local_files_only=True)
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == config["image_token_index"]
    assert tokenizer.encode(f"a {IMAGE_TOKEN}\nb").count(config["image_token_index"]) == 1
    assert detect_family(converted_dir).name == "llava"
    note = json.loads((converted_dir / CONVERSION_NOTE).read_text())
    assert note["source"] == str(original_dir.resolve()) and note["converted_from"] == "llava-med"
    assert note["versions"]["transformers"] and note["converted_at"]
    assert not list(converted_dir.parent.glob(".*converting*"))  # the staging directory was moved into place


def test_converted_model_generates_through_the_backend_with_the_llava_med_template(converted_dir: Path) -> None:
    backend = TransformersBackend(converted_dir, device="cpu", max_new_tokens=4)
    request = GenerationRequest(
        request_id="r1", prompt="Describe the findings.", images=(radiograph(64, 64),), system_prompt="Be brief."
    )
    prompt = backend.render_prompt(request)
    assert prompt.startswith("[INST] <image>\n") and prompt.endswith("Describe the findings. [/INST]")
    assert "Be brief." in prompt
    [result] = backend.generate([request])
    assert result.request_id == "r1" and 1 <= result.tokens_out <= 4
    assert result.tokens_in > PATCHES  # the image's 16 tokens and the text


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "models", "convert", *args], capture_output=True, text=True, timeout=300
    )


def _edited_copy(original: Path, target: Path, **changes: Any) -> Path:
    import shutil

    shutil.copytree(original, target)
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not-llava-mistral", "not an original LLaVA-Med v1.5 checkpoint: model_type is llava"),
        ("missing-shard", "1 of 2 weight shards named in model.safetensors.index.json are missing"),
        ("unknown-projector", "unknown projector type 'identity'"),
        ("no-vision-tower", "pass it with --vision-tower DIR"),
        ("target-not-empty", "exists and is not empty; choose another or pass --overwrite"),
    ],
)
def test_cli_refuses_what_it_cannot_convert(
    case: str, message: str, original_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    source, target = original_dir, tmp_path / "converted"
    tower = ["--vision-tower", str(clip_dir)]
    if case == "not-llava-mistral":
        source = _edited_copy(original_dir, tmp_path / "source", model_type="llava")
    elif case == "missing-shard":
        source = _edited_copy(original_dir, tmp_path / "source")
        (source / "model-00002-of-00002.safetensors").unlink()
    elif case == "unknown-projector":
        source = _edited_copy(original_dir, tmp_path / "source", mm_projector_type="identity")
    elif case == "no-vision-tower":
        tower = []
    else:
        target.mkdir()
        (target / "keep.txt").write_text("kept")
    completed = _run_cli("--from", "llava-med", str(source), "--to", str(target), *tower)
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    assert message in " ".join(completed.stderr.split())
    if case == "target-not-empty":
        assert [path.name for path in target.iterdir()] == ["keep.txt"]  # nothing lost
    else:
        assert not target.exists()  # nothing half-written
    assert not list(tmp_path.glob(".*converting*"))


def test_cli_converts_and_overwrites_only_when_asked(original_dir: Path, clip_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "converted"
    target.mkdir()
    (target / "old.txt").write_text("old")
    args = ("--from", "llava-med", str(original_dir), "--to", str(target), "--vision-tower", str(clip_dir))
    completed = _run_cli(*args, "--overwrite")
    assert completed.returncode == 0, completed.stderr
    assert not (target / "old.txt").exists()
    assert (target / "model.safetensors").is_file() and (target / CONVERSION_NOTE).is_file()
    assert detect_family(target).name == "llava"


def test_cli_help_and_unknown_release() -> None:
    completed = _run_cli("--help")
    assert completed.returncode == 0
    for option in ("--from", "--to", "--vision-tower", "--overwrite", "llava-med"):
        assert option in completed.stdout
    unknown = _run_cli("--from", "llava-next", "x", "--to", "y")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr


def test_conversion_error_is_a_value_error_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="is not a directory"):
        convert_llava_med(tmp_path / "absent", tmp_path / "converted")
