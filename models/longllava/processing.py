"""LongLLaVA's processor: CLIP image processing and the tokenizer, with ``<image>`` expanded.

The original code splices image features in place of one ``<image>`` marker (token id -200, not
in the vocabulary).  Here the processor expands every ``<image>`` to ``image_tokens`` (144)
copies of an image token, so that the prompt's length is the sequence length the language model
sees and a batch can be padded as usual.  When a published tokenizer has no ``<image>`` token it
is added (its id lies past the language model's vocabulary; the model never embeds it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.chat_templates import TemplateProcessor, load_chat_template
from models.longllava.prompt import IMAGE_PLACEHOLDER, LONGLLAVA_CHAT_TEMPLATE

if TYPE_CHECKING:
    from PIL import Image

#: CLIP ViT-L/14-336's input size, used when a checkpoint ships no ``preprocessor_config.json``.
CLIP_IMAGE_SIZE = 336
DEFAULT_IMAGE_TOKENS = 144


class LongLlavaProcessor(TemplateProcessor):
    """Turns rendered prompts and their images into LongLLaVA's inputs.

    Parameters
    ----------
    image_processor : object
        A CLIP image processor (resize and centre-crop to 336, CLIP normalisation).
    tokenizer : object
        The checkpoint's tokenizer (``<image>`` is added when missing).
    chat_template : str or None
        The prompt template; None: the LongLLaVA format (:mod:`models.longllava.prompt`).
    image_tokens : int
        Visual tokens per image (144).

    Raises
    ------
    ValueError
        When ``image_tokens`` is not positive.
    """

    chat_template: str

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        chat_template: str | None = None,
        image_tokens: int = DEFAULT_IMAGE_TOKENS,
    ) -> None:
        if image_tokens < 1:
            raise ValueError(f"image_tokens must be positive, got {image_tokens}")
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or LONGLLAVA_CHAT_TEMPLATE
        self.image_tokens = image_tokens
        self.image_token = IMAGE_PLACEHOLDER
        if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
            tokenizer.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
        self.image_token_id: int = int(tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER))

    @classmethod
    def from_directory(cls, model_dir: Path) -> LongLlavaProcessor:
        """Build the processor from a staged checkpoint's files, offline.

        The CLIP image processor gets CLIP-336 defaults when the directory has no ``preprocessor_config.json``.
        """
        from transformers import AutoTokenizer, CLIPImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        processor_class: Any = CLIPImageProcessorPil
        if (model_dir / "preprocessor_config.json").is_file():
            image_processor = processor_class.from_pretrained(model_dir, local_files_only=True)
        else:
            image_processor = processor_class(
                size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
            )
        return cls(image_processor, tokenizer, load_chat_template(model_dir), _image_tokens(model_dir))

    def save_pretrained(self, directory: Path) -> None:
        """Write the tokenizer, ``preprocessor_config.json`` and ``chat_template.jinja`` to a checkpoint directory."""
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        (Path(directory) / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")

    def expand_image_tokens(self, prompt: str) -> str:
        """Replace each ``<image>`` by ``image_tokens`` image tokens: the prompt as the language model reads it."""
        return prompt.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * self.image_tokens)

    def __call__(
        self,
        *,
        text: Sequence[str],
        images: Sequence[Sequence[Image.Image]] | None = None,
        padding: bool = True,
        return_tensors: str = "pt",
        add_special_tokens: bool = False,
    ) -> Any:
        """Tokenise prompts and process their images.

        Parameters
        ----------
        text : sequence of str
            Rendered prompts, each with one ``<image>`` per image.
        images : sequence of sequence of PIL.Image.Image, optional
            Each prompt's images, in placeholder order.
        padding : bool
            Pad to the longest prompt (on the tokenizer's ``padding_side``).
        add_special_tokens : bool
            Whether the tokenizer adds its special tokens (the template writes ``<|startoftext|>`` itself).

        Returns
        -------
        transformers.BatchFeature
            ``input_ids``, ``attention_mask`` and, with images, ``pixel_values`` (one row per image).

        Raises
        ------
        ValueError
            When a prompt's placeholders do not match its images.
        """
        from transformers import BatchFeature

        prompts = list(text)
        per_prompt = [list(batch) for batch in images] if images is not None else [[] for _ in prompts]
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} image lists")
        for index, (prompt, prompt_images) in enumerate(zip(prompts, per_prompt, strict=True)):
            if prompt.count(IMAGE_PLACEHOLDER) != len(prompt_images):
                raise ValueError(
                    f"prompt {index} has {prompt.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholders "
                    f"for {len(prompt_images)} images"
                )
        flat = [image for prompt_images in per_prompt for image in prompt_images]
        data: dict[str, Any] = dict(
            self.tokenizer(
                [self.expand_image_tokens(prompt) for prompt in prompts],
                padding=padding,
                return_tensors=return_tensors,
                add_special_tokens=add_special_tokens,
            )
        )
        if flat:
            data["pixel_values"] = self.image_processor(images=flat, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data=data)


def _image_tokens(model_dir: Path) -> int:
    """Visual tokens per image from ``config.json``'s ``pooled_grid`` (144 for the published checkpoints)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_IMAGE_TOKENS
    grid = config.get("pooled_grid") if isinstance(config, dict) else None
    return int(grid) ** 2 if isinstance(grid, int) and grid > 0 else DEFAULT_IMAGE_TOKENS
