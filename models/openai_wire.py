"""The OpenAI chat completions wire format: the body sent, the answer read, and the server's errors.

A request's body (:func:`chat_body`) holds the messages (a system message where the family has a system
role, then one user message: the preamble, the images as ``data:image/png;base64,...`` URLs, the prompt),
greedy decoding (``temperature: 0``), ``max_tokens``, and, where the backend asks for them:

- ``response_format: {"type": "json_schema", "json_schema": {"name": "draft_report", "schema": ...,
  "strict": true}}``, the request's schema (vLLM and SGLang bind decoding to it);
- ``logprobs: true``, whose answer ``choices[0].logprobs.content[]`` entries ``{token, logprob}`` become
  :class:`~models.backend.TokenLogprob` values (:func:`read_answer`).

Everything a server answers is untrusted: its text is only returned, never logged; its error messages are
cleaned, truncated, and withheld when they quote the request (:func:`server_message`).
"""

from __future__ import annotations

import base64
import difflib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from models.backend import GenerationRequest, ModelNotStaged, TokenLogprob
from models.chat_templates import user_turn
from models.draft import clean
from models.registry import ModelFamily

#: The name the schema goes by in ``response_format`` (servers use it in logs and caches).
SCHEMA_NAME = "draft_report"
#: Longest piece of a server's error message kept in an error (untrusted text).
MAX_SERVER_MESSAGE_CHARS = 300
#: A server message sharing this many consecutive characters with the request is withheld.
QUOTE_CHARS = 24
#: Status codes that are worth another attempt.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: Status codes with which a server refuses a field it does not support (``response_format``, ``logprobs``).
FIELD_REFUSAL_STATUS = frozenset({400, 422})
#: Most token log-probabilities read from one answer (more than any ``max_tokens`` this service asks for).
MAX_TOKEN_LOGPROBS = 16_384


class ModelServerUnavailable(RuntimeError):
    """The model server could not be reached or kept failing (transient: the analysis task retries)."""


class ModelServerTimeout(ModelServerUnavailable):
    """The model server gave no answer within the request timeout (transient)."""


class ModelServerRefused(ModelNotStaged):
    """The model server refused a request (4xx): a permanent failure, with the server's message.

    ``problem`` is what the server said, already cleaned and truncated; ``directory`` and ``repository``
    are unused, kept so the error pickles like :class:`~models.backend.ModelNotStaged`.
    """

    def __init__(self, problem: str, *, directory: Any = None, repository: str | None = None) -> None:
        self.problem = problem
        self.directory = None
        self.repository = None
        RuntimeError.__init__(self, problem)


@dataclass(frozen=True)
class Answer:
    """What one chat completion answered (the text is untrusted).

    Attributes
    ----------
    text : str
        The message's content, white space stripped at its ends.
    tokens_in, tokens_out : int
        ``usage.prompt_tokens`` and ``usage.completion_tokens`` (0 when not said).
    finish_reason : str
        ``choices[0].finish_reason`` (``stop``, ``length``, ...; '' when not said).
    token_logprobs : tuple of TokenLogprob
        ``choices[0].logprobs.content``, in order; empty when the server sent none or any entry was unusable.
    """

    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str
    token_logprobs: tuple[TokenLogprob, ...]


def png_data_url(image: Image.Image) -> str:
    """Encode an image's pixels alone as a ``data:image/png;base64,...`` URL (no text chunks, EXIF or colour profile).

    Modes other than L, RGB and RGBA are converted to RGB.
    """
    mode = image.mode if image.mode in ("L", "RGB", "RGBA") else "RGB"
    source = image if image.mode == mode else image.convert(mode)
    bare = Image.frombytes(mode, source.size, source.tobytes())  # pixels only: .info is left behind
    buffer = io.BytesIO()
    bare.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The ``response_format`` that binds a server's decoding to ``schema`` (OpenAI's ``json_schema`` type)."""
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": dict(schema), "strict": True}}


def chat_body(
    request: GenerationRequest,
    *,
    model: str,
    family: ModelFamily | None,
    max_tokens: int,
    schema: Mapping[str, Any] | None = None,
    logprobs: bool = False,
) -> dict[str, Any]:
    """The chat completion JSON body for one request (what goes over the wire).

    ``family`` None (a generic served model) is taken to have a system role. ``schema`` adds a
    ``response_format``; ``logprobs`` asks for the generated tokens' log-probabilities.
    """
    prompt = request.prompt
    preamble = request.preamble or ""
    system = (request.system_prompt or "").strip()
    messages: list[dict[str, Any]] = []
    if system and (family is None or family.supports_system_prompt):
        messages.append({"role": "system", "content": system})
    elif system and preamble:
        preamble = f"{system}\n\n{preamble}"  # the family's template has no system role
    elif system:
        prompt = f"{system}\n\n{prompt}"  # the family's template has no system role
    images = [{"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in request.images]
    # The server's template places the parts; one that renders images first still reads the preamble first.
    content = user_turn(prompt, preamble, images, interleaved=True)
    messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": False,
    }
    if schema is not None:
        body["response_format"] = response_format(schema)
    if logprobs:
        body["logprobs"] = True
    return body


def read_answer(document: Mapping[str, Any], location: str) -> Answer:
    """Read a chat completion's answer: text, token counts, finish reason, token log-probabilities.

    Raises
    ------
    ModelServerUnavailable
        When the answer has no choices.
    """
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ModelServerUnavailable(f"model server {location} answered without choices")
    choice = choices[0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if isinstance(text, list):  # some servers answer with content parts
        text = "".join(str(part.get("text", "")) for part in text if isinstance(part, dict))
    usage = document.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    reason = choice.get("finish_reason")
    return Answer(
        text=str(text or "").strip(),
        tokens_in=_count(usage.get("prompt_tokens")),
        tokens_out=_count(usage.get("completion_tokens")),
        finish_reason=reason[:32] if isinstance(reason, str) else "",
        token_logprobs=read_logprobs(choice.get("logprobs")),
    )


def read_logprobs(logprobs: Any) -> tuple[TokenLogprob, ...]:
    """The ``{token, logprob}`` entries of a choice's ``logprobs.content``, all or none.

    An entry without a text token or with a log-probability that is not a finite number <= 0 makes the whole
    list unusable (empty): leaving one token out would shift every later token against the answer's text,
    which the per-finding confidence locates them by.
    """
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or len(content) > MAX_TOKEN_LOGPROBS:
        return ()
    tokens: list[TokenLogprob] = []
    for entry in content:
        token = entry.get("token") if isinstance(entry, dict) else None
        value = entry.get("logprob") if isinstance(entry, dict) else None
        if not isinstance(token, str) or isinstance(value, bool) or not isinstance(value, int | float):
            return ()
        try:
            tokens.append(TokenLogprob(token, float(value)))
        except ValueError:
            return ()
    return tuple(tokens)


def follows_schema(answer: Answer, schema: Mapping[str, Any]) -> bool:
    """Whether an answer looks bound to ``schema``: a JSON object with its required keys, or one cut at ``max_tokens``.

    A server that accepts ``response_format`` but ignores it (``transformers serve`` lists it among the
    fields it ignores, with a warning) answers free text; this tells such an answer apart.  A free answer
    that happens to be such an object cannot be told apart.
    """
    if answer.finish_reason == "length":  # cut short: bound output still opens an object
        return answer.text.startswith("{")
    try:
        document = json.loads(answer.text)
    except ValueError:
        return False
    required = schema.get("required")
    keys = [key for key in required if isinstance(key, str)] if isinstance(required, list) else []
    return isinstance(document, dict) and all(key in document for key in keys)


def json_of(response: httpx.Response, location: str) -> dict[str, Any]:
    """A response's JSON object.

    Raises
    ------
    ModelServerUnavailable
        When the body is not a JSON object.
    """
    try:
        document = response.json()
    except ValueError:
        raise ModelServerUnavailable(f"model server {location} answered with something other than JSON") from None
    if not isinstance(document, dict):
        raise ModelServerUnavailable(f"model server {location} answered with JSON that is not an object")
    return document


def retry_after(response: httpx.Response) -> float:
    """Seconds a ``Retry-After`` header asks for (0 when absent or a date)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


def raw_message(response: httpx.Response) -> str:
    """The error message of a server's answer, as sent: for classifying it only, never to show or log."""
    try:
        document = response.json()
    except ValueError:
        document = response.text
    if isinstance(document, dict):
        error = document.get("error", document.get("detail", document.get("message", document)))
        if isinstance(error, dict):
            error = error.get("message", error)
        document = error
    return str(document)


def refuses_field(response: httpx.Response, word: str) -> bool:
    """Whether a 400/422 answer names ``word`` (``logprobs``, ...) in its message: the server refuses that field."""
    if response.status_code not in FIELD_REFUSAL_STATUS:
        return False
    return word.lower() in raw_message(response).lower()


def server_message(response: httpx.Response, quotable: Sequence[str]) -> str:
    """The server's error message, cleaned and truncated; withheld when it quotes what was sent."""
    said = raw_message(response)
    for sent in quotable:
        if len(sent) >= QUOTE_CHARS:
            match = difflib.SequenceMatcher(None, said, sent, autojunk=False).find_longest_match()
            if match.size >= QUOTE_CHARS:
                return "(message withheld: it quotes the request)"
    return clean(said, MAX_SERVER_MESSAGE_CHARS, one_line=True) or response.reason_phrase or "no message"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
