"""Cross-site request forgery protection for requests authenticated by the session cookie.

The token is derived from the secret session token (HMAC-SHA256), so it needs no storage, changes with every
sign-in and cannot be computed by another site.  Pages put it in a ``<meta name="csrf-token">`` tag and in a
hidden ``csrf_token`` field of every form; scripts send it as the ``X-CSRF-Token`` header.  Requests
authenticated otherwise (HTTP Basic for DICOMweb clients) carry no ambient credentials and need no token.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from integration.web.deps import SESSION_COOKIE
from integration.web.security.refusals import CsrfRefused

#: The header scripts send the token in.
CSRF_HEADER = "X-CSRF-Token"
#: The form field pages send the token in.
CSRF_FIELD = "csrf_token"
#: Methods that change nothing and need no token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token_for_session(session_token: str) -> str:
    """Return the CSRF token of a session.

    Parameters
    ----------
    session_token : str
        The secret token of the session cookie.

    Returns
    -------
    str
        64 hex digits.
    """
    return hmac.new(session_token.encode(), b"pacs-vlm csrf v1", hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str | None:
    """Return the CSRF token for the request's session, or None without a session cookie.

    Parameters
    ----------
    request : fastapi.Request
        The request.

    Returns
    -------
    str or None
        The token to embed in the page.
    """
    session_token = request.cookies.get(SESSION_COOKIE)
    return csrf_token_for_session(session_token) if session_token else None


async def require_csrf(request: Request) -> None:
    """FastAPI dependency: refuse a state-changing, cookie-authenticated request without the session's token.

    The token is taken from the ``X-CSRF-Token`` header, else from the ``csrf_token`` field of a form body.

    Parameters
    ----------
    request : fastapi.Request
        The request.

    Raises
    ------
    CsrfRefused
        403 when the token is missing or wrong (audited).
    """
    if request.method in SAFE_METHODS:
        return
    expected = csrf_token(request)
    if expected is None:
        return  # not cookie-authenticated: the authentication dependency decides
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if sent is None or not hmac.compare_digest(sent, expected):
        raise CsrfRefused("missing or invalid CSRF token; reload the page")
