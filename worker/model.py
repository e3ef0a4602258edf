"""The models of this worker process: each built lazily on its first task, then kept.

Loading a 7B model takes tens of seconds, longer than Celery allows in
``worker_process_init``, so the first task of each process that needs a model
loads it and every later task reuses it.  A job names its model
(``PACSVLM_MODELS`` key) or runs on the default one (``PACSVLM_MODEL``); a
process that serves second opinions keeps every model it was asked for, so
size the device for all of them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from integration.config import Settings
from models.backend import ModelNotStaged, VisionLanguageBackend

_lock = threading.Lock()
_loaded: dict[tuple[Path, str, int], VisionLanguageBackend] = {}


class ModelNotConfigured(ModelNotStaged):
    """No model folder is configured."""


class UnknownModel(LookupError):
    """A job names a model that this worker's ``PACSVLM_MODELS`` does not configure (a permanent failure)."""


def model_folder(settings: Settings, model_name: str | None = None) -> Path:
    """Return the staged folder of the default model or of a named one.

    Parameters
    ----------
    settings : Settings
        The settings (``model`` and ``models``).
    model_name : str, optional
        A ``PACSVLM_MODELS`` key; None for the default model.

    Returns
    -------
    Path
        The model's folder.

    Raises
    ------
    ModelNotConfigured
        The default model is asked for and ``PACSVLM_MODEL`` is not set.
    UnknownModel
        ``model_name`` is not configured.
    """
    if model_name is not None:
        folder = settings.models.get(model_name)
        if folder is None:
            configured = ", ".join(sorted(settings.models)) or "none"
            raise UnknownModel(f"unknown model {model_name!r}: this worker's PACSVLM_MODELS configures {configured}")
        return folder
    if settings.model is None:
        raise ModelNotConfigured(
            "no model configured: set PACSVLM_MODEL to a folder holding a staged checkpoint "
            "(for example a local copy of FreedomIntelligence/HuatuoGPT-Vision-7B-hf or google/medgemma-4b-it)"
        )
    return settings.model


def model_backend(settings: Settings, model_name: str | None = None) -> tuple[VisionLanguageBackend, float]:
    """Return this process's backend for a model, loading it the first time.

    Parameters
    ----------
    settings : Settings
        The settings (``model``, ``models``, ``model_device``, ``max_new_tokens``).
    model_name : str, optional
        A ``PACSVLM_MODELS`` key; None (the default) for ``PACSVLM_MODEL``.

    Returns
    -------
    tuple of (VisionLanguageBackend, float)
        The backend and the seconds spent loading it in this call (0.0 when it was loaded before).

    Raises
    ------
    ModelNotConfigured
        ``PACSVLM_MODEL`` is not set and the default model is asked for.
    UnknownModel
        ``model_name`` is not configured.
    ModelNotStaged
        The folder is missing or incomplete.
    """
    folder = model_folder(settings, model_name)
    key = (folder.resolve(), settings.model_device, settings.max_new_tokens)
    with _lock:
        backend = _loaded.get(key)
        if backend is not None:
            return backend, 0.0
        from models.transformers_backend import TransformersBackend

        started = time.perf_counter()
        loaded = TransformersBackend(folder, device=settings.model_device, max_new_tokens=settings.max_new_tokens)
        loaded.load()
        _loaded[key] = loaded
        return loaded, time.perf_counter() - started
