"""A backend that sends requests to an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``).

Each :class:`~models.backend.GenerationRequest` becomes one ``POST {base}/v1/chat/completions``: a
system message, then one user message whose content is the request's preamble (a text part, when it has
one), the images, in order, as ``data:image/png;base64,...`` URLs, and the prompt (a text part).  The
server applies its own chat template (messages are sent, never a rendered prompt).  Decoding is greedy
(``temperature: 0``).  The body and the answer's reading are :mod:`models.openai_wire`.

Schema-bound output: a request with a ``response_schema`` is sent with ``response_format``
(``json_schema``, strict) unless ``schema_mode`` is ``off``; the result's ``decoding`` says which path ran:

- ``response_format`` (:attr:`~models.backend.Decoding.SERVER_SCHEMA`): the server took the schema and the
  answer follows it (a JSON object with the schema's required keys, or one cut at ``max_tokens``);
- ``free-fallback``: the server refused the schema, or took it and answered free text anyway
  (``transformers serve`` ignores ``response_format`` with a warning); the lenient parser reads the answer;
- ``free``: no schema asked for, or ``schema_mode`` ``off``.

In ``auto`` mode a 400 or 422 answer to a request carrying ``response_format`` is tried once more without
it (the refusal's message is not relied on: servers word it differently, or withhold it).  When that try is
answered, the server is remembered as one without schema support (per backend, for the life of the
process; logged once) and later requests go without ``response_format``; when it is refused too, the first
refusal was about something else and that second refusal is raised, nothing remembered.  An answer that
ignores the schema is remembered the same way.  In ``json_schema`` mode the schema is always sent and a
refusal is a :class:`ModelServerRefused` (the job fails).

Every request also asks for ``logprobs``; the answer's token log-probabilities become the result's
``token_logprobs`` (empty when the server sends none).  A 400/422 whose message names ``logprobs`` is
answered by sending the request again without it, and remembered.

The requests of a batch run concurrently, at most ``concurrency`` at a time per backend.  Connection
errors, 408, 429 and 5xx answers are retried with exponential backoff (``Retry-After`` honoured up to
the backoff cap); when the attempts run out a :class:`ModelServerUnavailable` is raised, which the
analysis task retries later.  Any other 4xx is a :class:`ModelServerRefused`, a permanent failure
carrying the server's message (untrusted text: cleaned, truncated, and withheld when it quotes the
request).  A request that gets no answer within ``timeout`` seconds raises
:class:`ModelServerTimeout` at once (a generation that ran out of time would run out again).

Images are re-encoded from their pixels alone: the PNG carries no text chunks, EXIF or colour
profile.  What else may leave (the prompt text) is the caller's decision; see ``worker/outbound.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx

from models import openai_wire as wire
from models.backend import Decoding, GenerationRequest, GenerationResult, ModelIdentity
from models.draft import clean
from models.openai_wire import (
    MAX_SERVER_MESSAGE_CHARS,
    ModelServerRefused,
    ModelServerTimeout,
    ModelServerUnavailable,
    png_data_url,
)
from models.registry import FAMILIES, ModelFamily

__all__ = [
    "GENERIC_FAMILY",
    "SCHEMA_MODES",
    "ModelServerRefused",
    "ModelServerTimeout",
    "ModelServerUnavailable",
    "OpenAICompatibleBackend",
    "family_for_served_name",
    "png_data_url",
    "server_base",
    "server_display",
]

logger = logging.getLogger(__name__)

#: Family recorded for a served model whose name names no registered family.
GENERIC_FAMILY = "openai-compatible"
#: How a request's schema is sent (``PACSVLM_MODEL_SERVER_SCHEMA``): try and fall back, always, never.
SCHEMA_MODES = ("auto", "json_schema", "off")
#: Lower-case fragments of a served model's name that tell its family (first match wins).
NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("qwen2.5vl", "qwen2.5-vl"),
    ("qwen2.5-vl", "qwen2.5-vl"),
    ("qwen2_5_vl", "qwen2.5-vl"),
    ("lingshu", "qwen2.5-vl"),
    ("huatuogpt-vision", "huatuogpt-vision"),
    ("medgemma", "medgemma"),
    ("llava", "llava"),
)


def family_for_served_name(name: str) -> str:
    """Guess a served model's family from its name (``google/medgemma-4b-it`` -> ``medgemma``).

    ``name`` is the model's name at the server (often its Hugging Face repository id). Returns a key of
    :data:`models.registry.FAMILIES`, or :data:`GENERIC_FAMILY` when the name tells none.
    """
    lowered = name.lower()
    for family in FAMILIES.values():
        if lowered in (example.lower() for example in family.examples):
            return family.name
    for hint, family_name in NAME_HINTS:
        if hint in lowered:
            return family_name
    return GENERIC_FAMILY


def server_base(url: str) -> str:
    """Normalise a server URL to the base that ``/v1/...`` paths are appended to: no trailing slash or ``/v1``.

    Raises
    ------
    ValueError
        When the URL is not http(s) or has no host.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"model server URL must be http(s)://host[:port], not {url!r}")
    base = url.strip().rstrip("/")
    return base.removesuffix("/v1").rstrip("/")


def server_display(url: str) -> str:
    """A server URL as it may be shown or logged: ``scheme://host:port/path``, never a user or password."""
    parts = urlsplit(server_base(url))
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class OpenAICompatibleBackend:
    """A vision-language model served over the OpenAI chat completions API.

    Parameters
    ----------
    base_url : str
        The server, ``http(s)://host:port`` (a trailing ``/v1`` is accepted).
    model : str or None
        The model's name at the server; None asks the server's ``/v1/models`` (which must list one).
    api_key : str or None
        Sent as ``Authorization: Bearer <key>`` when given.
    family : str or None
        Family recorded with drafts and used for image limits; None guesses from the model name.
    concurrency : int
        Requests in flight at once, per backend.
    timeout : float
        Seconds to wait for one answer.
    max_new_tokens : int
        Upper bound on generated tokens per request (``max_tokens``).
    attempts : int
        Tries per request on connection errors, 408, 429 and 5xx.
    backoff : float
        Seconds before the second try; doubled per try up to ``backoff_max``.
    backoff_max : float
        Longest wait between tries.
    outside_trust_boundary : bool
        Whether the server is outside the hospital's trust boundary (the caller de-identifies what it sends).
    schema_mode : {"auto", "json_schema", "off"}
        How a request's ``response_schema`` is sent: ``auto`` tries ``response_format`` and falls back to free
        decoding when the server refuses it; ``json_schema`` always sends it (a refusal is permanent); ``off``
        never does.

    Raises
    ------
    ValueError
        When a setting is invalid.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        family: str | None = None,
        concurrency: int = 4,
        timeout: float = 300.0,
        max_new_tokens: int = 512,
        attempts: int = 4,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        outside_trust_boundary: bool = True,
        schema_mode: str = "auto",
    ) -> None:
        if concurrency < 1 or attempts < 1 or max_new_tokens < 1:
            raise ValueError("concurrency, attempts and max_new_tokens must be at least 1")
        if timeout <= 0 or backoff < 0 or backoff_max < 0:
            raise ValueError("timeout must be positive and backoff times not negative")
        if family is not None and family != GENERIC_FAMILY and family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}: one of {', '.join([*FAMILIES, GENERIC_FAMILY])}")
        if schema_mode not in SCHEMA_MODES:
            raise ValueError(f"unknown schema mode {schema_mode!r}: one of {', '.join(SCHEMA_MODES)}")
        self.base_url = server_base(base_url)
        self.location = urlsplit(self.base_url).netloc.rpartition("@")[2]  # never a user:password
        self._model = model
        self._family_setting = family
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_new_tokens = max_new_tokens
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.outside_trust_boundary = outside_trust_boundary
        self.schema_mode = schema_mode
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
        )
        self._slots = threading.BoundedSemaphore(concurrency)
        self._identity: ModelIdentity | None = None
        self._identity_lock = threading.Lock()
        # What this server was found not to support (remembered for the life of the backend).
        self._unsupported: set[str] = set()
        self._unsupported_lock = threading.Lock()

    @property
    def identity(self) -> ModelIdentity:
        """Served model name, ``server:<host:port>`` (or the revision the server reports) and family."""
        with self._identity_lock:
            if self._identity is None:
                self._identity = self._find_identity()
            return self._identity

    @property
    def family(self) -> ModelFamily | None:
        """The registered family, or None for :data:`GENERIC_FAMILY`."""
        return FAMILIES.get(self.identity.family)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _find_identity(self) -> ModelIdentity:
        revision = f"server:{self.location}"
        name = self._model
        if name is None:
            listed = self._models()
            if len(listed) != 1:
                names = clean(
                    ", ".join(str(entry.get("id")) for entry in listed[:5]), MAX_SERVER_MESSAGE_CHARS, one_line=True
                )
                raise ModelServerRefused(
                    f"model server {self.location} serves {len(listed)} models ({names or 'none'}): "
                    "set PACSVLM_MODEL_SERVER_MODEL to the one to use"
                )
            entry = listed[0]
            name = str(entry.get("id") or "")
            if isinstance(entry.get("revision"), str) and entry["revision"]:
                revision = str(entry["revision"])
        if not name:
            raise ModelServerRefused(f"model server {self.location} lists a model without a name")
        family = self._family_setting or family_for_served_name(name)
        return ModelIdentity(model_id=name[:255], revision=revision[:128], family=family)

    def _models(self) -> list[dict[str, Any]]:
        response = self._send("GET", "/v1/models", None, ())
        data = wire.json_of(self._success(response, ()), self.location).get("data")
        if not isinstance(data, list):
            raise ModelServerUnavailable(f"model server {self.location}: /v1/models answered without a model list")
        return [entry for entry in data if isinstance(entry, dict)]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch of requests, at most ``concurrency`` at a time; one result per request, in order.

        Each result's ``decoding`` says whether the server was bound to the request's schema, and its
        ``token_logprobs`` hold what the server sent of the tokens' log-probabilities (see the module's notes).

        Raises
        ------
        ValueError
            When a request has more images than the model's family allows.
        ModelServerUnavailable
            The server could not be reached, kept failing, or timed out (transient).
        ModelServerRefused
            The server refused a request (permanent), with or without ``response_format`` (``auto``), or
            refused ``response_format`` (``json_schema``).
        """
        if not requests:
            return []
        identity = self.identity
        family = FAMILIES.get(identity.family)
        for request in requests:
            if family is not None and len(request.images) > family.image_limit:
                raise ValueError(
                    f"request {request.request_id} has {len(request.images)} images; "
                    f"{family.name} takes at most {family.image_limit}"
                )
        started = time.perf_counter()
        workers = min(self.concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model-server") as pool:
            answers = list(pool.map(self._complete, requests))
        seconds = time.perf_counter() - started
        return [
            GenerationResult(
                request.request_id,
                answer.text,
                answer.tokens_in,
                answer.tokens_out,
                seconds,
                token_logprobs=answer.token_logprobs,
                decoding=decoding,
            )
            for request, (answer, decoding) in zip(requests, answers, strict=True)
        ]

    @property
    def schema_supported(self) -> bool:
        """False once this server refused or ignored ``response_format`` (``auto`` mode: sent no more)."""
        with self._unsupported_lock:
            return "response_format" not in self._unsupported

    @property
    def logprobs_supported(self) -> bool:
        """False once this server refused ``logprobs`` (asked for no more)."""
        with self._unsupported_lock:
            return "logprobs" not in self._unsupported

    def chat_body(self, request: GenerationRequest, *, schema: bool = True, logprobs: bool = True) -> dict[str, Any]:
        """The chat completion JSON body for one request (what goes over the wire).

        ``schema`` and ``logprobs`` False leave ``response_format`` and ``logprobs`` out; either is left out
        anyway where the schema mode or what the server was found to support says so.
        """
        identity = self.identity
        send_schema = schema and self._sends_schema(request)
        return wire.chat_body(
            request,
            model=identity.model_id,
            family=FAMILIES.get(identity.family),
            max_tokens=min(request.max_new_tokens, self.max_new_tokens),
            schema=request.response_schema if send_schema else None,
            logprobs=logprobs and self.logprobs_supported,
        )

    def _sends_schema(self, request: GenerationRequest) -> bool:
        if request.response_schema is None or self.schema_mode == "off":
            return False
        return self.schema_mode == "json_schema" or self.schema_supported

    def _complete(self, request: GenerationRequest) -> tuple[wire.Answer, Decoding]:
        quotable = [request.prompt, request.system_prompt or "", request.preamble or ""]
        schema = self._sends_schema(request)
        schema_refusal = 0  # the status of a refusal answered by sending again without the schema
        while True:
            body = self.chat_body(request, schema=schema)
            with self._slots:
                response = self._send("POST", "/v1/chat/completions", body, quotable)
            if response.is_success:
                break
            if "logprobs" in body and wire.refuses_field(response, "logprobs"):
                self._remember_unsupported("logprobs", response.status_code)
            elif "response_format" in body and self.schema_mode == "auto" and not schema_refusal:
                schema, schema_refusal = False, response.status_code  # refused for the schema, or for another reason?
            else:
                raise self._refusal(response, quotable, schema_sent="response_format" in body)
        if schema_refusal:  # answered without it: the schema was what the server refused
            self._remember_unsupported("response_format", schema_refusal)
        answer = wire.read_answer(wire.json_of(response, self.location), self.location)
        if request.response_schema is None or self.schema_mode == "off":
            return answer, Decoding.FREE
        if "response_format" not in body:
            return answer, Decoding.FREE_FALLBACK
        if wire.follows_schema(answer, request.response_schema):
            return answer, Decoding.SERVER_SCHEMA
        if self.schema_mode == "auto":
            self._remember_unsupported("response_format", response.status_code)
        else:  # json_schema: sent every time, as configured; the answer is still read leniently
            logger.warning("model server %s answered a request with response_format in free text", self.location)
        return answer, Decoding.FREE_FALLBACK

    def _remember_unsupported(self, field: str, status: int) -> None:
        with self._unsupported_lock:
            if field in self._unsupported:
                return
            self._unsupported.add(field)
        how = f"refused it: HTTP {status}" if status >= 400 else "took it and ignored it"
        logger.warning(
            "model server %s does not support %s (it %s): requests go without it from now on",
            self.location,
            field,
            how,
        )

    def _refusal(self, response: httpx.Response, quotable: Sequence[str], *, schema_sent: bool) -> ModelServerRefused:
        said = wire.server_message(response, quotable)
        hint = " (sent with response_format: PACSVLM_MODEL_SERVER_SCHEMA=json_schema)" if schema_sent else ""
        return ModelServerRefused(
            f"model server {self.location} refused the request: HTTP {response.status_code}: {said}{hint}"
        )

    def _success(self, response: httpx.Response, quotable: Sequence[str]) -> httpx.Response:
        if not response.is_success:
            raise self._refusal(response, quotable, schema_sent=False)
        return response

    def _send(self, method: str, path: str, body: dict[str, Any] | None, quotable: Sequence[str]) -> httpx.Response:
        """One call with retries; returns a 2xx answer or a refusal (4xx but 408, 409, 425, 429), or raises."""
        url = self.base_url + path
        problem = ""
        for attempt in range(1, self.attempts + 1):
            wait = min(self.backoff * 2 ** (attempt - 1), self.backoff_max)
            try:
                response = self._client.request(method, url, json=body)
            except httpx.TimeoutException as exc:
                if not isinstance(exc, httpx.ConnectTimeout):
                    raise ModelServerTimeout(
                        f"model server {self.location} gave no answer within {self.timeout:.0f} s "
                        "(PACSVLM_MODEL_SERVER_TIMEOUT)"
                    ) from None
                problem = "connection timed out"
            except httpx.TransportError as exc:
                problem = f"cannot connect ({type(exc).__name__})"
            else:
                if response.is_success or response.status_code not in wire.RETRY_STATUS:
                    return response
                problem = f"HTTP {response.status_code}: {wire.server_message(response, quotable)}"
                wait = max(wait, min(wire.retry_after(response), self.backoff_max))
            if attempt < self.attempts:
                logger.warning(
                    "model server %s, attempt %d of %d: %s; next try in %.1f s",
                    self.location,
                    attempt,
                    self.attempts,
                    problem,
                    wait,
                )
                time.sleep(wait)
        raise ModelServerUnavailable(
            f"model server {self.location} unavailable after {self.attempts} attempts: {problem}"
        )
