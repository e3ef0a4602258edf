"""Refused requests in the audit trail, aggregated so that a flood of refusals cannot flood the audit.

Why: cross-site attempts, CSRF and role refusals and malformed uploads left no trace, so an administrator
could not see someone probing; but writing one row per refusal lets an attacker fill the database (the
listener wrote 9,790 rejection rows in 15 s).  So the first refusal of a kind (action, actor, source,
object, reason) is written at once, the same refusals within the next :data:`WINDOW_SECONDS` are only
counted, and the count is written as one more event (``detail.count``) when the window ends.  Writes
happen on one background thread through a bounded queue: a refusal never waits for the database, and
when the database is down or slow the excess is dropped and counted in the process log.  Details hold
reasons and counts, never patient data.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request, status

from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.web.security.limits import PHOTO_PATHS, STOW_PREFIX

log = logging.getLogger(__name__)

#: Seconds during which repeats of one refusal are counted, not written.
WINDOW_SECONDS = 60.0
#: Kinds of refusal followed at once; beyond it, refusals are aggregated per action only.
MAX_KINDS = 2_000
#: Events waiting to be written; beyond it they are dropped (and counted in the log).
MAX_QUEUED = 1_000
#: Longest reason kept.
MAX_REASON = 200

Key = tuple[str, str, str | None, str | None, str | None, str | None]


@dataclass
class _Kind:
    written_at: float
    suppressed: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class RefusalAudit:
    """Aggregating writer of refusal events (one per process).

    Parameters
    ----------
    database_url : str
        Where the audit trail lives.
    window : float
        Seconds during which repeats are only counted.
    clock : callable
        Monotonic seconds.
    """

    def __init__(self, database_url: str, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.database_url = database_url
        self.window = window
        self._clock = clock
        self._kinds: dict[Key, _Kind] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Key, int, dict[str, Any]]] = queue.Queue(MAX_QUEUED)
        self._dropped = 0
        self._thread: threading.Thread | None = None

    def record(
        self,
        action: str,
        *,
        actor: str,
        source: str | None,
        object_type: str | None = None,
        object_id: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Note one refusal: written now if it is the first of its kind in the window, else counted.

        Parameters
        ----------
        action : str
            Audit action (``access.forbidden``, ``upload.refused``, ...).
        actor : str
            Username, or ``anonymous``.
        source : str, optional
            Client host.
        object_type, object_id : str, optional
            What was asked for (a study UID; never patient data).
        reason : str, optional
            Why it was refused (a fixed message).
        detail : dict, optional
            More numbers for the first event of the kind.
        """
        reason = reason[:MAX_REASON] if reason else None
        key: Key = (action, actor[:128], source, object_type, object_id, reason)
        now = self._clock()
        with self._lock:
            if key not in self._kinds and len(self._kinds) >= MAX_KINDS:
                self._expire(now)
                if len(self._kinds) >= MAX_KINDS:
                    key = (action, "*", None, None, None, "many kinds of refusal")
            kind = self._kinds.get(key)
            if kind is not None and now - kind.written_at < self.window:
                kind.suppressed += 1
                return
            count = 1 + (kind.suppressed if kind else 0)
            self._kinds[key] = _Kind(now, 0, dict(detail or {}))
        self._enqueue(key, count, dict(detail or {}))

    def flush(self) -> None:
        """Write the counts of every kind whose repeats were only counted (at shutdown, or by the thread)."""
        with self._lock:
            now = self._clock()
            pending = []
            for key, kind in self._kinds.items():
                if kind.suppressed:
                    pending.append((key, kind.suppressed, dict(kind.detail)))
                    kind.written_at, kind.suppressed = now, 0
        for key, count, detail in pending:
            self._enqueue(key, count, detail)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending and wait (up to ``timeout`` seconds) for the writes to finish.

        Parameters
        ----------
        timeout : float
            Seconds to wait at most.
        """
        self.flush()
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)

    def _expire(self, now: float) -> None:
        """Forget kinds whose window ended with nothing counted (caller holds the lock)."""
        for key in [
            k for k, kind in self._kinds.items() if now - kind.written_at >= self.window and not kind.suppressed
        ]:
            del self._kinds[key]

    def _enqueue(self, key: Key, count: int, detail: dict[str, Any]) -> None:
        self._start()
        try:
            self._queue.put_nowait((key, count, detail))
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 10, 100, 1000) or self._dropped % 10_000 == 0:
                log.warning("refusal audit queue full: %d refusal events dropped so far", self._dropped)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="refusal-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        next_flush = self._clock() + self.window
        while True:
            try:
                item = self._queue.get(timeout=max(0.1, next_flush - self._clock()))
            except queue.Empty:
                item = None
            if item is not None:
                try:
                    self._write(*item)
                finally:
                    self._queue.task_done()
            if self._clock() >= next_flush:
                self.flush()
                with self._lock:
                    self._expire(self._clock())
                next_flush = self._clock() + self.window

    def _write(self, key: Key, count: int, detail: dict[str, Any]) -> None:
        action, actor, source, object_type, object_id, reason = key
        body = {**detail, "count": count, **({"reason": reason} if reason else {})}
        try:
            with session_scope(self.database_url) as session:
                add_event(
                    session,
                    actor=actor,
                    action=action,
                    object_type=object_type,
                    object_id=object_id,
                    source=source,
                    detail=body,
                )
        except Exception as exc:  # the database is down: the refusal itself was answered; say so once
            log.warning("refusal event %s not audited: %s", action, type(exc).__name__)


def record_refusal(
    request: Request,
    action: str,
    *,
    actor: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Audit a refused request through the application's :class:`RefusalAudit` (never blocks).

    Parameters
    ----------
    request : fastapi.Request
        The request (its signed-in user, if known, is the actor; its client host the source).
    action : str
        Audit action.
    actor : str, optional
        Overrides the actor (a username typed at sign-in).
    object_type, object_id, reason, detail
        As for :meth:`RefusalAudit.record`.
    """
    audit: RefusalAudit | None = getattr(request.app.state, "refusals", None)
    if audit is None:
        return
    user = getattr(request.state, "user", None)
    who = actor if actor is not None else (user.username if user is not None else "anonymous")
    source = request.client.host if request.client else None
    audit.record(
        action, actor=who, source=source, object_type=object_type, object_id=object_id, reason=reason, detail=detail
    )


class CsrfRefused(HTTPException):
    """403: the CSRF token is missing or wrong (audited ``access.csrf_refused``).

    Parameters
    ----------
    message : str
        What to do about it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(status.HTTP_403_FORBIDDEN, message)


class CrossSiteRefused(HTTPException):
    """404 for something of another site, answered like something that does not exist (audited).

    Parameters
    ----------
    message : str
        The same message as for something that does not exist.
    object_type : str
        ``study`` or ``report``.
    object_id : str
        Its UID or id.
    """

    def __init__(self, message: str, object_type: str, object_id: str) -> None:
        super().__init__(status.HTTP_404_NOT_FOUND, message)
        self.object_type = object_type
        self.object_id = object_id


#: Status codes that mean "the upload was refused as malformed or too large".
_UPLOAD_REFUSALS = frozenset({400, 411, 413, 415, 422, 429})


def audit_http_refusal(request: Request, exc: HTTPException) -> None:
    """Audit an HTTP error answer when it is a refusal worth tracing (aggregated).

    CSRF refusals, role refusals (403), cross-site attempts (404 of another site's study or report) and
    refused uploads (STOW-RS and photo: 400, 411, 413, 415, 422, 429).

    Parameters
    ----------
    request : fastapi.Request
        The request.
    exc : fastapi.HTTPException
        The error answered.
    """
    reason = str(exc.detail) if isinstance(exc.detail, str) else None
    if isinstance(exc, CsrfRefused):
        record_refusal(request, "access.csrf_refused", reason=reason)
    elif isinstance(exc, CrossSiteRefused):
        record_refusal(request, "access.cross_site", object_type=exc.object_type, object_id=exc.object_id)
    elif exc.status_code == status.HTTP_403_FORBIDDEN:
        record_refusal(request, "access.forbidden", reason=reason, detail={"path": request.url.path[:200]})
    elif exc.status_code in _UPLOAD_REFUSALS and request.method == "POST":
        path = request.url.path
        if path in PHOTO_PATHS or path.startswith(STOW_PREFIX):
            record_refusal(request, "upload.refused", reason=reason, detail={"path": path[:200]})
