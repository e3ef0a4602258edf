"""LLaVA-Med v1.5 (``llava_mistral``, LLaVA code layout) converted once to transformers' Llava layout.

The original release (``microsoft/llava-med-v1.5-mistral-7b``) is a Mistral language model with
LLaVA's ``mm_projector`` (``mlp2x_gelu``: linear, GELU, linear) on CLIP ViT-L/14-336 features of
the second-to-last layer without the CLS token.  Its CLIP tower is usually not in the checkpoint
but named by ``mm_vision_tower``; then a local copy of that CLIP model must be given.

The converted directory is a ``LlavaForConditionalGeneration`` checkpoint with a Mistral text
configuration, an ``<image>`` token (embeddings grown to hold it), a ``LlavaProcessor`` (CLIP image
processor, 576 visual tokens per image at 336 pixels) and LLaVA-Med's ``mistral_instruct`` chat
template, so that the normal loader runs it.  It is written to a temporary directory beside the
target and moved into place only when complete.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import chat_templates
from models.conversion import ConversionError
from models.conversion.original_weights import (
    VisionTower,
    infer_clip_vision_config,
    read_json_object,
    read_tensors,
    read_vision_tower,
    weight_files,
)

if TYPE_CHECKING:
    import torch

SOURCE_MODEL_TYPE = "llava_mistral"
PROJECTOR_TYPE = "mlp2x_gelu"
IMAGE_TOKEN = "<image>"
#: The embedding matrix is grown to a multiple of this (as the llava-hf conversions do).
VOCAB_MULTIPLE = 64
CONVERSION_NOTE = "conversion.json"
#: vision_feature_select_strategy of the converted model per LLaVA ``mm_vision_select_feature``.
_SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
_TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
_PROJECTOR_LAYERS = {"model.mm_projector.0.": "linear_1.", "model.mm_projector.2.": "linear_2."}
#: Buffers older checkpoints saved that transformers recomputes.
_RECOMPUTED = ("rotary_emb.inv_freq", "embeddings.position_ids")
#: Keys of a LLaVA config.json that are not the language model's.
_LLAVA_ONLY_KEYS = frozenset(
    {"architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path"}
)


@dataclass(frozen=True)
class LlavaMedSource:
    """An original LLaVA-Med v1.5 checkpoint that passed the checks: its directory, ``config.json`` and weight files."""

    directory: Path
    config: dict[str, Any]
    files: list[Path]

    @property
    def vision_tower_name(self) -> str:
        """The CLIP model the checkpoint names (``mm_vision_tower``)."""
        return str(self.config.get("mm_vision_tower") or self.config.get("vision_tower") or "a CLIP vision model")


def inspect_llava_med(directory: Path) -> LlavaMedSource:
    """Check that a directory holds an original LLaVA-Med v1.5 checkpoint this converter handles.

    Raises
    ------
    ConversionError
        When it is not a ``llava_mistral`` checkpoint, uses a projector, feature selection or
        image layout the Llava layout cannot express, or its weight shards are missing.
    """
    if not directory.is_dir():
        raise ConversionError(f"{directory} is not a directory")
    config = read_json_object(directory / "config.json")
    model_type = str(config.get("model_type") or "missing")
    if model_type != SOURCE_MODEL_TYPE:
        raise ConversionError(
            f"{directory} is not an original LLaVA-Med v1.5 checkpoint: model_type is {model_type}, "
            f"not {SOURCE_MODEL_TYPE}"
        )
    projector = str(config.get("mm_projector_type") or "linear")
    if projector != PROJECTOR_TYPE:
        raise ConversionError(f"unknown projector type {projector!r}; only {PROJECTOR_TYPE} can be converted")
    feature = str(config.get("mm_vision_select_feature") or "patch")
    if feature not in _SELECT_STRATEGY:
        raise ConversionError(f"unknown mm_vision_select_feature {feature!r} (patch or cls_patch)")
    if config.get("mm_use_im_start_end"):
        raise ConversionError("mm_use_im_start_end is set; the Llava layout has no image start/end tokens")
    aspect = str(config.get("image_aspect_ratio") or "square")
    if aspect not in ("pad", "square"):
        raise ConversionError(f"image_aspect_ratio {aspect!r} (any-resolution tiling) cannot be converted to Llava")
    return LlavaMedSource(directory=directory, config=config, files=weight_files(directory))


def _check_target(source: Path, target: Path, *, overwrite: bool) -> None:
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise ConversionError("the target directory must be outside the source checkpoint")
    if target.exists() and not target.is_dir():
        raise ConversionError(f"the target {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConversionError(f"the target {target} exists and is not empty; choose another or pass --overwrite")


def _split_weights(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split original weights into language model, projector and vision tower (new names)."""
    language: dict[str, Any] = {}
    projector: dict[str, Any] = {}
    tower: dict[str, Any] = {}
    unknown: list[str] = []
    for name, tensor in tensors.items():
        if name.endswith(_RECOMPUTED):
            continue
        if name.startswith(_TOWER_PREFIX):
            tower[name.removeprefix(_TOWER_PREFIX)] = tensor
        elif name.startswith(tuple(_PROJECTOR_LAYERS)):
            prefix = next(prefix for prefix in _PROJECTOR_LAYERS if name.startswith(prefix))
            projector[_PROJECTOR_LAYERS[prefix] + name.removeprefix(prefix)] = tensor
        elif name == "lm_head.weight":
            language["lm_head.weight"] = tensor
        elif name.startswith("model.") and not name.startswith(("model.mm_projector.", "model.vision_tower.")):
            language[name.removeprefix("model.")] = tensor
        else:
            unknown.append(name)
    if unknown:
        raise ConversionError(f"{len(unknown)} weights of no known part (e.g. {sorted(unknown)[0]})")
    if not projector:
        raise ConversionError("the checkpoint has no model.mm_projector weights")
    return language, projector, tower


def _vision_tower(source: LlavaMedSource, tower: dict[str, Any], vision_dir: Path | None) -> VisionTower:
    if vision_dir is not None:
        staged = read_vision_tower(vision_dir, expected_name=source.vision_tower_name)
        if not tower:
            return staged
        return VisionTower(
            config=staged.config,
            tensors=tower,
            image_mean=staged.image_mean,
            image_std=staged.image_std,
            source="checkpoint (configuration from " + staged.source + ")",
        )
    if tower:
        return VisionTower(config=infer_clip_vision_config(tower), tensors=tower)
    raise ConversionError(
        f"the checkpoint does not contain its vision tower; it names {source.vision_tower_name}. "
        "Stage that CLIP model in a local directory and pass it with --vision-tower DIR"
    )


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer_class: Any = AutoTokenizer
    try:
        return tokenizer_class.from_pretrained(
            directory, local_files_only=True, extra_special_tokens={"image_token": IMAGE_TOKEN}
        )
    except Exception as error:  # tokenizer loading raises many types for missing or damaged files
        raise ConversionError(
            f"the tokenizer in {directory} cannot be loaded ({type(error).__name__}: {error}); "
            "copy tokenizer.json (or tokenizer.model with tokenizer_config.json) from the release"
        ) from None


def _grown(matrix: torch.Tensor, rows: int) -> torch.Tensor:
    """The matrix with new rows set to the mean of the existing ones (the image token's row is never used)."""
    import torch

    if rows <= matrix.shape[0]:
        return matrix
    mean = matrix.float().mean(dim=0, keepdim=True).to(matrix.dtype)
    return torch.cat([matrix, mean.expand(rows - matrix.shape[0], -1)], dim=0)


def _text_config(config: dict[str, Any], vocab_size: int, tokenizer: Any) -> Any:
    from transformers import MistralConfig

    known = set(MistralConfig().to_dict()) | {"rope_theta", "rope_scaling"}
    settings = {key: value for key, value in config.items() if key in known and key not in _LLAVA_ONLY_KEYS}
    settings["vocab_size"] = vocab_size
    settings["tie_word_embeddings"] = False
    settings.setdefault("bos_token_id", tokenizer.bos_token_id)
    settings.setdefault("eos_token_id", tokenizer.eos_token_id)
    return MistralConfig(**settings)


def _build_model(
    source: LlavaMedSource, language: dict[str, Any], projector: dict[str, Any], vision: VisionTower, tokenizer: Any
) -> Any:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config_class: Any = LlavaConfig
    embed = language.get("embed_tokens.weight")
    if embed is None or "lm_head.weight" not in language:
        raise ConversionError("the checkpoint lacks model.embed_tokens.weight or lm_head.weight")
    dtype = embed.dtype
    vocab_size = int(embed.shape[0])
    if len(tokenizer) > vocab_size:
        vocab_size = math.ceil(len(tokenizer) / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    strategy = _SELECT_STRATEGY[str(source.config.get("mm_vision_select_feature") or "patch")]
    patches = (int(vision.config.image_size) // int(vision.config.patch_size)) ** 2
    config = config_class(
        vision_config=vision.config,
        text_config=_text_config(source.config, vocab_size, tokenizer),
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=int(source.config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=strategy,
        image_seq_length=patches + (1 if strategy == "full" else 0),
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model_class: Any = LlavaForConditionalGeneration
        model = model_class(config)
    expected = {name for name in model.state_dict() if name.startswith("model.vision_tower.")}
    tower_prefix = "model.vision_tower.vision_model." if any(".vision_model." in name for name in expected) else ""
    state: dict[str, Any] = {
        "lm_head.weight": _grown(language.pop("lm_head.weight"), vocab_size),
        "model.language_model.embed_tokens.weight": _grown(language.pop("embed_tokens.weight"), vocab_size),
    }
    state.update({f"model.language_model.{name}": tensor for name, tensor in language.items()})
    state.update({f"model.multi_modal_projector.{name}": tensor for name, tensor in projector.items()})
    state.update({(tower_prefix or "model.vision_tower.") + name: tensor for name, tensor in vision.tensors.items()})
    state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ConversionError(
            "the weights do not fit the configuration (a vision tower of another size, or a damaged "
            f"checkpoint): {' '.join(line.strip() for line in first[:3])}"
        ) from None
    model.config.dtype = dtype
    return model


def _processor(tokenizer: Any, vision: VisionTower, strategy_full: bool) -> Any:
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    size = int(vision.config.image_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(vision.image_mean),
        image_std=list(vision.image_std),
    )
    processor_class: Any = LlavaProcessor
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=int(vision.config.patch_size),
        vision_feature_select_strategy="full" if strategy_full else "default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=chat_templates.LLAVA_MED,
    )


def _generation_config(source: Path, model: Any, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    config_class: Any = GenerationConfig
    if (source / "generation_config.json").is_file():
        generation = config_class.from_pretrained(source, local_files_only=True)
    else:
        generation = config_class()
    text = model.config.text_config
    generation.bos_token_id = generation.bos_token_id if generation.bos_token_id is not None else text.bos_token_id
    generation.eos_token_id = generation.eos_token_id if generation.eos_token_id is not None else text.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    return generation


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("pacs-vlm", "transformers", "torch", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def convert_llava_med(
    source_dir: Path, target_dir: Path, *, vision_tower_dir: Path | None = None, overwrite: bool = False
) -> Path:
    """Convert an original LLaVA-Med v1.5 checkpoint to transformers' Llava layout.

    Returns ``target_dir``, ready for :class:`~models.transformers_backend.TransformersBackend`.

    Parameters
    ----------
    source_dir : Path
        The original ``llava_mistral`` checkpoint.
    target_dir : Path
        Where to write the converted checkpoint (must not exist or be empty, unless ``overwrite``).
    vision_tower_dir : Path, optional
        A local copy of the CLIP model the checkpoint names (``mm_vision_tower``); required when the
        checkpoint does not carry the tower's weights.

    Raises
    ------
    ConversionError
        When the source cannot be converted or the target is in the way; nothing is written then.
    """
    source_dir = source_dir.expanduser()
    target_dir = target_dir.expanduser()
    source = inspect_llava_med(source_dir)
    _check_target(source_dir, target_dir, overwrite=overwrite)
    language, projector, tower = _split_weights(read_tensors(source.files))
    vision = _vision_tower(source, tower, vision_tower_dir.expanduser() if vision_tower_dir else None)
    tokenizer = _load_tokenizer(source_dir)
    model = _build_model(source, language, projector, vision, tokenizer)
    processor = _processor(tokenizer, vision, model.config.vision_feature_select_strategy == "full")
    model.generation_config = _generation_config(source_dir, model, tokenizer)

    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.converting-", dir=target_dir.parent))
    try:
        model.save_pretrained(staging, max_shard_size="4GB")
        processor.save_pretrained(staging)
        note = {
            "converted_from": "llava-med",
            "source": str(source_dir.resolve()),
            "source_model_type": SOURCE_MODEL_TYPE,
            "source_weight_files": [path.name for path in source.files],
            "vision_tower": vision.source,
            "mm_vision_tower": source.vision_tower_name,
            "image_token": IMAGE_TOKEN,
            "image_token_index": model.config.image_token_index,
            "vocab_size": model.config.text_config.vocab_size,
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        (staging / CONVERSION_NOTE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
        if target_dir.exists():
            shutil.rmtree(target_dir) if target_dir.is_dir() else target_dir.unlink()
        staging.rename(target_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target_dir
