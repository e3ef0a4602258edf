"""The in-process backend: a staged checkpoint run with transformers, batched and greedy.

Constructing a :class:`TransformersBackend` only checks the directory (small files, milliseconds)
and raises :class:`~models.backend.ModelNotStaged` at once when something is missing.  The model
is loaded on the first :meth:`TransformersBackend.generate` (or an explicit
:meth:`TransformersBackend.load`), once per backend: a Celery worker keeps one backend per
process and never loads in ``worker_process_init``.  Nothing touches the network: every
``from_pretrained`` gets ``local_files_only=True`` and remote code is never trusted.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.backend import Decoding, GenerationRequest, GenerationResult, ModelIdentity
from models.chat_templates import interleaves_images, user_turn
from models.checkpoint import StagedCheckpoint, checkpoint_identity, inspect_checkpoint
from models.images import prepare_images, square_padding_fill
from models.longllava.prompt import has_vision_tower
from models.processors import TemplateSource, ensure_image_chat_template, load_processor
from models.registry import ModelFamily, UnsupportedModel
from models.token_logprobs import answer_logprobs, raw_logprobs

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class _LoadedModel:
    model: Any
    processor: Any
    device: str
    dtype: torch.dtype
    stop_token_ids: frozenset[int]
    pad_token_id: int | None
    square_fill: tuple[int, int, int] | None
    control_tokens: tuple[str, ...]
    interleaved: bool = True


def resolve_device(device: str) -> str:
    """Turn a device setting into ``cpu`` or ``cuda:N``.

    ``auto`` is the first GPU when there is one, else the CPU; also ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    RuntimeError
        When a GPU is asked for and none (or not that one) is visible.
    """
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but torch sees no CUDA device")
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"device {device!r} was asked for, but torch sees {torch.cuda.device_count()} CUDA devices")
    return f"cuda:{index}"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """Turn a dtype setting (one of :data:`DTYPES`) into a torch dtype: ``auto`` is bf16 on a GPU, fp32 on the CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    resolved = getattr(torch, dtype)
    assert isinstance(resolved, torch.dtype)
    return resolved


def _token_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(item) for item in value}


class TransformersBackend:
    """A staged vision-language checkpoint, run in this process with transformers.

    Parameters
    ----------
    model_dir : Path
        The staged model directory (checked at once; loaded lazily).
    device : str
        ``auto`` (``cuda:0`` when there is a GPU, else ``cpu``), ``cpu``, ``cuda`` or ``cuda:N``.
    max_new_tokens : int
        Upper bound on generated tokens per request.
    dtype : str
        ``auto`` (bf16 on a GPU, fp32 on the CPU), ``bfloat16``, ``float16`` or ``float32``.

    Raises
    ------
    ModelNotStaged
        When the directory is missing or incomplete.
    models.registry.UnsupportedModel
        When the checkpoint is of no supported family.
    ValueError
        When ``device``, ``dtype`` or ``max_new_tokens`` is invalid.
    """

    def __init__(
        self, model_dir: Path, *, device: str = "auto", max_new_tokens: int = 512, dtype: str = "auto"
    ) -> None:
        if not DEVICE_PATTERN.match(device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self._checkpoint: StagedCheckpoint = inspect_checkpoint(Path(model_dir))
        if self.family.name == "longllava" and not has_vision_tower(self._checkpoint.config):
            raise UnsupportedModel(
                f"{self._checkpoint.directory} is a text-only Jamba model (no vision tower in config.json); "
                "stage a LongLLaVA checkpoint such as FreedomIntelligence/LongLLaVA-9B"
            )
        self._device_setting = device
        self._dtype_setting = dtype
        self.max_new_tokens = max_new_tokens
        self._identity: ModelIdentity | None = None
        self._loaded: _LoadedModel | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    @property
    def family(self) -> ModelFamily:
        """The checkpoint's family."""
        return self._checkpoint.family

    @property
    def model_dir(self) -> Path:
        """The staged model directory (resolved)."""
        return self._checkpoint.directory

    @property
    def identity(self) -> ModelIdentity:
        """Model id, revision (or weights fingerprint) and family; computed once, without loading."""
        if self._identity is None:
            self._identity = checkpoint_identity(self._checkpoint)
        return self._identity

    @property
    def is_loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._loaded is not None

    @property
    def device(self) -> str | None:
        """The device the model runs on, once loaded."""
        return self._loaded.device if self._loaded is not None else None

    @property
    def dtype(self) -> str | None:
        """The weights' dtype (``bfloat16``, ``float32`` ...), once loaded."""
        return str(self._loaded.dtype).removeprefix("torch.") if self._loaded is not None else None

    def load(self) -> None:
        """Load the processor and the weights, once (later calls return at once)."""
        with self._load_lock:
            if self._loaded is None:
                self._loaded = self._load()

    def _load(self) -> _LoadedModel:
        from transformers import AutoModelForImageTextToText

        started = time.perf_counter()
        device = resolve_device(self._device_setting)
        dtype = resolve_dtype(self._dtype_setting, device)
        directory = self._checkpoint.directory
        longllava = self.family.name == "longllava"  # own architecture code, not AutoModel (no remote code)
        if longllava:
            from models.longllava.processing import LongLlavaProcessor

            processor = LongLlavaProcessor.from_directory(directory)
        else:
            processor = load_processor(directory, self.family)
        template_source = ensure_image_chat_template(processor, self.family, directory)
        if template_source is TemplateSource.FAMILY:
            logger.warning(
                "%s has no chat template that places images; using the %s family's documented prompt layout",
                directory,
                self.family.name,
            )
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked out
        options: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
        direct = importlib.util.find_spec("accelerate") is not None
        if direct:
            options["device_map"] = {"": device}
        model_class: Any = AutoModelForImageTextToText
        if longllava:
            from models.longllava.modeling import LongLlavaForConditionalGeneration

            model_class = LongLlavaForConditionalGeneration
        model = model_class.from_pretrained(directory, **options)
        if longllava:
            model.config.image_token_id = processor.image_token_id
        if not direct:
            model = model.to(device)
        model.eval()

        stop_token_ids = _token_ids(model.generation_config.eos_token_id) | _token_ids(tokenizer.eos_token_id)
        pad_token_id = tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = model.generation_config.pad_token_id
        if pad_token_id is None:
            pad_token_id = min(stop_token_ids, default=None)
        control_tokens = _control_tokens(processor)
        logger.info(
            "loaded %s (%s) on %s as %s in %.1f s",
            directory,
            self.family.name,
            device,
            str(dtype).removeprefix("torch."),
            time.perf_counter() - started,
        )
        return _LoadedModel(
            model=model,
            processor=processor,
            device=device,
            dtype=dtype,
            stop_token_ids=frozenset(stop_token_ids),
            pad_token_id=pad_token_id,
            square_fill=square_padding_fill(getattr(processor, "image_processor", None)),
            control_tokens=control_tokens,
            interleaved=interleaves_images(processor),
        )

    def _conversation(self, request: GenerationRequest, loaded: _LoadedModel) -> list[dict[str, Any]]:
        control_tokens = loaded.control_tokens
        prompt = _without_control_tokens(request.prompt, control_tokens)
        preamble = _without_control_tokens(request.preamble or "", control_tokens)
        system = _without_control_tokens(request.system_prompt or "", control_tokens).strip()
        messages: list[dict[str, Any]] = []
        if system and self.family.supports_system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        elif system and preamble:
            preamble = f"{system}\n\n{preamble}"  # no system role: the system prompt comes first all the same
        elif system:
            prompt = f"{system}\n\n{prompt}"
        images: list[dict[str, Any]] = [{"type": "image"} for _ in request.images]
        content = user_turn(prompt, preamble, images, interleaved=loaded.interleaved)
        messages.append({"role": "user", "content": content})
        return messages

    def render_prompt(self, request: GenerationRequest) -> str:
        """The prompt exactly as the model reads it (the chat template applied), before image placeholders are expanded.

        Loads the model if needed.
        """
        self.load()
        loaded = self._loaded
        assert loaded is not None
        return self._render(loaded, request)

    def _render(self, loaded: _LoadedModel, request: GenerationRequest) -> str:
        conversation = self._conversation(request, loaded)
        return str(loaded.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch of requests in one ``generate`` call (greedy, left-padded); one result per request, in order.

        Each request has its own images and token limit.  A request with a ``response_schema`` is decoded under
        that schema's grammar (:mod:`models.constrained`, per row: the others stay free) and says
        ``Decoding.GRAMMAR``.  Every result carries its tokens' log-probabilities, read from the raw logits
        (before the grammar's mask: the model's own), with texts that join to the answer
        (:mod:`models.token_logprobs`); the stop token has none.

        Raises
        ------
        ValueError
            When a request has more images than the family allows.
        """
        if not requests:
            return []
        for request in requests:
            if len(request.images) > self.family.image_limit:
                raise ValueError(
                    f"request {request.request_id} has {len(request.images)} images; "
                    f"{self.family.name} takes at most {self.family.image_limit}"
                )
        self.load()
        loaded = self._loaded
        assert loaded is not None
        with self._generate_lock:
            return self._generate(loaded, list(requests))

    def _generate(self, loaded: _LoadedModel, requests: list[GenerationRequest]) -> list[GenerationResult]:
        import torch

        started = time.perf_counter()
        processor = loaded.processor
        tokenizer = processor.tokenizer
        prompts = [self._render(loaded, request) for request in requests]
        images = [
            prepare_images(request.images, square_fill=loaded.square_fill, max_pixels=self.family.max_image_pixels)
            for request in requests
        ]
        bos = tokenizer.bos_token
        template_adds_bos = bool(bos) and all(prompt.startswith(bos) for prompt in prompts)
        inputs = processor(
            text=prompts,
            images=images if any(images) else None,
            padding=True,
            return_tensors="pt",
            add_special_tokens=not template_adds_bos,
        )
        inputs = inputs.to(loaded.device)
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                inputs[name] = value.to(loaded.dtype)

        limits = [min(request.max_new_tokens, self.max_new_tokens) for request in requests]
        grammar = _schema_processor(loaded, requests)
        with torch.inference_mode():
            output = loaded.model.generate(
                **inputs,
                max_new_tokens=max(limits),
                do_sample=False,
                pad_token_id=loaded.pad_token_id,
                logits_processor=grammar,
                output_logits=True,
                return_dict_in_generate=True,
            )
        prompt_length = inputs["input_ids"].shape[1]
        tokens_in = inputs["attention_mask"].sum(dim=1).tolist()
        chosen = output.sequences[:, prompt_length:]
        logprobs = raw_logprobs(output.logits, chosen)
        generated = chosen.tolist()
        seconds = time.perf_counter() - started

        broken = grammar[0].broken_rows if grammar is not None else set()  # never expected: a refused token
        if broken:
            logger.warning(
                "the grammar refused a generated token in rows %s; they are recorded as free", sorted(broken)
            )
        results = []
        rows = zip(requests, limits, generated, tokens_in, logprobs, strict=True)
        for index, (request, limit, row, count_in, row_logprobs) in enumerate(rows):
            tokens = _until_stop(row[:limit], loaded.stop_token_ids)
            answer = tokens[:-1] if tokens and tokens[-1] in loaded.stop_token_ids else tokens
            text = tokenizer.decode(answer, skip_special_tokens=True)
            bound = request.response_schema is not None and index not in broken
            results.append(
                GenerationResult(
                    request_id=request.request_id,
                    text=str(text).strip(),
                    tokens_in=int(count_in),
                    tokens_out=len(tokens),
                    seconds=seconds,
                    token_logprobs=answer_logprobs(tokenizer, answer, row_logprobs),
                    decoding=Decoding.GRAMMAR if bound else Decoding.FREE,
                )
            )
        return results


def _schema_processor(loaded: _LoadedModel, requests: Sequence[GenerationRequest]) -> Any:
    """A logits processor list binding each request with a ``response_schema`` to it; None when none has one."""
    if all(request.response_schema is None for request in requests):
        return None
    from transformers import LogitsProcessorList

    from models.constrained import SchemaLogitsProcessor, compile_schema

    tokenizer = loaded.processor.tokenizer
    head = loaded.model.get_output_embeddings()
    weight = getattr(head, "weight", None)  # the logits' width, padding included
    vocab_size = int(weight.shape[0]) if weight is not None else int(loaded.model.config.get_text_config().vocab_size)
    grammars = [
        compile_schema(tokenizer, schema, vocab_size=vocab_size, stop_token_ids=loaded.stop_token_ids)
        if (schema := request.response_schema) is not None
        else None
        for request in requests
    ]
    return LogitsProcessorList([SchemaLogitsProcessor(grammars)])


def _control_tokens(processor: Any) -> tuple[str, ...]:
    """The special tokens of a processor's tokenizer and its image placeholder, longest first."""
    tokenizer = processor.tokenizer
    tokens = {str(token) for token in tokenizer.all_special_tokens}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens |= {str(token.content) for token in added.values() if getattr(token, "special", False)}
    tokens.add(str(getattr(processor, "image_token", "") or ""))
    return tuple(sorted((token for token in tokens if token), key=len, reverse=True))


def _without_control_tokens(text: str, control_tokens: tuple[str, ...]) -> str:
    """Remove special tokens from caller text, so that text cannot fake images, turns or an end of sequence."""
    while True:
        cleaned = text
        for token in control_tokens:
            cleaned = cleaned.replace(token, "")
        if cleaned == text:
            return cleaned
        text = cleaned


def _until_stop(tokens: list[int], stop_token_ids: frozenset[int]) -> list[int]:
    """Cut generated tokens after the first stop token (kept: the model generated it)."""
    for index, token in enumerate(tokens):
        if token in stop_token_ids:
            return tokens[: index + 1]
    return tokens
