"""The model families this service runs, and how a staged checkpoint is recognised.

A family groups checkpoints that share an architecture in transformers, a prompt layout and the
same image budget.  The family of a staged directory is read from its ``config.json`` alone
(``model_type``, ``text_config.model_type``, ``architectures``), so nothing heavy is imported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models import chat_templates
from models.backend import ModelNotStaged
from models.longllava.prompt import LONGLLAVA_CHAT_TEMPLATE

#: Bytes per parameter of bf16 weights.
BF16_BYTES = 2
#: Headroom on top of the weights: CUDA context, activations and the KV cache of a small batch.
HEADROOM_FRACTION = 0.10
HEADROOM_GIB = 2.0

#: Tokens of a request kept for the prompt's text and the answer when a context budget is shared out among images.
TEXT_TOKENS_RESERVED = 1536
#: Most images any request may carry (the routing rules' and settings' limit).
MOST_IMAGES = 1024

#: How a family is given a study's images: the values of ``integration.imaging.routing.Presentation``
#: (the models package does not import the integration one; a test keeps the two equal).
#: ``"montage"``: one labelled grid of the chosen slices and windows (models trained on one image);
#: ``"separate"``: one image per slice and window (multi-image models); ``"series"``: every frame of
#: the chosen series (long-context models).
ImagePresentation = Literal["montage", "separate", "series"]
#: The presentation of a model whose family is not registered (an OpenAI-compatible server's
#: generic model): separate images, as every chat-completions API takes them.
DEFAULT_IMAGE_PRESENTATION: ImagePresentation = "separate"

#: Qwen2.5-VL's own recommended pixel cap (1280 visual tokens of 28x28 pixels per image).
QWEN_MAX_IMAGE_PIXELS = 1280 * 28 * 28


class UnsupportedModel(ValueError):
    """The checkpoint is a model this service cannot run (the message says what to use instead)."""


def bf16_memory_gib(parameters_billion: float) -> float:
    """GPU memory to plan for a model in bf16, in GiB, rounded up to half a GiB.

    ``parameters_billion`` counts the whole checkpoint (vision tower and projector included), in
    billions. Weights (2 bytes per parameter) plus 10 % and 2 GiB of headroom.
    """
    weights_gib = parameters_billion * 1e9 * BF16_BYTES / 2**30
    return math.ceil((weights_gib * (1 + HEADROOM_FRACTION) + HEADROOM_GIB) * 2) / 2


def _memory_by_size(parameters_billion: Mapping[str, float]) -> dict[str, float]:
    return {size: bf16_memory_gib(count) for size, count in parameters_billion.items()}


@dataclass(frozen=True)
class ModelFamily:
    """A family of vision-language checkpoints that load and prompt the same way.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``medgemma``.
    description : str
        What the family is and which checkpoints belong to it.
    model_types : tuple of str
        ``config.json`` ``model_type`` values the family matches.
    max_images : int
        Most images one request may carry.
    image_tokens : int or None
        Visual tokens per image at the model's base resolution; None where it depends on the image size.
    supports_system_prompt : bool
        Whether the chat template has a system role (otherwise it is prepended to the user's text).
    examples : tuple of str
        Hugging Face repositories of this family that load natively in transformers.
    gpu_memory_gib : dict of str to float
        GPU memory to plan per example size (``"7B"``), from parameter counts: bf16 weights plus headroom.
    text_model_types : tuple of str
        The language model's ``model_type`` values it requires (empty: any).
    architectures : tuple of str
        ``architectures`` entries that identify it when ``model_type`` is absent.
    max_image_pixels : int or None
        Images above this many pixels are scaled down first (families whose token count grows with size).
    fallback_chat_template : str or None
        The family's documented prompt layout, used only when a checkpoint ships no chat template that
        places images.
    name_hints : tuple of str
        Lower-case fragments of a directory or repository name that pick this family among those
        matching the configuration (for releases whose configuration does not tell them apart).
    max_context_tokens : int or None
        The token budget of one request (prompt, images and answer); with ``image_tokens`` it
        bounds the images: see :attr:`image_limit`.  None: ``max_images`` alone.
    image_presentation : {"separate", "montage", "series"}
        How the family is given a study's images (:data:`ImagePresentation`): what
        ``integration.imaging.selection.prepare_study`` is asked for, as trained.
    """

    name: str
    description: str
    model_types: tuple[str, ...]
    max_images: int
    image_tokens: int | None
    supports_system_prompt: bool
    examples: tuple[str, ...]
    gpu_memory_gib: dict[str, float] = field(hash=False)
    text_model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    max_image_pixels: int | None = None
    fallback_chat_template: str | None = None
    name_hints: tuple[str, ...] = ()
    max_context_tokens: int | None = None
    image_presentation: ImagePresentation = DEFAULT_IMAGE_PRESENTATION

    @property
    def image_limit(self) -> int:
        """Most images per request: ``max_images``, and no more than the token budget holds.

        The budget less :data:`TEXT_TOKENS_RESERVED` for the text, divided by ``image_tokens``:
        a whole CT series goes to a family whose budget holds it, a sample to the others.
        """
        if self.max_context_tokens is None or not self.image_tokens:
            return self.max_images
        budget = max(self.max_context_tokens - TEXT_TOKENS_RESERVED, 0) // self.image_tokens
        return max(1, min(self.max_images, budget))


FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily(
            name="llava",
            description=(
                "LLaVA in the llava-hf layout: LLaVA-1.5 (CLIP ViT-L/14-336, 576 visual tokens per image, "
                "images padded to square) and LLaVA-NeXT (any-resolution tiles, up to about 2,900 visual "
                "tokens per image); the system prompt goes in front of the user's text."
            ),
            model_types=("llava", "llava_next"),
            max_images=4,
            image_tokens=576,
            supports_system_prompt=False,
            examples=(
                "llava-hf/llava-1.5-7b-hf",
                "llava-hf/llava-1.5-13b-hf",
                "llava-hf/llava-v1.6-mistral-7b-hf",
                "llava-hf/llava-v1.6-34b-hf",
            ),
            gpu_memory_gib=_memory_by_size({"7B": 7.57, "13B": 13.35, "34B": 34.76}),
            architectures=("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration"),
            max_context_tokens=4096,
            # Trained on one image per conversation (LLaVA-Med, converted to this layout, too).
            image_presentation="montage",
        ),
        ModelFamily(
            name="huatuogpt-vision",
            description=(
                "HuatuoGPT-Vision (-hf releases): LLaVA-1.5 layout with a CLIP ViT-L/14-336 vision tower "
                "(576 visual tokens per image, images padded to square) and a Qwen2 (7B) or Yi-1.5 (34B) "
                "language model; prompts '<|user|>\\n<image>\\n...\\n<|assistant|>\\n' without a system role, "
                "as its model card documents (the checkpoints carry only a text chat template)."
            ),
            model_types=("llava",),
            max_images=4,
            image_tokens=576,
            supports_system_prompt=False,
            examples=("FreedomIntelligence/HuatuoGPT-Vision-7B-hf", "FreedomIntelligence/HuatuoGPT-Vision-34B-hf"),
            gpu_memory_gib=_memory_by_size({"7B": 7.94, "34B": 34.75}),
            text_model_types=("qwen2",),
            architectures=("LlavaForConditionalGeneration",),
            fallback_chat_template=chat_templates.HUATUOGPT_VISION,
            name_hints=("huatuogpt-vision",),
            image_presentation="separate",  # multi-image
        ),
        ModelFamily(
            name="medgemma",
            description=(
                "MedGemma (Gemma 3 with a SigLIP vision tower at 896x896 pixels, 256 visual tokens per image); "
                "the system prompt is folded into the first user turn by its chat template."
            ),
            model_types=("gemma3",),
            max_images=8,
            image_tokens=256,
            supports_system_prompt=True,
            examples=("google/medgemma-4b-it", "google/medgemma-27b-it"),
            gpu_memory_gib=_memory_by_size({"4B": 4.30, "27B": 27.43}),
            architectures=("Gemma3ForConditionalGeneration",),
            image_presentation="separate",  # multi-image
        ),
        ModelFamily(
            name="qwen2.5-vl",
            description=(
                "Qwen2.5-VL and its medical fine-tunes (Lingshu, HuatuoGPT-Vision-7B-Qwen2.5VL): dynamic "
                "resolution, one visual token per 28x28 pixels, images capped at 1280 tokens."
            ),
            model_types=("qwen2_5_vl",),
            max_images=8,
            image_tokens=None,
            supports_system_prompt=True,
            examples=(
                "lingshu-medical-mllm/Lingshu-7B",
                "lingshu-medical-mllm/Lingshu-32B",
                "FreedomIntelligence/HuatuoGPT-Vision-7B-Qwen2.5VL",
            ),
            gpu_memory_gib=_memory_by_size({"7B": 8.29, "32B": 33.45}),
            architectures=("Qwen2_5_VLForConditionalGeneration",),
            max_image_pixels=QWEN_MAX_IMAGE_PIXELS,
            image_presentation="separate",  # multi-image
        ),
        ModelFamily(
            name="longllava",
            description=(
                "LongLLaVA (LongLLaVA-9B, LongLLaVA-53B-A13B, LongLLaVAMed-9B): a Jamba hybrid (Mamba and "
                "attention) language model, CLIP ViT-L/14-336 and an MLP projector with 2D pooling to 144 visual "
                "tokens per image, made for many images: a whole CT series fits one prompt. Architecture code in "
                "models.longllava (no remote code); prompts '<|startoftext|><|User|>\\n<image>\\n...\\n"
                "<|startoftext|><|Assistant|>\\n' without a system role."
            ),
            model_types=("longllava", "llava_jamba", "jamba"),
            max_images=MOST_IMAGES,
            image_tokens=144,
            supports_system_prompt=False,
            examples=(
                "FreedomIntelligence/LongLLaVA-9B",
                "FreedomIntelligence/LongLLaVA-53B-A13B",
                "FreedomIntelligence/LongLLaVAMed-9B",
            ),
            gpu_memory_gib=_memory_by_size({"9B": 9.3, "53B": 52.3}),  # 53B-A13B: 53B in all, 13B active
            architectures=("LongLlavaForConditionalGeneration", "LlavaJambaForCausalLM"),
            fallback_chat_template=LONGLLAVA_CHAT_TEMPLATE,
            max_context_tokens=131072,
            image_presentation="series",
        ),
    )
}

#: Checkpoints users are likely to try that need something else first (model_type -> what to do).
_KNOWN_UNSUPPORTED = {
    "llava_mistral": (
        "this is LLaVA-Med v1.5 in the original LLaVA code layout; convert it once to the llava-hf layout "
        "with `pacs-vlm models convert --from llava-med <dir> --to <new dir> --vision-tower <local copy of "
        "openai/clip-vit-large-patch14-336>` and stage the converted directory"
    ),
    "llava_llama": (
        "this checkpoint is in the original LLaVA code layout; use its llava-hf release "
        "(e.g. llava-hf/llava-1.5-7b-hf) or convert it to the llava-hf layout"
    ),
    "llava_qwen2": (
        "this HuatuoGPT-Vision checkpoint is in the original LLaVA code layout; use the -hf release "
        "(FreedomIntelligence/HuatuoGPT-Vision-7B-hf)"
    ),
    "gemma3_text": (
        "this is a text-only Gemma 3 model (e.g. medgemma-27b-text-it) without a vision tower; "
        "use google/medgemma-4b-it or google/medgemma-27b-it"
    ),
}


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """Read a staged directory's ``config.json``.

    Raises
    ------
    ModelNotStaged
        When the directory or its ``config.json`` is missing or unreadable.
    """
    if not model_dir.is_dir():
        raise ModelNotStaged("the model directory does not exist", directory=model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelNotStaged("no config.json (is this the downloaded repository's top folder?)", directory=model_dir)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelNotStaged(f"config.json is unreadable ({error}); copy it again", directory=model_dir) from error
    if not isinstance(config, dict):
        raise ModelNotStaged("config.json does not hold a JSON object; copy it again", directory=model_dir)
    return config


def family_for_config(config: Mapping[str, Any], name: str = "") -> ModelFamily:
    """Find the family of a parsed ``config.json``.

    The family that names the language model's type, else one whose name hint ``name`` (the
    checkpoint's directory or repository name, if known) contains, else the generic one.

    Raises
    ------
    UnsupportedModel
        When no family matches; the message lists what is supported.
    """
    model_type = str(config.get("model_type") or "")
    text_config = config.get("text_config")
    text_model_type = str(text_config.get("model_type") or "") if isinstance(text_config, Mapping) else ""
    architectures = tuple(str(name) for name in config.get("architectures") or ())

    if model_type:
        candidates = [family for family in FAMILIES.values() if model_type in family.model_types]
    else:
        candidates = [family for family in FAMILIES.values() if set(architectures) & set(family.architectures)]
    specific = [family for family in candidates if text_model_type and text_model_type in family.text_model_types]
    hinted = [family for family in candidates if any(hint in name.lower() for hint in family.name_hints)]
    generic = [family for family in candidates if not family.text_model_types]
    if specific or hinted or generic:
        return (specific or hinted or generic)[0]

    described = model_type or ", ".join(architectures) or "no model_type and no architectures"
    reason = _KNOWN_UNSUPPORTED.get(model_type)
    if reason is None and candidates:
        reason = f"its language model ({text_model_type or 'unknown'}) is not one this family supports"
    supported = "; ".join(f"{family.name}: {', '.join(family.model_types)}" for family in FAMILIES.values())
    raise UnsupportedModel(
        f"unsupported model ({described}): {reason or 'not a registered vision-language family'}. "
        f"Supported model types: {supported}."
    )


def detect_family(model_dir: Path) -> ModelFamily:
    """Recognise the family of a staged checkpoint from its ``config.json``.

    Raises
    ------
    ModelNotStaged
        When ``config.json`` is missing or unreadable.
    UnsupportedModel
        When the checkpoint is not of a supported family.
    """
    return family_for_config(read_model_config(model_dir), model_dir.resolve().name)
