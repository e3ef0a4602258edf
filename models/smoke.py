"""Tiny randomly initialised models of each supported architecture, for smoke tests and the demo.

:func:`build_smoke_model` writes a complete checkpoint directory (safetensors weights,
``config.json``, tokenizer, image processor, chat template, generation config) of the exact
transformers architecture a family's real checkpoints use, only a few hundred thousand
parameters large, so that building, loading and generating take about a second on a CPU.  It
goes through the same :class:`~models.transformers_backend.TransformersBackend` code path as a
real checkpoint.  Its weights are random: **its text is noise**.  The directory says so in
``SMOKE_TEST_MODEL.txt`` and in the ``pacs_vlm_smoke_test`` field of ``config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models import chat_templates
from models.registry import FAMILIES, read_model_config
from models.smoke_vocabulary import train_smoke_tokenizer

SMOKE_MARKER_FILE = "SMOKE_TEST_MODEL.txt"
SMOKE_CONFIG_FIELD = "pacs_vlm_smoke_test"
SMOKE_NOTE = "randomly initialised smoke-test model built by pacs-vlm; its output is noise, not a reading"

#: Vision input of the tiny models: 56x56 pixels in 14x14 patches (4x4 patches).
IMAGE_SIZE = 56
PATCH_SIZE = 14
#: Visual tokens per image of the tiny fixed-resolution models.
LLAVA_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
GEMMA_IMAGE_TOKENS = 4
#: Pixel bounds of the tiny Qwen2.5-VL image processor: 1 to 8 visual tokens of 28x28 pixels.
QWEN_MIN_PIXELS = 28 * 28
QWEN_MAX_PIXELS = 8 * 28 * 28

_TEXT: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
_TEXT_EXTRA: dict[str, Any] = {"num_key_value_heads": 2, "max_position_embeddings": 2048}
_VISION: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [int(tokenizer.convert_tokens_to_ids(token)) for token in tokens]


def _llava_tokenizer() -> Any:
    return train_smoke_tokenizer(
        special_tokens=("<unk>", "<s>", "</s>", "<pad>", "<image>"),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
        named_tokens={"image_token": "<image>"},
    )


def _chatml_llava_tokenizer() -> Any:
    return train_smoke_tokenizer(
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        named_tokens={"image_token": "<image>"},
    )


def _clip_vision(image_size: int = IMAGE_SIZE) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**_VISION, image_size=image_size, patch_size=PATCH_SIZE, projection_dim=32)


def _llava_processor(tokenizer: Any, template: str | None) -> Any:
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor_class: Any = LlavaProcessor
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )


def _build_llava(tokenizer: Any, text_config: Any, template: str | None) -> tuple[Any, Any]:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=_clip_vision(),
        text_config=text_config,
        image_token_index=_ids(tokenizer, "<image>")[0],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=LLAVA_IMAGE_TOKENS,
    )
    return LlavaForConditionalGeneration(config), _llava_processor(tokenizer, template)


def _llava() -> tuple[Any, Any, dict[str, Any]]:
    from transformers import LlamaConfig

    tokenizer = _llava_tokenizer()
    bos, eos, pad = _ids(tokenizer, "<s>", "</s>", "<pad>")
    text = LlamaConfig(
        **_TEXT, **_TEXT_EXTRA, vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=eos, pad_token_id=pad
    )
    model, processor = _build_llava(tokenizer, text, chat_templates.LLAVA_15)
    return model, processor, {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}


def _llava_next() -> tuple[Any, Any, dict[str, Any]]:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )

    tokenizer = _llava_tokenizer()
    bos, eos, pad = _ids(tokenizer, "<s>", "</s>", "<pad>")
    tile = 2 * PATCH_SIZE
    pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    text = MistralConfig(
        **_TEXT, **_TEXT_EXTRA, vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=eos, pad_token_id=pad
    )
    config = LlavaNextConfig(
        vision_config=_clip_vision(tile),
        text_config=text,
        image_token_index=_ids(tokenizer, "<image>")[0],
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(tile // PATCH_SIZE) ** 2,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    processor_class: Any = LlavaNextProcessor
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_templates.LLAVA_NEXT_MISTRAL,
    )
    model = LlavaNextForConditionalGeneration(config)
    return model, processor, {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}


def _huatuogpt_vision() -> tuple[Any, Any, dict[str, Any]]:
    from transformers import Qwen2Config

    tokenizer = _chatml_llava_tokenizer()
    end_of_text, im_end = _ids(tokenizer, "<|endoftext|>", "<|im_end|>")
    text = Qwen2Config(
        **_TEXT,
        **_TEXT_EXTRA,
        vocab_size=len(tokenizer),
        bos_token_id=end_of_text,
        eos_token_id=im_end,
        pad_token_id=end_of_text,
    )
    # As the -hf releases: the processor has no template, the tokenizer Qwen2's text-only one.
    tokenizer.chat_template = chat_templates.QWEN2_TEXT
    model, processor = _build_llava(tokenizer, text, None)
    return model, processor, {"eos_token_id": [im_end, end_of_text], "pad_token_id": end_of_text}


def _medgemma() -> tuple[Any, Any, dict[str, Any]]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tokenizer = train_smoke_tokenizer(
        special_tokens=(
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
        named_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    pad, eos, bos, end_of_turn, boi, eoi, image = _ids(
        tokenizer,
        "<pad>",
        "<eos>",
        "<bos>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    )
    text = Gemma3TextConfig(
        **_TEXT,
        **_TEXT_EXTRA,
        vocab_size=len(tokenizer),
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=64,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
    )
    vision = SiglipVisionConfig(**_VISION, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=GEMMA_IMAGE_TOKENS,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        chat_template=chat_templates.GEMMA3,
        image_seq_length=GEMMA_IMAGE_TOKENS,
    )
    model = Gemma3ForConditionalGeneration(config)
    return model, processor, {"bos_token_id": bos, "eos_token_id": [eos, end_of_turn], "pad_token_id": pad}


def _qwen2_5_vl() -> tuple[Any, Any, dict[str, Any]]:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tokenizer = train_smoke_tokenizer(
        special_tokens=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        named_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    end_of_text, im_end, start, end, image, video = _ids(
        tokenizer, "<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
    )
    head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
    text = {
        **_TEXT,
        **_TEXT_EXTRA,
        "vocab_size": len(tokenizer),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, head_dim // 2 - 5]},
        "bos_token_id": end_of_text,
        "eos_token_id": im_end,
        "pad_token_id": end_of_text,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": _TEXT["hidden_size"],
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
    )
    image_processor = Qwen2VLImageProcessorPil(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    model = Qwen2_5_VLForConditionalGeneration(config)
    # Qwen2.5-VL's published generation config asks for near-greedy sampling; the backend must override it.
    generation = {
        "bos_token_id": end_of_text,
        "eos_token_id": [im_end, end_of_text],
        "pad_token_id": end_of_text,
        "do_sample": True,
        "temperature": 0.1,
        "top_p": 0.001,
        "top_k": 1,
        "repetition_penalty": 1.05,
    }
    return model, (image_processor, tokenizer, chat_templates.QWEN2_5_VL), generation


#: LongLLaVA's vision input: CLIP's 336 pixels in 14-pixel patches (24 x 24), pooled to 12 x 12 = 144 tokens.
LONGLLAVA_IMAGE_SIZE = 336


def _longllava() -> tuple[Any, Any, dict[str, Any]]:
    from transformers import CLIPImageProcessorPil, JambaConfig

    from models.longllava.configuration import LongLlavaConfig
    from models.longllava.modeling import LongLlavaForConditionalGeneration
    from models.longllava.processing import LongLlavaProcessor

    tokenizer = train_smoke_tokenizer(
        special_tokens=("<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|unk|>", "<image>"),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        add_bos_token=True,
        named_tokens={"image_token": "<image>"},
    )
    pad, bos, eos, image = _ids(tokenizer, "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<image>")
    # Dense (one expert) like LongLLaVA-9B; one attention layer per two layers (the real models: one per eight).
    text = JambaConfig(
        **_TEXT,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        num_experts=1,
        attn_layer_period=2,
        attn_layer_offset=1,
        mamba_d_state=8,
        mamba_dt_rank=8,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
    )
    config = LongLlavaConfig(text_config=text, vision_config=_clip_vision(LONGLLAVA_IMAGE_SIZE), image_token_id=image)
    size = LONGLLAVA_IMAGE_SIZE
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LongLlavaProcessor(image_processor, tokenizer, image_tokens=config.image_tokens)
    model = LongLlavaForConditionalGeneration(config)
    return model, processor, {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}


#: Smoke models that can be built: the registry's families, and a LLaVA-NeXT variant of ``llava``.
SMOKE_BUILDERS: dict[str, tuple[str, Callable[[], tuple[Any, Any, dict[str, Any]]]]] = {
    "llava": ("llava", _llava),
    "llava-next": ("llava", _llava_next),
    "huatuogpt-vision": ("huatuogpt-vision", _huatuogpt_vision),
    "medgemma": ("medgemma", _medgemma),
    "qwen2.5-vl": ("qwen2.5-vl", _qwen2_5_vl),
    "longllava": ("longllava", _longllava),
}


def _save_qwen_processor(parts: tuple[Any, Any, str], directory: Path) -> None:
    """Save as Qwen2.5-VL checkpoints ship: preprocessor_config.json, tokenizer files, chat_template.json."""
    image_processor, tokenizer, template = parts
    image_processor.save_pretrained(directory)
    preprocessor = directory / "preprocessor_config.json"
    settings = json.loads(preprocessor.read_text(encoding="utf-8"))
    settings["processor_class"] = "Qwen2_5_VLProcessor"
    preprocessor.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(directory)
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2) + "\n")


def _keep_template_in_tokenizer_config(directory: Path) -> None:
    """Store the tokenizer's chat template the transformers 4.x way, inside ``tokenizer_config.json``."""
    template_file = directory / "chat_template.jinja"
    settings_file = directory / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    settings["chat_template"] = template_file.read_text(encoding="utf-8")
    settings_file.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    template_file.unlink()


def build_smoke_model(family: str, directory: Path, *, seed: int = 0) -> Path:
    """Build a tiny randomly initialised checkpoint of a family's architecture.

    Returns ``directory``, ready for :class:`~models.transformers_backend.TransformersBackend`.

    Parameters
    ----------
    family : str
        A key of :data:`models.registry.FAMILIES`, or ``llava-next`` for a LLaVA-NeXT model of the
        ``llava`` family.
    directory : Path
        Where to write the checkpoint (created; existing files of the same names are replaced).
    seed : int
        Seed of the random weights: the same seed gives the same weights.

    Raises
    ------
    KeyError
        When ``family`` has no smoke model.
    """
    import torch

    if family not in SMOKE_BUILDERS:
        raise KeyError(f"no smoke model for {family!r}; choose one of {', '.join(SMOKE_BUILDERS)}")
    registry_name, builder = SMOKE_BUILDERS[family]
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor, generation = builder()
    setattr(model.config, SMOKE_CONFIG_FIELD, SMOKE_NOTE)
    for name, value in generation.items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(directory)
    if isinstance(processor, tuple):
        _save_qwen_processor(processor, directory)
    else:
        processor.save_pretrained(directory)
        if processor.chat_template is None:
            _keep_template_in_tokenizer_config(directory)
    (directory / SMOKE_MARKER_FILE).write_text(
        f"pacs-vlm smoke-test model: {FAMILIES[registry_name].name} family ({family}), seed {seed}.\n"
        f"This is a {SMOKE_NOTE}.\n"
        "It exists to test the loading and generation code path; never use it for a patient.\n",
        encoding="utf-8",
    )
    return directory


def is_smoke_model(model_dir: Path) -> bool:
    """Whether a directory holds a smoke-test model (its text is noise).

    True when it carries the marker file or the ``pacs_vlm_smoke_test`` configuration field.
    """
    if (model_dir / SMOKE_MARKER_FILE).is_file():
        return True
    try:
        return bool(read_model_config(model_dir).get(SMOKE_CONFIG_FIELD))
    except Exception:
        return False
