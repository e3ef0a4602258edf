"""Tiny randomly initialised checkpoints of every supported architecture, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from models.transformers_backend import TransformersBackend


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build (once) and return the directory of a smoke model; tests must not modify it."""
    from models.smoke import build_smoke_model

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_smoke_model(name, tmp_path_factory.mktemp("smoke") / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def smoke_backend(smoke_dir: Callable[[str], Path]) -> Callable[[str], TransformersBackend]:
    """A CPU backend per smoke model, shared by the session (loaded on first use)."""
    backends: dict[str, TransformersBackend] = {}

    def get(name: str) -> TransformersBackend:
        if name not in backends:
            backends[name] = TransformersBackend(smoke_dir(name), device="cpu")
        return backends[name]

    return get
