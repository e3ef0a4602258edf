"""The FastAPI application of ``pacs-vlm api``, built from settings (nothing happens at import time).

Operations: ``GET /health`` and ``GET /metrics``.  Review: ``POST /api/login``, ``POST /api/logout`` and the
worklist under ``/api/studies``.  The review pages, DICOMweb (STOW-RS, QIDO-RS, WADO-RS; a viewer's token from
``POST /api/viewer-token``; CORS for configured viewer origins, outermost) and FHIR orders
(``/fhir/ServiceRequest``) add their routers here.  In front of
every route: the answer headers and the operations gate (:mod:`integration.web.security.guards`) and the body
limit (:mod:`integration.web.security.limits`); HTTP refusals worth tracing are audited
(:mod:`integration.web.security.refusals`) and a database outage answers 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import anyio
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from integration.config import Settings
from integration.web.api.alerts import alerts_router
from integration.web.api.audit import audit_router
from integration.web.api.cases import cases_router
from integration.web.api.claims import claims_router
from integration.web.api.manual_reports import manual_reports_router
from integration.web.api.opinions import opinions_router
from integration.web.api.orders import orders_router
from integration.web.api.review import review_router
from integration.web.api.studies import studies_router
from integration.web.api.upload import upload_router
from integration.web.api.viewer_token import viewer_token_router
from integration.web.dicomweb.cors import DicomwebCors
from integration.web.dicomweb.read import dicomweb_read_router
from integration.web.dicomweb.stow import stow_router
from integration.web.ops.health import health_router
from integration.web.ops.metrics import metrics_router
from integration.web.pages.pages import pages_router
from integration.web.security.auth import auth_router
from integration.web.security.guards import AnswerHeaders, OperationsGate, database_unavailable
from integration.web.security.limits import BodyLimit, UploadGate
from integration.web.security.refusals import RefusalAudit, audit_http_refusal, record_refusal
from integration.web.security.sso import sso_router


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await anyio.to_thread.run_sync(app.state.refusals.close)

    app = FastAPI(
        lifespan=lifespan,
        title="pacs-vlm",
        summary="Review API beside the PACS: draft reports for radiologist review, operations endpoints.",
        version=_version(),
        # The interactive docs pages load scripts from a CDN, which hospital networks rarely reach.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.refusals = RefusalAudit(settings.database_url)
    app.state.upload_gate = UploadGate.from_settings(settings)
    app.include_router(health_router(settings))
    app.include_router(metrics_router(settings))
    app.include_router(auth_router())
    app.include_router(sso_router())
    app.include_router(studies_router())
    app.include_router(claims_router())
    app.include_router(review_router())
    app.include_router(opinions_router())
    app.include_router(manual_reports_router())
    app.include_router(alerts_router())
    app.include_router(audit_router())
    app.include_router(stow_router())
    app.include_router(dicomweb_read_router())
    app.include_router(viewer_token_router())
    app.include_router(upload_router())
    app.include_router(cases_router())
    app.include_router(orders_router())
    app.include_router(pages_router())
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _refused)
    for outage in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(outage, database_unavailable)
    app.add_middleware(BodyLimit, settings=settings, on_refusal=_body_refused)
    app.add_middleware(OperationsGate, settings=settings)
    app.add_middleware(AnswerHeaders)
    app.add_middleware(DicomwebCors, origins=settings.dicomweb_cors_origins)
    return app


async def _refused(request: Request, exc: Exception) -> Response:
    """Answer an HTTP error as FastAPI does, after auditing it when it is a refusal worth tracing."""
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, HTTPException):
        audit_http_refusal(request, exc)
    return await http_exception_handler(request, exc)


def _body_refused(scope: Scope, limit: int) -> None:
    """Audit a body refused by :class:`BodyLimit` (aggregated)."""
    request = Request(scope)
    record_refusal(
        request, "request.too_large", reason=f"body above {limit} bytes", detail={"path": scope["path"][:200]}
    )


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """Answer 422 naming the fields and what is wrong, never echoing what was sent (it may be a password)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", ""))} for error in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})
