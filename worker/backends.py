"""The models of this worker process: each built lazily on its first task, then kept.

Loading a 7B model takes tens of seconds, longer than Celery allows in
``worker_process_init``, so the first task of each process that needs a model
loads it and every later task reuses it.  A job names its model
(``PACSVLM_MODELS`` key) or runs on the default one (``PACSVLM_MODEL``); a
process that serves second opinions keeps every model it was asked for, so
size the device for all of them.  With ``PACSVLM_MODEL_SERVER_URL`` set, the
default model is an OpenAI-compatible server instead (nothing is loaded here);
named models still run in this process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from integration.config import Settings
from integration.live_config import live_settings
from models.backend import ModelNotStaged, VisionLanguageBackend

_lock = threading.Lock()
_loaded: dict[tuple[str, str, int], VisionLanguageBackend] = {}


class ModelNotConfigured(ModelNotStaged):
    """No model folder is configured."""


class UnknownModel(LookupError):
    """A job names a model that this worker's ``PACSVLM_MODELS`` does not configure (a permanent failure)."""


def model_folder(settings: Settings, model_name: str | None = None) -> Path:
    """Return the staged folder of the default model or of a named one (a ``PACSVLM_MODELS`` key).

    Raises
    ------
    ModelNotConfigured
        The default model is asked for and ``PACSVLM_MODEL`` is not set.
    UnknownModel
        ``model_name`` is not configured.
    """
    if model_name is not None:
        models = live_settings(settings).models  # the model list in force (pacs-vlm config, the admin pages)
        folder = models.get(model_name)
        if folder is None:
            configured = ", ".join(sorted(models)) or "none"
            raise UnknownModel(f"unknown model {model_name!r}: the model list configures {configured}")
        return folder
    if settings.model is None:
        raise ModelNotConfigured(
            "no model configured: set PACSVLM_MODEL to a folder holding a staged checkpoint "
            "(for example a local copy of FreedomIntelligence/HuatuoGPT-Vision-7B-hf or google/medgemma-4b-it)"
        )
    return settings.model


def model_backend(settings: Settings, model_name: str | None = None) -> tuple[VisionLanguageBackend, float]:
    """Return this process's backend for a model, loading it the first time.

    ``model_name`` is a ``PACSVLM_MODELS`` key; None (the default) for ``PACSVLM_MODEL``. Returns the
    backend and the seconds spent loading it in this call (0.0 when it was loaded before).

    Raises
    ------
    ModelNotConfigured
        ``PACSVLM_MODEL`` is not set and the default model is asked for.
    UnknownModel
        ``model_name`` is not configured.
    ModelNotStaged
        The folder is missing or incomplete.
    """
    if model_name is None and settings.model_server_url is not None:
        return served_backend(settings), 0.0
    folder = model_folder(settings, model_name)
    key = (str(folder.resolve()), settings.model_device, settings.max_new_tokens)
    with _lock:
        backend = _loaded.get(key)
        if backend is not None:
            return backend, 0.0
        from models.transformers_backend import TransformersBackend

        started = time.perf_counter()
        loaded = TransformersBackend(folder, device=settings.model_device, max_new_tokens=settings.max_new_tokens)
        loaded.load()
        _loaded[key] = batched(settings, loaded)
        return _loaded[key], time.perf_counter() - started


def batched(settings: Settings, backend: VisionLanguageBackend) -> VisionLanguageBackend:
    """Wrap an in-process backend in a :class:`~models.batching.BatchingBackend` when ``PACSVLM_BATCH_SIZE`` is above 1.

    The batcher's single model thread becomes the backend's only caller.
    """
    if settings.batch_size <= 1:
        return backend
    from models.batching import BatchingBackend

    # Celery's threads pool enforces no time limits: a caller gives up after the soft limit instead.
    return BatchingBackend(
        backend,
        batch_size=settings.batch_size,
        wait_seconds=settings.batch_wait_ms / 1000,
        timeout=settings.analysis_soft_time_limit,
    )


def close_batchers() -> None:
    """Drain and stop this process's model batchers (at worker shutdown; queued requests still run)."""
    from models.batching import BatchingBackend

    with _lock:
        batchers = [backend for backend in _loaded.values() if isinstance(backend, BatchingBackend)]
    for batcher in batchers:
        batcher.close()


def served_backend_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of :class:`~models.openai_backend.OpenAICompatibleBackend` from ``model_server_*``."""
    assert settings.model_server_url is not None
    api_key = settings.model_server_api_key
    return {
        "base_url": settings.model_server_url,
        "model": settings.model_server_model,
        "api_key": api_key.get_secret_value() if api_key is not None else None,
        "family": settings.model_server_family,
        "concurrency": settings.model_server_concurrency,
        "timeout": settings.model_server_timeout,
        "max_new_tokens": settings.max_new_tokens,
        "outside_trust_boundary": not settings.model_server_trusted,
        "schema_mode": settings.model_server_schema,
    }


def served_backend(settings: Settings) -> VisionLanguageBackend:
    """Return this process's backend for the model server, one per server setting and process (connections open lazily).

    Raises
    ------
    ValueError
        When a model server setting is invalid.
    """
    from models.openai_backend import OpenAICompatibleBackend

    options = served_backend_options(settings)
    key = ("server", repr(sorted((name, hash(value)) for name, value in options.items())), settings.max_new_tokens)
    with _lock:
        backend = _loaded.get(key)
        if backend is None:
            backend = OpenAICompatibleBackend(**options)
            _loaded[key] = backend
        return backend
