r"""LongLLaVA's prompt format (its ``jamba`` conversation template), as a chat template.

A user turn is ``<|startoftext|><|User|>\n`` + the message + ``\n``; the assistant's turn opens
with ``<|startoftext|><|Assistant|>\n`` and an answer ends with ``<|endoftext|>`` (earlier answers in
a multi-turn conversation end with ``\n``).  Each image is an ``<image>`` placeholder on its own
line before the text, as in LLaVA.  The template has no system role: a system message is put in
front of the first user message.  Plain strings, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The image placeholder in prompts (expanded by the processor to one token per visual token).
IMAGE_PLACEHOLDER = "<image>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
USER_TURN = "<|startoftext|><|User|>\n"
ASSISTANT_TURN = "<|startoftext|><|Assistant|>\n"

LONGLLAVA_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set text.value = text.value + '<image>\\n' -%}"
    "{%- elif item['type'] == 'text' -%}{%- set text.value = text.value + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = text.value -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = text + '\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<|startoftext|><|User|>\\n' + ns.system + text + '\\n' }}{%- set ns.system = '' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|startoftext|><|Assistant|>\\n' + text }}"
    "{%- if loop.last -%}{{ '<|endoftext|>' }}{%- else -%}{{ '\\n' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|startoftext|><|Assistant|>\\n' }}{%- endif -%}"
)


def has_vision_tower(config: Mapping[str, Any]) -> bool:
    """Whether a Jamba-based ``config.json`` is LongLLaVA's (it has a vision tower) rather than a text-only Jamba.

    True for this package's nested form (``vision_config``) and the original flat form (``mm_vision_tower``).
    """
    return bool(config.get("vision_config") or config.get("mm_vision_tower"))
