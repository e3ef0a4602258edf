"""The FastAPI application of ``pacs-vlm api``, built from settings (nothing happens at import time).

Operations first: ``GET /health`` and ``GET /metrics``.  The review pages, authentication and
STOW-RS intake add their routers here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from integration.config import Settings
from integration.web.health import health_router
from integration.web.metrics import metrics_router


def _version() -> str:
    try:
        return version("pacs-vlm")
    except PackageNotFoundError:
        return "unknown"


def create_app(settings: Settings) -> FastAPI:
    """Build the API application.

    Parameters
    ----------
    settings : Settings
        Validated settings; kept as ``app.state.settings`` for the routers.

    Returns
    -------
    fastapi.FastAPI
        The application, with its own metrics registry.
    """
    app = FastAPI(
        title="pacs-vlm",
        summary="Review API beside the PACS: draft reports for radiologist review, operations endpoints.",
        version=_version(),
        # The interactive docs pages load scripts from a CDN, which hospital networks rarely reach.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.include_router(health_router(settings))
    app.include_router(metrics_router(settings))
    return app
