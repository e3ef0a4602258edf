"""What a vision-language backend is: requests, results, identity and the staging error.

Everything here is plain Python (no torch): the worker codes against these types, and a backend
(transformers in-process, an OpenAI-compatible server) implements :class:`VisionLanguageBackend`.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

#: Where a user points the service at a staged model directory.
MODEL_DIR_VARIABLE = "PACSVLM_MODEL"

#: Repository shown in staging instructions when the family of the missing model is unknown.
EXAMPLE_REPOSITORY = "google/medgemma-4b-it"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model, exactly, produced a draft (stored with every report).

    Attributes
    ----------
    model_id : str
        Hugging Face repository id where known (``google/medgemma-4b-it``), else the directory name.
    revision : str
        The Hugging Face commit the weights were downloaded at, where recorded; otherwise a
        fingerprint of the weights, ``sha256:<40 hex digits>`` (see :mod:`models.fingerprint`).
    family : str
        Key of the model's family in :data:`models.registry.FAMILIES`.
    """

    model_id: str
    revision: str
    family: str


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt with its images.

    Attributes
    ----------
    request_id : str
        Caller's id, echoed in the result.
    prompt : str
        The user's instruction; images are placed before it, in order.
    images : tuple of PIL.Image.Image
        Model-ready images (already windowed, converted and sampled by the caller).
    system_prompt : str or None
        System instruction; prepended to the user's text for families without a system role.
    max_new_tokens : int
        Upper bound on generated tokens (the backend's own limit still applies).
    preamble : str or None
        Text of the user's turn placed after the system prompt and before the images (the task, the
        patient, the prior studies: see :func:`models.prompts.render_prompt_parts`), so that the stable
        part of a prompt comes first.  Where a chat template renders every image before any text
        (the LLaVA families), it goes before the prompt instead.  None or '': none (the prompt renders
        exactly as without this field).
    response_schema : Mapping or None
        A JSON schema the answer must follow (:data:`models.draft_schema.DRAFT_SCHEMA`): an in-process
        backend binds decoding to it with a grammar engine, a server backend sends it as
        ``response_format``; the result's ``decoding`` says which path ran.  None: free decoding.
    """

    request_id: str
    prompt: str
    images: tuple[Image.Image, ...]
    system_prompt: str | None = None
    max_new_tokens: int = 512
    preamble: str | None = None
    response_schema: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("request_id must not be empty")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not isinstance(self.images, tuple):
            object.__setattr__(self, "images", tuple(self.images))
        for index, image in enumerate(self.images):
            if not isinstance(image, Image.Image):
                raise TypeError(f"images[{index}] is a {type(image).__name__}, not a PIL image")


class Decoding(enum.StrEnum):
    """How an answer was decoded, recorded with the draft."""

    #: In-process, every token bound to the schema by a grammar engine (xgrammar).
    GRAMMAR = "grammar"
    #: A model server given the schema as ``response_format`` (``json_schema``): vLLM, SGLang.
    SERVER_SCHEMA = "response_format"
    #: Free decoding, read by the lenient parser (no schema asked for).
    FREE = "free"
    #: Free decoding because the server refused ``response_format``; read by the lenient parser.
    FREE_FALLBACK = "free-fallback"


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text and the model's log-probability of it (natural log, <= 0).

    Raises
    ------
    ValueError
        From the constructor, when ``logprob`` is not a finite number <= 0 (a tiny positive rounding error is
        clipped to 0).
    """

    text: str
    logprob: float

    def __post_init__(self) -> None:
        value = float(self.logprob)
        if not math.isfinite(value) or value > 1e-6:
            raise ValueError(f"a token log-probability is finite and at most 0, not {self.logprob!r}")
        object.__setattr__(self, "logprob", min(value, 0.0))


@dataclass(frozen=True)
class GenerationResult:
    """The model's answer to one request (untrusted text), under the request's id.

    Attributes
    ----------
    text : str
        Newly generated text only, special tokens removed.
    tokens_in : int
        Prompt tokens the model read, image tokens included, padding excluded.
    tokens_out : int
        Tokens the model generated for this request (end-of-sequence token included).
    seconds : float
        Wall-clock time of the batch this request ran in.
    token_logprobs : tuple of TokenLogprob
        The generated tokens with the model's log-probability of each, in order, their texts joining to
        ``text`` (up to the white space stripped at its ends); empty when the backend could not say (a
        server without ``logprobs``).  Taken before any grammar mask, so they are the model's own.
    decoding : Decoding
        Which decoding path ran.
    """

    request_id: str
    text: str
    tokens_in: int
    tokens_out: int
    seconds: float
    token_logprobs: tuple[TokenLogprob, ...] = ()
    decoding: Decoding = Decoding.FREE


@runtime_checkable
class VisionLanguageBackend(Protocol):
    """A loaded (or lazily loading) vision-language model."""

    @property
    def identity(self) -> ModelIdentity:
        """Model id, revision and family, recorded with every draft."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch of requests; results come back in request order."""
        ...


def staging_instructions(directory: Path | None, repository: str | None) -> str:
    """Say, in one paragraph with the commands to run, how a user stages model weights for this service.

    ``directory`` is where the model is expected (``<dir>`` when unknown); ``repository`` the Hugging
    Face repository to download (an example when unknown).
    """
    target = str(directory) if directory is not None else "<dir>"
    repo = repository or f"<repo, e.g. {EXAMPLE_REPOSITORY}>"
    return (
        "Weights are never downloaded at run time. To stage them, on a machine with internet access run "
        f"`hf download {repo} --local-dir {target}` (older huggingface_hub: "
        f"`huggingface-cli download {repo} --local-dir {target}`), copy the whole directory (including its "
        f"hidden .cache folder, which records the revision) to this machine, and set {MODEL_DIR_VARIABLE}={target}."
    )


class ModelNotStaged(RuntimeError):
    """The model directory is missing or incomplete; the message says what is missing and how to stage it.

    Parameters
    ----------
    problem : str
        What is missing, e.g. ``no config.json``.
    directory : Path or None
        The directory that was looked at.
    repository : str or None
        Repository to suggest in the staging instructions.
    """

    def __init__(self, problem: str, *, directory: Path | None = None, repository: str | None = None) -> None:
        self.problem = problem
        self.directory = directory
        self.repository = repository
        where = f"{directory}: " if directory is not None else ""
        super().__init__(f"Model not staged: {where}{problem}. {staging_instructions(directory, repository)}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the keyword arguments (errors cross process boundaries in the worker)."""
        rebuild = functools.partial(type(self), directory=self.directory, repository=self.repository)
        return (rebuild, (self.problem,))
