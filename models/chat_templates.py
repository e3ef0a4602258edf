"""Chat templates of the supported families, as their published checkpoints ship or document them.

Smoke-test models carry these so that prompts are rendered exactly as for the real checkpoints.
The backend uses a checkpoint's own template; only where a family's published checkpoints ship
none that places images (HuatuoGPT-Vision's -hf releases carry Qwen2's text-only template) does it
fall back to the family's documented one, :data:`HUATUOGPT_VISION`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: llava-hf/llava-1.5-*-hf: ``USER: <image>\n... ASSISTANT:``; a system message is rendered without a role.
LLAVA_15 = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: llava-hf/llava-v1.6-mistral-7b-hf: Mistral ``[INST] ... [/INST]`` turns.
LLAVA_NEXT_MISTRAL = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ ' ' + content['text'] + ' ' + eos_token }}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}"
)

#: LLaVA-Med v1.5 (``llava_mistral``, converted by ``pacs-vlm models convert --from llava-med``): its
#: ``mistral_instruct`` conversation, Llama-2 separators with an empty system prompt and no separator before
#: the first turn: ``[INST] <image>\n... [/INST]``, answers `` ... </s>``; the image goes before the text
#: and a system prompt, where given, in front of both inside ``<<SYS>>``.  The tokenizer adds ``<s>``.
LLAVA_MED = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{%- set system_text = items | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') -%}{%- if system_text -%}{{ '[INST] <<SYS>>\n' + system_text + "
    "'\n<</SYS>>\n\n' }}{%- endif -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'system' -%}{{ '[INST] ' }}{%- endif -%}"
    "{%- for item in items | selectattr('type', 'equalto', 'image') -%}{{ '<image>\n' }}{%- endfor -%}"
    "{%- for item in items | selectattr('type', 'equalto', 'text') -%}{{ item['text'] }}{%- endfor -%}"
    "{{ ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- for item in items | selectattr('type', 'equalto', 'text') -%}"
    "{% generation %}{{ ' ' + item['text'] + ' ' + eos_token }}{% endgeneration %}{%- endfor -%}"
    "{%- else -%}{{ raise_exception('LLaVA-Med has no ' + message['role'] + ' role') }}"
    "{%- endif -%}{%- endfor -%}"
)

#: FreedomIntelligence/HuatuoGPT-Vision-*-hf: ``<|user|>\n<image>\n...\n<|assistant|>\n``, no system role.
#: The model card gives this layout (as a vLLM ``--chat-template``); here it also places the images.
HUATUOGPT_VISION = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ '<|user|>\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<|assistant|>\n' }}"
    "{%- else -%}{{ raise_exception('HuatuoGPT-Vision has no ' + message['role'] + ' role') }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{ '<image>\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

#: Qwen2-7B-Instruct's text-only ChatML template, which Qwen2-based tokenizers (HuatuoGPT-Vision-7B-hf's
#: among them) carry in ``tokenizer_config.json``: it cannot render a list of image and text items.
QWEN2_TEXT = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: google/medgemma-*-it (Gemma 3): the system prompt is folded into the first user turn.
GEMMA3 = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

#: Qwen/Qwen2.5-VL-*-Instruct (and Lingshu): ChatML with ``<|vision_start|><|image_pad|><|vision_end|>``.
QWEN2_5_VL = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load_chat_template(model_dir: Path) -> str | None:
    """Read a checkpoint's processor-level chat template.

    The Jinja template from ``chat_template.jinja``, ``chat_template.json`` or ``processor_config.json``
    (in that order); None when there is none (the tokenizer may still carry one).
    """
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json"):
        path = model_dir / name
        if path.is_file():
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str) and template:
                return template
    return None


#: Two texts of a probe conversation: an image between them is rendered between them by an interleaving template.
_BEFORE, _AFTER = "PROBE-PREAMBLE", "PROBE-PROMPT"


def interleaves_images(processor: Any) -> bool:
    """Whether a processor's chat template renders a user's images where they are among its texts.

    Qwen2.5-VL's, Gemma 3's, HuatuoGPT-Vision's and LongLLaVA's do; the LLaVA families' render every
    image first and then the texts joined, so a preamble cannot go before their images.  Found by rendering
    ``[text, image, text]`` and ``[text, text]``: an interleaving template puts something between the texts
    only in the first.  False when the template cannot render either.
    """

    def between(items: list[dict[str, Any]]) -> str | None:
        try:
            rendered = processor.apply_chat_template(
                [{"role": "user", "content": items}], add_generation_prompt=True, tokenize=False
            )
        except Exception:  # a text-only template, or one that refuses the probe
            return None
        start, end = str(rendered).find(_BEFORE), str(rendered).find(_AFTER)
        return str(rendered)[start + len(_BEFORE) : end] if 0 <= start < end else None

    text = [{"type": "text", "text": _BEFORE}, {"type": "text", "text": _AFTER}]
    with_image, without = between([text[0], {"type": "image"}, text[1]]), between(text)
    return with_image is not None and without is not None and with_image != without


def user_turn(
    prompt: str, preamble: str | None, images: list[dict[str, Any]], *, interleaved: bool
) -> list[dict[str, Any]]:
    """Return a user turn's content: the preamble, the images, the prompt (the layout of every backend).

    Parameters
    ----------
    prompt : str
        The text after the images.
    preamble : str or None
        The text before the images (None or '': none); it ends with a line break so that an image
        placeholder starts a line.  Where ``interleaved`` is False (the template renders images first),
        it is put in front of the prompt, separated by an empty line.
    images : list of dict
        The image items, in order (``{"type": "image"}`` or ``{"type": "image_url", ...}``).
    interleaved : bool
        Whether the template renders images where they are among the texts (:func:`interleaves_images`).

    Returns
    -------
    list of dict
        The content items; without a preamble ``[*images, {"type": "text", "text": prompt}]`` as before.
    """
    if preamble and not interleaved:
        prompt = f"{preamble}\n\n{prompt}"
    head = [{"type": "text", "text": f"{preamble}\n"}] if preamble and interleaved else []
    return [*head, *images, {"type": "text", "text": prompt}]


class TemplateProcessor:
    """What the hand-written processors share: a chat template rendered as text, and the tokenizer's decoding.

    Subclasses set ``tokenizer`` and ``chat_template`` (None: the tokenizer's own) and tokenise in ``__call__``
    together with the images.
    """

    tokenizer: Any
    chat_template: str | None

    def apply_chat_template(
        self, conversation: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False, tokenize: bool = False
    ) -> str:
        """Render one conversation with the processor's chat template, one image placeholder per image.

        Parameters
        ----------
        conversation : sequence of Mapping
            Messages with ``role`` and ``content`` (a string, or ``{"type": "image"}`` and
            ``{"type": "text"}`` items).
        tokenize : bool
            Must be False: tokenising happens in ``__call__`` together with the images.

        Raises
        ------
        ValueError
            When ``tokenize`` is True.
        """
        if tokenize:
            raise ValueError("render with tokenize=False and pass the text and images to the processor")
        rendered = self.tokenizer.apply_chat_template(
            list(conversation),
            chat_template=self.chat_template or self.tokenizer.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
        return str(rendered)

    def batch_decode(self, sequences: Any, *, skip_special_tokens: bool = True) -> list[str]:
        """Decode token sequences (one row per sequence) with the tokenizer."""
        return list(self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens))
