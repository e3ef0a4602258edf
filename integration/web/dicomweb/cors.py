"""CORS for ``/dicomweb`` only, per configured viewer origin (``Settings.dicomweb_cors_origins``); off by default.

A web viewer served from another origin (OHIF at ``https://ohif.hospital.example``) reads our DICOMweb
from the radiologist's browser, which sends a preflight for the ``Authorization`` header.  Only the
origins listed get an answer a browser accepts; every other origin, and every path outside
``/dicomweb``, gets no CORS header at all (the review app and its API are never readable cross-origin).
Credentials are not allowed: viewers send a bearer token (``POST /api/viewer-token``), never our cookie.
The preflight is answered here, before authentication, as browsers send it without credentials.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The paths CORS applies to.
PREFIX = "/dicomweb"
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Accept, Content-Type"
#: What a viewer's script may read of an answer.
EXPOSED_HEADERS = "Content-Type, Content-Length, Warning"
#: Seconds a browser may keep a preflight's answer.
MAX_AGE = "600"


class DicomwebCors:
    """ASGI middleware: CORS headers on ``/dicomweb`` for the configured origins, preflights answered.

    Parameters
    ----------
    app : ASGI application
        The wrapped application.
    origins : iterable of str
        Allowed origins (``scheme://host[:port]``); empty turns CORS off.
    """

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(origin.rstrip("/").lower() for origin in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an allowed origin's preflight; add the CORS headers to its other answers."""
        if scope["type"] != "http" or not self.origins:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if not (path == PREFIX or path.startswith(PREFIX + "/")) or not origin or origin.lower() not in self.origins:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            preflight = Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": ALLOWED_METHODS,
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": MAX_AGE,
                    "Vary": "Origin",
                },
            )
            await preflight(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer = MutableHeaders(scope=message)
                answer["Access-Control-Allow-Origin"] = origin
                answer["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
                answer.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)
