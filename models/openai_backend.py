"""A backend that sends requests to an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``).

Each :class:`~models.backend.GenerationRequest` becomes one ``POST {base}/v1/chat/completions``: a
system message, then one user message whose content is the request's preamble (a text part, when it has
one), the images, in order, as ``data:image/png;base64,...`` URLs, and the prompt (a text part).  The
server applies its own chat template (messages are sent, never a rendered prompt).  Decoding is greedy
(``temperature: 0``).

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

import base64
import difflib
import io
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from models.backend import GenerationRequest, GenerationResult, ModelIdentity, ModelNotStaged
from models.chat_templates import user_turn
from models.draft import clean
from models.registry import FAMILIES, ModelFamily

logger = logging.getLogger(__name__)

#: Family recorded for a served model whose name names no registered family.
GENERIC_FAMILY = "openai-compatible"
#: Longest piece of a server's error message kept in an error (untrusted text).
MAX_SERVER_MESSAGE_CHARS = 300
#: A server message sharing this many consecutive characters with the request is withheld.
QUOTE_CHARS = 24
#: Status codes that are worth another attempt.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
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
    ) -> None:
        if concurrency < 1 or attempts < 1 or max_new_tokens < 1:
            raise ValueError("concurrency, attempts and max_new_tokens must be at least 1")
        if timeout <= 0 or backoff < 0 or backoff_max < 0:
            raise ValueError("timeout must be positive and backoff times not negative")
        if family is not None and family != GENERIC_FAMILY and family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}: one of {', '.join([*FAMILIES, GENERIC_FAMILY])}")
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
        data = _json_of(response, self.location).get("data")
        if not isinstance(data, list):
            raise ModelServerUnavailable(f"model server {self.location}: /v1/models answered without a model list")
        return [entry for entry in data if isinstance(entry, dict)]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch of requests, at most ``concurrency`` at a time; one result per request, in order.

        Raises
        ------
        ValueError
            When a request has more images than the model's family allows.
        ModelServerUnavailable
            The server could not be reached, kept failing, or timed out (transient).
        ModelServerRefused
            The server refused a request (permanent).
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
            GenerationResult(request.request_id, text, tokens_in, tokens_out, seconds)
            for request, (text, tokens_in, tokens_out) in zip(requests, answers, strict=True)
        ]

    def chat_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The chat completion JSON body for one request (what goes over the wire)."""
        identity = self.identity
        family = FAMILIES.get(identity.family)
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
        return {
            "model": identity.model_id,
            "messages": messages,
            "temperature": 0,
            "max_tokens": min(request.max_new_tokens, self.max_new_tokens),
            "stream": False,
        }

    def _complete(self, request: GenerationRequest) -> tuple[str, int, int]:
        body = self.chat_body(request)
        quotable = [request.prompt, request.system_prompt or "", request.preamble or ""]
        with self._slots:
            response = self._send("POST", "/v1/chat/completions", body, quotable)
        document = _json_of(response, self.location)
        choices = document.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ModelServerUnavailable(f"model server {self.location} answered without choices")
        message = choices[0].get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if isinstance(text, list):  # some servers answer with content parts
            text = "".join(str(part.get("text", "")) for part in text if isinstance(part, dict))
        usage = document.get("usage") if isinstance(document.get("usage"), dict) else {}
        assert isinstance(usage, dict)
        return str(text or "").strip(), _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))

    def _send(self, method: str, path: str, body: dict[str, Any] | None, quotable: Sequence[str]) -> httpx.Response:
        """One call with retries; returns a 2xx response or raises."""
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
                if response.is_success:
                    return response
                said = _server_message(response, quotable)
                if response.status_code not in RETRY_STATUS:
                    raise ModelServerRefused(
                        f"model server {self.location} refused the request: HTTP {response.status_code}: {said}"
                    )
                problem = f"HTTP {response.status_code}: {said}"
                wait = max(wait, min(_retry_after(response), self.backoff_max))
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


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _json_of(response: httpx.Response, location: str) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        raise ModelServerUnavailable(f"model server {location} answered with something other than JSON") from None
    if not isinstance(document, dict):
        raise ModelServerUnavailable(f"model server {location} answered with JSON that is not an object")
    return document


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


def _server_message(response: httpx.Response, quotable: Sequence[str]) -> str:
    """The server's error message, cleaned and truncated; withheld when it quotes what was sent."""
    try:
        document = response.json()
    except ValueError:
        document = response.text
    if isinstance(document, dict):
        error = document.get("error", document.get("detail", document.get("message", document)))
        if isinstance(error, dict):
            error = error.get("message", error)
        document = error
    said = str(document)
    for sent in quotable:
        if len(sent) >= QUOTE_CHARS:
            match = difflib.SequenceMatcher(None, said, sent, autojunk=False).find_longest_match()
            if match.size >= QUOTE_CHARS:
                return "(message withheld: it quotes the request)"
    return clean(said, MAX_SERVER_MESSAGE_CHARS, one_line=True) or response.reason_phrase or "no message"
