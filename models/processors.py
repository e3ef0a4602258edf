"""Building a checkpoint's processor (tokenizer, image processor, chat template) from its directory.

The normal route is transformers' ``AutoProcessor``; without torchvision it picks the PIL image
processors by itself.  One family needs more: in transformers 5.x Qwen2.5-VL's ``AutoProcessor``
also builds a video processor, and video processors require torchvision, so it cannot be built
where torchvision is missing (CPU-only hosts, this project's test machine).  For that case
:class:`QwenVLImageOnlyProcessor` does for images what ``Qwen2_5_VLProcessor`` does: the PIL
``Qwen2VLImageProcessorPil`` splits each image into patches, every ``<|image_pad|>`` in the prompt
is expanded to one token per ``merge_size ** 2`` patches of its image, and ``mm_token_type_ids``
marks those tokens so that the model computes its 3-D (M-RoPE) positions.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.backend import ModelNotStaged
from models.chat_templates import TemplateProcessor, load_chat_template
from models.registry import ModelFamily

if TYPE_CHECKING:
    from PIL import Image

#: Families whose ``AutoProcessor`` builds a torchvision-backed video processor.
VIDEO_PROCESSOR_FAMILIES = frozenset({"qwen2.5-vl"})
QWEN_IMAGE_TOKEN = "<|image_pad|>"


class ProcessorRoute(StrEnum):
    """How a checkpoint's processor is built."""

    AUTO = "auto"
    QWEN_IMAGE_ONLY = "qwen-image-only"


def torchvision_available() -> bool:
    """Whether torchvision can be imported (checked without importing it)."""
    return importlib.util.find_spec("torchvision") is not None


def processor_route(family: ModelFamily, *, has_torchvision: bool) -> ProcessorRoute:
    """Return ``AUTO`` unless the family's ``AutoProcessor`` needs torchvision and it is missing."""
    if family.name in VIDEO_PROCESSOR_FAMILIES and not has_torchvision:
        return ProcessorRoute.QWEN_IMAGE_ONLY
    return ProcessorRoute.AUTO


class TemplateSource(StrEnum):
    """Where the chat template in use comes from."""

    PROCESSOR = "processor"
    TOKENIZER = "tokenizer"
    FAMILY = "family"


#: A one-image conversation: a usable template renders the processor's image placeholder for it.
_PROBE = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},)


def _template_text(template: object) -> str | None:
    if isinstance(template, Mapping):  # several named templates: the default one
        template = template.get("default")
    return template if isinstance(template, str) and template else None


def _places_images(processor: Any) -> bool:
    try:
        rendered = processor.apply_chat_template(list(_PROBE), add_generation_prompt=True, tokenize=False)
    except Exception:  # a template for text only fails on a list of content items
        return False
    image_token = getattr(processor, "image_token", None)
    return isinstance(rendered, str) and (not image_token or image_token in rendered)


def ensure_image_chat_template(processor: Any, family: ModelFamily, model_dir: Path) -> TemplateSource:
    """Give a processor a chat template that places images, preferring the checkpoint's own.

    Tries the processor's template, then the tokenizer's (checkpoints converted with transformers
    4.x keep it in ``tokenizer_config.json``), then the family's documented layout, and keeps the
    first that renders the image placeholder for a one-image conversation. Sets the processor's
    ``chat_template`` and returns where the chosen one comes from; ``model_dir`` is for the error message.

    Raises
    ------
    ModelNotStaged
        When no template places images.
    """
    candidates = (
        (TemplateSource.PROCESSOR, _template_text(getattr(processor, "chat_template", None))),
        (TemplateSource.TOKENIZER, _template_text(getattr(processor.tokenizer, "chat_template", None))),
        (TemplateSource.FAMILY, family.fallback_chat_template),
    )
    for source, template in candidates:
        if template is not None:
            processor.chat_template = template
            if _places_images(processor):
                return source
    raise ModelNotStaged(
        "no chat template that places images (chat_template.jinja, chat_template.json or tokenizer_config.json); "
        "download the repository's current revision",
        directory=model_dir,
    )


class QwenVLImageOnlyProcessor(TemplateProcessor):
    """Qwen2.5-VL's processor for images and text, without a video processor (no torchvision needed).

    Parameters
    ----------
    image_processor : object
        A Qwen2-VL image processor (``Qwen2VLImageProcessorPil``); gives ``pixel_values`` and ``image_grid_thw``.
    tokenizer : object
        The checkpoint's tokenizer.
    chat_template : str or None
        The checkpoint's chat template (None: the tokenizer's, if any).

    Raises
    ------
    ValueError
        When the tokenizer has no image token (not a Qwen2.5-VL tokenizer).
    """

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.image_token: str = getattr(tokenizer, "image_token", None) or QWEN_IMAGE_TOKEN
        token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {self.image_token} token; this is not a Qwen2.5-VL tokenizer")
        self.image_token_id: int = int(token_id)
        self.merge_size: int = int(image_processor.merge_size)

    @classmethod
    def from_directory(cls, model_dir: Path) -> QwenVLImageOnlyProcessor:
        """Build the processor (PIL image processor, tokenizer, chat template) from a staged checkpoint, offline."""
        from transformers import AutoImageProcessor, AutoTokenizer

        image_processor_class: Any = AutoImageProcessor
        image_processor = image_processor_class.from_pretrained(model_dir, local_files_only=True, backend="pil")
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        return cls(image_processor, tokenizer, load_chat_template(model_dir))

    def __call__(
        self,
        *,
        text: Sequence[str],
        images: Sequence[Sequence[Image.Image]] | None = None,
        padding: bool = True,
        return_tensors: str = "pt",
        add_special_tokens: bool = False,
    ) -> Any:
        """Tokenise prompts and process their images into model inputs.

        Parameters
        ----------
        text : sequence of str
            Rendered prompts, each with one placeholder per image.
        images : sequence of sequence of PIL.Image.Image, optional
            Each prompt's images, in placeholder order.
        padding : bool
            Pad to the longest prompt (on the tokenizer's ``padding_side``).
        add_special_tokens : bool
            Whether the tokenizer adds its special tokens (Qwen's add none).

        Returns
        -------
        transformers.BatchFeature
            ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and, with images,
            ``pixel_values`` and ``image_grid_thw``.

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
            if prompt.count(self.image_token) != len(prompt_images):
                raise ValueError(
                    f"prompt {index} has {prompt.count(self.image_token)} {self.image_token} placeholders "
                    f"for {len(prompt_images)} images"
                )

        flat = [image for prompt_images in per_prompt for image in prompt_images]
        image_inputs: dict[str, Any] = {}
        if flat:
            image_inputs = dict(self.image_processor(images=flat, return_tensors=return_tensors))
            counts = iter(
                [int(grid.prod()) // self.merge_size**2 for grid in image_inputs["image_grid_thw"]],
            )
            prompts = [self._expand(prompt, counts) for prompt in prompts]

        text_inputs = self.tokenizer(
            prompts, padding=padding, return_tensors=return_tensors, add_special_tokens=add_special_tokens
        )
        mm_token_type_ids = (text_inputs["input_ids"] == self.image_token_id).long()
        return BatchFeature(data={**text_inputs, "mm_token_type_ids": mm_token_type_ids, **image_inputs})

    def _expand(self, prompt: str, counts: Any) -> str:
        pieces = prompt.split(self.image_token)
        expanded = [pieces[0]]
        for piece in pieces[1:]:
            expanded.append(self.image_token * next(counts))
            expanded.append(piece)
        return "".join(expanded)


def load_processor(model_dir: Path, family: ModelFamily, *, has_torchvision: bool | None = None) -> Any:
    """Load a staged checkpoint's processor, offline.

    ``has_torchvision`` is detected when not given (tests pass it to pick a route). Returns a transformers
    processor or a :class:`QwenVLImageOnlyProcessor`; either renders chat templates
    (``apply_chat_template``), turns prompts and images into model inputs (``__call__``) and has a
    ``tokenizer``.
    """
    available = torchvision_available() if has_torchvision is None else has_torchvision
    if processor_route(family, has_torchvision=available) is ProcessorRoute.QWEN_IMAGE_ONLY:
        return QwenVLImageOnlyProcessor.from_directory(model_dir)
    from transformers import AutoProcessor

    processor_class: Any = AutoProcessor
    return processor_class.from_pretrained(model_dir, local_files_only=True)
