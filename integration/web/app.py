"""The FastAPI application of ``pacs-vlm api``, built from settings (nothing happens at import time).

Operations: ``GET /health`` and ``GET /metrics``.  Review: ``POST /api/login``, ``POST /api/logout`` and the
worklist under ``/api/studies``.  The review pages and STOW-RS intake add their routers here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from integration.config import Settings
from integration.web.audit import audit_router
from integration.web.auth import auth_router
from integration.web.health import health_router
from integration.web.metrics import metrics_router
from integration.web.opinions import opinions_router
from integration.web.pages import pages_router
from integration.web.review import review_router
from integration.web.stow import stow_router
from integration.web.studies import studies_router
from integration.web.upload import upload_router


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
    app.include_router(auth_router())
    app.include_router(studies_router())
    app.include_router(review_router())
    app.include_router(opinions_router())
    app.include_router(audit_router())
    app.include_router(stow_router())
    app.include_router(upload_router())
    app.include_router(pages_router())
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(NoSniff)
    return app


class NoSniff:
    """ASGI middleware: every answer says ``X-Content-Type-Options: nosniff`` (JSON and files included).

    A plain ASGI wrapper, so streamed request bodies (STOW-RS) pass through untouched.

    Parameters
    ----------
    app : ASGI application
        The wrapped application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the header to the response start of HTTP requests."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_with_header)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """Answer 422 naming the fields and what is wrong, never echoing what was sent (it may be a password)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", ""))} for error in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})
