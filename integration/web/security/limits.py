"""Bounds on what one request may cost the API process: body size per route, and uploads per user.

Without them a body is read into memory before anyone is authenticated (two 400 MB JSON bodies to
``/api/login`` took 2.1 GiB) and one uploader can occupy every worker thread.  :class:`BodyLimit` is an
ASGI middleware in front of every route: a declared ``Content-Length`` above the route's limit is
refused (413) before a byte is read, and a body streamed without one is counted as it arrives and cut
off at the limit.  Uploads (STOW-RS, photos) may be as large as ``PACSVLM_MAX_UPLOAD_BYTES``; every other
request (JSON, forms) ``PACSVLM_MAX_REQUEST_BYTES``.  :class:`UploadGate` lets one user have a few uploads
in progress and start a bounded number per minute (429 with ``Retry-After`` otherwise).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from integration.config import Settings
from integration.intake.photo import MAX_PHOTO_BYTES

#: Largest photo upload body: the photo plus room for the form's fields and the multipart framing.
PHOTO_BODY_BYTES = MAX_PHOTO_BYTES + 256 * 1024
#: Routes whose body is a photo upload form.
PHOTO_PATHS = frozenset({"/api/uploads/photo", "/upload"})
#: Prefix of the STOW-RS routes.
STOW_PREFIX = "/dicomweb/studies"


class BodyTooLarge(HTTPException):
    """A request body is above its route's limit (413; the message names the limit).

    Parameters
    ----------
    limit : int
        The route's limit in bytes.
    path : str
        The request path (a photo upload's message speaks of the photo).
    """

    def __init__(self, limit: int, path: str = "") -> None:
        message = (
            f"the photo may have at most {MAX_PHOTO_BYTES // 1024**2} MiB"
            if path in PHOTO_PATHS
            else f"the request body exceeds {limit} bytes"
        )
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, message)
        self.limit = limit


def body_limit(method: str, path: str, settings: Settings) -> int:
    """Return the largest body a request to this route may send.

    Parameters
    ----------
    method : str
        HTTP method.
    path : str
        Request path.
    settings : Settings
        ``max_upload_bytes`` and ``max_request_bytes``.

    Returns
    -------
    int
        Bytes.
    """
    if method == "POST" and (path == STOW_PREFIX or path.startswith(STOW_PREFIX + "/")):
        return settings.max_upload_bytes
    if method == "POST" and path in PHOTO_PATHS:
        return min(settings.max_upload_bytes, PHOTO_BODY_BYTES)
    return settings.max_request_bytes


def _declared_length(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return bytes(value).decode("latin-1").strip()
    return None


class BodyLimit:
    """ASGI middleware: refuse or cut off request bodies above their route's limit.

    Parameters
    ----------
    app : ASGI application
        The wrapped application.
    settings : Settings
        The limits.
    on_refusal : callable, optional
        Called with the scope and the limit when a body is refused here (for the audit).
    """

    def __init__(
        self, app: ASGIApp, settings: Settings, on_refusal: Callable[[Scope, int], None] | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then count the streamed bytes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["method"], scope["path"], self.settings)
        declared = _declared_length(scope)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, scope["path"])
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        if self.on_refusal is not None:
            self.on_refusal(scope, limit)
        exc = BodyTooLarge(limit, scope["path"])
        response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers={"Connection": "close"})
        await response(scope, receive, send)


@dataclass
class _UserUploads:
    in_progress: int = 0
    tokens: float = 0.0
    updated: float = 0.0


class UploadGate:
    """Per-user admission of uploads: at most N in progress, and a token bucket of M per minute.

    Kept in the process's memory: each API process admits its own share (a restart forgets the counts).

    Parameters
    ----------
    in_progress : int
        Uploads one user may have running at once.
    per_minute : int
        Uploads one user may start per minute (bursts up to this many).
    clock : callable
        Monotonic seconds (tests may pass their own).
    """

    def __init__(self, in_progress: int, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_in_progress = in_progress
        self.per_minute = per_minute
        self._clock = clock
        self._users: dict[int, _UserUploads] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadGate:
        """Build the gate from ``max_uploads_in_progress`` and ``max_uploads_per_minute``.

        Parameters
        ----------
        settings : Settings
            The settings.

        Returns
        -------
        UploadGate
            A gate with no upload admitted yet.
        """
        return cls(settings.max_uploads_in_progress, settings.max_uploads_per_minute)

    @contextmanager
    def admit(self, user_id: int) -> Iterator[None]:
        """Hold one of the user's upload slots for the ``with`` block.

        Parameters
        ----------
        user_id : int
            The uploader.

        Yields
        ------
        None
            While the upload runs.

        Raises
        ------
        fastapi.HTTPException
            429 with ``Retry-After`` when the user has too many uploads running or started too many lately.
        """
        now = self._clock()
        rate = self.per_minute / 60.0
        with self._lock:
            state = self._users.get(user_id)
            if state is None:
                state = self._users[user_id] = _UserUploads(tokens=float(self.per_minute), updated=now)
            state.tokens = min(float(self.per_minute), state.tokens + (now - state.updated) * rate)
            state.updated = now
            if state.in_progress >= self.max_in_progress:
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    f"you have {state.in_progress} uploads in progress; wait for one to finish",
                    headers={"Retry-After": "1"},
                )
            if state.tokens < 1.0:
                wait = max(1, math.ceil((1.0 - state.tokens) / rate))
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    f"more than {self.per_minute} uploads per minute; try again in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            state.tokens -= 1.0
            state.in_progress += 1
            if len(self._users) > 10_000:  # forget idle users with full buckets
                full = [uid for uid, s in self._users.items() if not s.in_progress and s.tokens >= self.per_minute - 1]
                for uid in full:
                    self._users.pop(uid, None)
        try:
            yield
        finally:
            with self._lock:
                state.in_progress -= 1
                self._users.setdefault(user_id, state)
