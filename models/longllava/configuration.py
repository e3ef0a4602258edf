"""LongLLaVA's configuration: a Jamba language model, a CLIP vision tower and a pooling projector.

The published checkpoints (FreedomIntelligence/LongLLaVA-9B, LongLLaVA-53B-A13B, LongLLaVAMed-9B)
were saved by the original LLaVA-derived code: one flat Jamba ``config.json`` (``model_type``
``llava_jamba``, or ``jamba`` in some copies) with the multimodal settings beside the language
model's (``mm_vision_tower``, ``mm_projector_type`` ``mlp2x_gelu``, ``mm_vision_select_layer`` -2,
``resamplePooling`` ``2d``, ``mm_hidden_size``).  :meth:`LongLlavaConfig.from_dict` reads that flat
form and the nested form this package saves (``text_config``: a ``JambaConfig``;
``vision_config``: a ``CLIPVisionConfig``).  The CLIP tower's own configuration is not in the flat
file (it names a directory, ``clip_vit_large_patch14_336``); CLIP ViT-L/14 at 336 pixels is assumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from transformers import CLIPVisionConfig, JambaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

#: Settings of CLIP ViT-L/14-336, the vision tower every published LongLLaVA checkpoint uses.
CLIP_VIT_L_336: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
#: Visual tokens per image after 2D pooling (a 12 x 12 grid).
POOLED_GRID = 12
#: The flat multimodal keys of the original checkpoints and the fields they become here.
_FLAT_MULTIMODAL_KEYS = {
    "mm_projector_type": "projector_type",
    "resamplePooling": "pooling",
    "mm_vision_select_layer": "vision_feature_layer",
    "image_token_id": "image_token_id",
}
#: Flat keys of the original training code that have no meaning at inference here.
_FLAT_IGNORED_PREFIXES = ("mm_", "tune_mm", "freeze_mm", "unfreeze_mm", "tokenizer_", "image_", "use_mm", "auto_map")
_TOP_LEVEL_KEYS = frozenset({"architectures", "transformers_version", "torch_dtype", "dtype", "pacs_vlm_smoke_test"})


def nest_published_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn an original LongLLaVA ``config.json`` (flat Jamba + ``mm_*`` keys) into this package's form.

    ``text_config`` (the Jamba settings), ``vision_config`` (CLIP ViT-L/14-336), the projector,
    pooling and vision-layer settings, and the top-level keys (``architectures`` ...). A configuration
    that already has ``text_config`` is returned unchanged (copied).
    """
    if "text_config" in config:
        return dict(config)
    nested: dict[str, Any] = {"model_type": LongLlavaConfig.model_type}
    text: dict[str, Any] = {}
    for key, value in config.items():
        if key in _FLAT_MULTIMODAL_KEYS:
            nested[_FLAT_MULTIMODAL_KEYS[key]] = value
        elif key in _TOP_LEVEL_KEYS:
            nested[key] = value
        elif key == "model_type" or key.startswith(_FLAT_IGNORED_PREFIXES):
            continue
        else:
            text[key] = value
    if "n_ctx" in text:  # Jamba v0.1's name for the context length
        text.setdefault("max_position_embeddings", text.pop("n_ctx"))
    text["model_type"] = "jamba"
    nested["text_config"] = text
    nested["vision_config"] = {**CLIP_VIT_L_336, "hidden_size": config.get("mm_hidden_size", 1024)}
    if str(nested.get("pooling", "2d")).lower() not in ("2d", "1d"):
        nested["pooling"] = "2d"
    return nested


class LongLlavaConfig(PreTrainedConfig):  # type: ignore[no-untyped-call]
    """Configuration of :class:`~models.longllava.modeling.LongLlavaForConditionalGeneration`.

    Attributes
    ----------
    text_config : JambaConfig
        The hybrid (Mamba + attention, optionally mixture-of-experts) language model.
    vision_config : CLIPVisionConfig
        The vision tower (CLIP ViT-L/14-336 in the published checkpoints: 24 x 24 patches).
    image_token_id : int or None
        Token id of the image placeholder in the prompt (may lie beyond the vocabulary: those
        positions are replaced by image features and never embedded).
    projector_type : str
        ``mlp2x_gelu``: Linear, GELU, Linear from the vision width to the language model's.
    pooling : str
        ``2d``: bilinear resampling of the patch grid to ``pooled_grid`` x ``pooled_grid``;
        ``1d``: linear resampling of the patch sequence to ``pooled_grid ** 2`` tokens.
    pooled_grid : int
        Side of the pooled grid (12: 144 visual tokens per image).
    vision_feature_layer : int
        Hidden state of the vision tower that is used (-2: the penultimate layer), without its CLS token.
    """

    model_type = "longllava"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=JambaConfig),
        "vision_config": SubConfigSpec(config_class=CLIPVisionConfig, init_kwargs=CLIP_VIT_L_336),
    }

    text_config: dict[str, Any] | PreTrainedConfig | None = None
    vision_config: dict[str, Any] | PreTrainedConfig | None = None
    image_token_id: int | None = None
    projector_type: Literal["mlp2x_gelu"] = "mlp2x_gelu"
    pooling: Literal["2d", "1d"] = "2d"
    pooled_grid: int = POOLED_GRID
    vision_feature_layer: int = -2
    tie_word_embeddings: bool = False

    @property
    def image_tokens(self) -> int:
        """Visual tokens per image after pooling."""
        return self.pooled_grid**2

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Build the configuration from a parsed ``config.json``, flat (published) or nested.

        ``kwargs`` go to ``PreTrainedConfig.from_dict`` (the unused ones are returned too when
        ``return_unused_kwargs``).
        """
        return super().from_dict(nest_published_config(config_dict), **kwargs)
