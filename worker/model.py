"""The model of this worker process: built lazily on the first task, then kept.

Loading a 7B model takes tens of seconds, longer than Celery allows in
``worker_process_init``, so the first task of each process loads it and every
later task reuses it.
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


def model_backend(settings: Settings) -> tuple[VisionLanguageBackend, float]:
    """Return this process's backend for the configured model, loading it the first time.

    Parameters
    ----------
    settings : Settings
        The settings (``model``, ``model_device``, ``max_new_tokens``).

    Returns
    -------
    tuple of (VisionLanguageBackend, float)
        The backend and the seconds spent loading it in this call (0.0 when it was loaded before).

    Raises
    ------
    ModelNotConfigured
        ``PACSVLM_MODEL`` is not set.
    ModelNotStaged
        The folder is missing or incomplete.
    """
    if settings.model is None:
        raise ModelNotConfigured(
            "no model configured: set PACSVLM_MODEL to a folder holding a staged checkpoint "
            "(for example a local copy of FreedomIntelligence/HuatuoGPT-Vision-7B-hf or google/medgemma-4b-it)"
        )
    key = (settings.model.resolve(), settings.model_device, settings.max_new_tokens)
    with _lock:
        backend = _loaded.get(key)
        if backend is not None:
            return backend, 0.0
        from models.transformers_backend import TransformersBackend

        started = time.perf_counter()
        loaded = TransformersBackend(
            settings.model, device=settings.model_device, max_new_tokens=settings.max_new_tokens
        )
        loaded.load()
        _loaded[key] = loaded
        return loaded, time.perf_counter() - started
