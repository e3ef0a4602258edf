"""LongLLaVA on transformers' building blocks: ``JambaModel``, ``CLIPVisionModel`` and a pooling projector.

Architecture (from the LongLLaVA paper and its published training settings): CLIP ViT-L/14-336
gives 24 x 24 patch features from its penultimate layer (CLS token dropped); they are resampled
bilinearly to 12 x 12 (``resamplePooling 2d``), i.e. 144 tokens per image, and projected by
``mlp2x_gelu`` (Linear, GELU, Linear) to the Jamba language model's width.  The projected tokens
replace the image tokens of the prompt.

Weight names follow the original LLaVA-derived layout of the published checkpoints, so they load
as saved: ``model.embed_tokens``, ``model.layers.N.*`` and ``model.final_layernorm`` (transformers'
Jamba names), ``model.vision_tower.vision_tower.vision_model.*`` (the CLIP tower inside LLaVA's
``CLIPVisionTower`` wrapper), ``model.mm_projector.0`` / ``model.mm_projector.2`` and ``lm_head``.
The vision tower and projector names come from the LongLLaVA repository's code
(``llava/model/llava_arch.py``, ``multimodal_encoder/clip_encoder.py``); the published weight
index itself could not be read here, so these names are an assumption documented in the README.
Mixture-of-experts checkpoints (53B-A13B) store one tensor per expert; transformers' own Jamba
weight conversion is registered for :class:`LongLlavaModel` before loading or saving.

Without the ``mamba-ssm`` kernels (CPU, or a GPU without them) Jamba's Mamba layers take the slow,
pure-PyTorch path: correct, but slow for long prompts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional
from transformers import CLIPVisionModel, GenerationMixin, JambaModel
from transformers.conversion_mapping import (
    USER_REGISTERED_MAPPINGS,
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.jamba.modeling_jamba import JambaPreTrainedModel

from models.longllava.configuration import LongLlavaConfig


class LongLlavaVisionTower(nn.Module):
    """CLIP vision model with LongLLaVA's feature selection and 2D pooling.

    Built from the configuration's ``vision_config``, ``vision_feature_layer``, ``pooling`` and ``pooled_grid``.
    """

    def __init__(self, config: LongLlavaConfig) -> None:
        super().__init__()
        vision_config: Any = config.vision_config
        self.vision_tower = CLIPVisionModel(vision_config)
        self.feature_layer = config.vision_feature_layer
        self.pooling = config.pooling
        self.pooled_grid = config.pooled_grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images (images, 3, height, width) into pooled patch features (images, pooled_grid ** 2, width)."""
        outputs = self.vision_tower(pixel_values, output_hidden_states=True)
        patches = outputs.hidden_states[self.feature_layer][:, 1:]
        count, length, width = patches.shape
        tokens = self.pooled_grid**2
        if self.pooling == "1d":
            pooled = functional.interpolate(patches.transpose(1, 2), size=tokens, mode="linear", align_corners=False)
            return pooled.transpose(1, 2)
        side = round(length**0.5)
        if side * side != length:
            raise ValueError(f"2D pooling needs a square patch grid, got {length} patches")
        grid = patches.transpose(1, 2).reshape(count, width, side, side)
        pooled = functional.interpolate(
            grid, size=(self.pooled_grid, self.pooled_grid), mode="bilinear", align_corners=False
        )
        return pooled.reshape(count, width, tokens).transpose(1, 2)


class LongLlavaModel(JambaModel):  # type: ignore[no-untyped-call]
    """The Jamba language model (from the ``text_config``) with LongLLaVA's vision tower and projector."""

    def __init__(self, config: LongLlavaConfig) -> None:
        text_config: Any = config.text_config
        vision_config: Any = config.vision_config
        super().__init__(text_config)
        text_width = text_config.hidden_size
        self.vision_tower = LongLlavaVisionTower(config)
        self.mm_projector = nn.Sequential(
            nn.Linear(vision_config.hidden_size, text_width), nn.GELU(), nn.Linear(text_width, text_width)
        )

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Visual tokens of images (images, 3, height, width) as (images, tokens per image, language model width)."""
        projector: Any = self.mm_projector[0]
        features = self.vision_tower(pixel_values.to(projector.weight.dtype))
        projected: torch.Tensor = self.mm_projector(features)
        return projected

    def embed_prompt(
        self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None, image_token_id: int | None
    ) -> torch.Tensor:
        """Embed a prompt, with each image token replaced by the next visual token.

        ``input_ids`` is (batch, length), its image tokens may lie beyond the vocabulary; ``pixel_values``
        holds the batch's images in prompt order. Returns (batch, length, hidden size).

        Raises
        ------
        ValueError
            When the number of image tokens does not match the images.
        """
        image_mask = input_ids == image_token_id if image_token_id is not None else torch.zeros_like(input_ids).bool()
        padding_id = self.padding_idx if self.padding_idx is not None else 0
        embeddings: torch.Tensor = self.embed_tokens(input_ids.masked_fill(image_mask, padding_id))
        if pixel_values is None:
            if image_mask.any():
                raise ValueError(f"the prompt has {int(image_mask.sum())} image tokens but no images were given")
            return embeddings
        features = self.get_image_features(pixel_values).to(embeddings.dtype)
        if int(image_mask.sum()) != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"the prompt has {int(image_mask.sum())} image tokens for {features.shape[0]} images of "
                f"{features.shape[1]} tokens each"
            )
        return embeddings.masked_scatter(image_mask.unsqueeze(-1), features.reshape(-1, features.shape[-1]))


def register_weight_conversions() -> None:
    """Let transformers' Jamba expert conversion (one tensor per expert <-> fused) apply to :class:`LongLlavaModel`."""
    if LongLlavaModel.__name__ not in USER_REGISTERED_MAPPINGS:
        register_checkpoint_conversion_mapping(
            LongLlavaModel.__name__,
            get_checkpoint_conversion_mapping("jamba") or [],  # type: ignore[no-untyped-call]
            overwrite=True,
        )


class LongLlavaForConditionalGeneration(JambaPreTrainedModel, GenerationMixin):  # type: ignore[no-untyped-call]
    """LongLLaVA: images and text in, text out; ``generate`` comes from transformers' ``GenerationMixin``."""

    config_class = LongLlavaConfig
    config: LongLlavaConfig  # type: ignore[assignment]
    base_model_prefix = "model"
    _no_split_modules = ["JambaAttentionDecoderLayer", "JambaMambaDecoderLayer", "CLIPEncoderLayer"]
    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: LongLlavaConfig) -> None:
        register_weight_conversions()
        super().__init__(config)
        self.model = LongLlavaModel(config)
        text_config: Any = config.text_config
        self.vocab_size = text_config.vocab_size
        self.lm_head = nn.Linear(text_config.hidden_size, self.vocab_size, bias=False)
        self.post_init()  # type: ignore[no-untyped-call]

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding."""
        embedding: nn.Module = self.model.embed_tokens
        return embedding

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Run the model on a prompt (and its images, on the first step): logits, loss (with labels) and the cache.

        Parameters
        ----------
        input_ids : torch.LongTensor, optional
            Token ids with ``image_tokens`` image tokens per image.
        pixel_values : torch.Tensor, optional
            The images, in prompt order.
        attention_mask, position_ids, cache, inputs_embeds, use_cache
            As for transformers' Jamba (``cache`` is the hybrid attention/Mamba cache, formerly
            ``past_key_values``).
        labels : torch.LongTensor, optional
            Targets for a language-modelling loss.
        logits_to_keep : int or torch.Tensor
            Compute logits only for the last positions (0: all).
        **kwargs
            Passed to the Jamba layers.

        Raises
        ------
        ValueError
            When neither ``input_ids`` nor ``inputs_embeds`` is given.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.model.embed_prompt(input_ids, pixel_values, self.config.image_token_id)
        outputs = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)
