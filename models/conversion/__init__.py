"""One-off conversions of original model releases into the layout the loader reads.

- ``original_weights``: reading an original release's weight shards (safetensors or PyTorch ``.bin``)
  and a separately staged CLIP vision tower.
- ``llava_med``: LLaVA-Med v1.5 (``llava_mistral``, LLaVA code layout) to transformers' Llava
  layout (``LlavaForConditionalGeneration``, ``LlavaProcessor``, ``<image>`` token, chat template).

Importing these imports neither torch nor transformers; a conversion imports them when it runs.
"""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message says why and what to do."""
