"""What every answer of the API carries, who may read the operations endpoints, and a database outage.

* :class:`AnswerHeaders`: every answer says ``X-Content-Type-Options: nosniff``; JSON and HTML answers,
  which may hold patient data, default to ``Cache-Control: no-store`` so no browser or proxy keeps them.
* :class:`OperationsGate`: ``/metrics`` and ``/openapi.json`` describe the deployment (queues, counts,
  every route), so by default only loopback clients, an administrator's session or the bearer token
  ``PACSVLM_OPERATIONS_TOKEN`` may read them; ``PACSVLM_OPERATIONS_PUBLIC=true`` opens them.  A request
  that came through an untrusted reverse proxy (it carries ``X-Forwarded-For``) is not loopback.
* :func:`database_unavailable`: a database that cannot be reached answers 503 with a message (a page for
  browsers) instead of a bare 500.

Plain ASGI wrappers, so streamed request bodies (STOW-RS) pass through untouched.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

import anyio
from fastapi import HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from integration.config import Settings
from integration.store.tables import UserRole
from integration.web.deps import SESSION_COOKIE, current_user
from integration.web.ops.health import describe_error
from integration.web.pages.templating import error_page

log = logging.getLogger(__name__)

#: Paths only operators may read unless ``operations_public`` is set.
OPERATIONS_PATHS = frozenset({"/metrics", "/openapi.json", "/docs", "/redoc"})
#: Answer types that may hold patient data and must not be cached.
_PRIVATE_TYPES = ("application/json", "application/dicom+json", "text/html", "text/csv")
#: The message of a 503 for a database outage.
DATABASE_UNAVAILABLE = "the database cannot be reached: try again in a minute (the administrators are told)"


class AnswerHeaders:
    """ASGI middleware: ``nosniff`` on every answer; ``Cache-Control: no-store`` by default on JSON and HTML.

    Parameters
    ----------
    app : ASGI application
        The wrapped application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the headers to the response start of HTTP requests."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").split(";", 1)[0].strip().lower() in _PRIVATE_TYPES:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OperationsGate:
    """ASGI middleware: only operators read :data:`OPERATIONS_PATHS` (404 for anyone else).

    Parameters
    ----------
    app : ASGI application
        The wrapped application.
    settings : Settings
        ``operations_public``, ``operations_token`` and ``forwarded_allow_ips``.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let operators through; answer others 404 as if the path did not exist."""
        if scope["type"] != "http" or scope["path"] not in OPERATIONS_PATHS or self.settings.operations_public:
            await self.app(scope, receive, send)
            return
        if await self._operator(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": "not found (operations endpoints are for loopback clients, administrators or the token)"},
            status_code=status.HTTP_404_NOT_FOUND,
        )
        await response(scope, receive, send)

    async def _operator(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        client = scope.get("client")
        proxied = "x-forwarded-for" in headers or "forwarded" in headers
        if _is_loopback(client[0] if client else None) and (not proxied or self.settings.forwarded_allow_ips):
            return True
        token = self.settings.operations_token
        scheme, _, sent = headers.get("authorization", "").partition(" ")
        if token is not None and scheme.lower() == "bearer":
            return hmac.compare_digest(sent.strip().encode(), token.get_secret_value().encode())
        return await anyio.to_thread.run_sync(_is_admin, Request(scope))


def _is_admin(request: Request) -> bool:
    if SESSION_COOKIE not in request.cookies:
        return False
    try:
        return current_user(request).role is UserRole.ADMIN
    except (HTTPException, SQLAlchemyError):
        return False


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """Answer a database outage with 503 and a message (a page for browsers); log the error's kind.

    Parameters
    ----------
    request : fastapi.Request
        The request.
    exc : Exception
        The SQLAlchemy error.

    Returns
    -------
    fastapi.Response
        503 with ``Retry-After: 30``.
    """
    log.error("%s %s: database unavailable: %s", request.method, request.url.path, describe_error(exc))
    headers = {"Retry-After": "30", "Cache-Control": "no-store"}
    if "text/html" in request.headers.get("accept", ""):
        page = error_page(request, status.HTTP_503_SERVICE_UNAVAILABLE, DATABASE_UNAVAILABLE)
        page.headers.update(headers)
        return page
    return JSONResponse(
        {"detail": DATABASE_UNAVAILABLE}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers=headers
    )
