"""Who sends a DICOMweb request: HTTP Basic credentials (DICOMweb clients), a viewer's token or the session.

HTTP Basic credentials are checked exactly like a sign-in (:func:`integration.web.security.auth.check_credentials`:
the same atomic per-source back-off, failures audited), so the Basic route is no way around the sign-in
throttle.  A session cookie also needs the CSRF token header.
"""

from __future__ import annotations

import base64
import binascii

import anyio
from fastapi import HTTPException, Request, status

from integration.store.session import session_scope
from integration.store.tables import UserRole
from integration.store.users import DICOMWEB_SCOPE, user_for_token
from integration.web.deps import CurrentUser, app_settings, current_user, signed_in_user
from integration.web.security.auth import check_credentials
from integration.web.security.csrf import require_csrf

#: The challenge of a 401: DICOMweb clients answer it with HTTP Basic credentials.
BASIC_CHALLENGE = 'Basic realm="pacs-vlm DICOMweb", charset="UTF-8"'


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": BASIC_CHALLENGE})


def _basic_user(request: Request, authorization: str) -> CurrentUser:
    """Check HTTP Basic credentials like a sign-in (throttled, failures audited); blocking."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise _unauthorized("use HTTP Basic authentication, or sign in")
    try:
        username, colon, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthorized("malformed HTTP Basic credentials") from None
    if not colon or not username:
        raise _unauthorized("malformed HTTP Basic credentials")
    return check_credentials(request, username, password, unauthorized=_unauthorized, via="basic")


async def dicomweb_user(request: Request, roles: tuple[UserRole, ...]) -> tuple[CurrentUser, str]:
    """Authenticate a DICOMweb request: HTTP Basic, or the session cookie with the CSRF token header.

    A request with an ``Authorization`` header is judged by it alone: a cross-site page cannot send one, nor a
    ``multipart/related`` body, without a CORS preflight, which is granted only to configured viewer origins
    (``PACSVLM_DICOMWEB_CORS_ORIGINS``) and never with credentials, so the ``SameSite=Strict`` session cookie
    does not travel and a Basic password must be known.

    Parameters
    ----------
    request : fastapi.Request
        The request.
    roles : tuple of UserRole
        The roles admitted.

    Returns
    -------
    tuple of (CurrentUser, str)
        The user and how they authenticated (``basic`` or ``session``).

    Raises
    ------
    fastapi.HTTPException
        401 with ``WWW-Authenticate: Basic`` without valid credentials, 429 when sign-ins are throttled,
        403 without the CSRF token (cookie) or for another role.
    """
    authorization = request.headers.get("authorization")
    if authorization:
        user = await anyio.to_thread.run_sync(_basic_user, request, authorization)
        via = "basic"
    else:
        try:
            user = await anyio.to_thread.run_sync(current_user, request)
        except HTTPException as exc:
            if exc.status_code == status.HTTP_401_UNAUTHORIZED:
                raise _unauthorized("sign in, or use HTTP Basic authentication") from None
            raise
        await require_csrf(request)
        via = "session"
    if user.role not in roles:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "not allowed for your role")
    return user, via


#: Who may read through DICOMweb (query, retrieve, rendered): the people who read studies.
READER_ROLES = (UserRole.RADIOLOGIST, UserRole.ADMIN)


def _viewer_token_user(request: Request, token: str) -> CurrentUser | None:
    """The user of a live viewer (``dicomweb`` scope) token, or None; blocking."""
    with session_scope(app_settings(request).database_url) as session:
        user = user_for_token(session, token, scope=DICOMWEB_SCOPE)
        if user is None:
            return None
        return signed_in_user(session, user)


async def dicomweb_reader(request: Request) -> CurrentUser:
    """Authenticate a DICOMweb read (QIDO-RS, WADO-RS, rendered): a viewer's token, HTTP Basic or the session.

    ``Authorization: Bearer <token>`` takes a viewer token (``POST /api/viewer-token``: scope ``dicomweb``, so
    it is never a sign-in cookie and a cookie is never a viewer token); ``Authorization: Basic`` is checked
    like a sign-in (throttled); without an ``Authorization`` header the session cookie is used (a read
    changes nothing, so no CSRF token is needed; the cookie is ``SameSite=Strict``, so only our own pages
    send it).

    Returns
    -------
    CurrentUser
        A radiologist or administrator (the caller limits what they see by site).

    Raises
    ------
    fastapi.HTTPException
        401 (with ``WWW-Authenticate``) without valid credentials, 429 when sign-ins are throttled, 403 for
        another role.
    """
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            found = await anyio.to_thread.run_sync(_viewer_token_user, request, credentials.strip())
            if found is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "unknown or expired viewer token",
                    headers={"WWW-Authenticate": 'Bearer realm="pacs-vlm DICOMweb", error="invalid_token"'},
                )
            user = found
        else:
            user = await anyio.to_thread.run_sync(_basic_user, request, authorization)
    else:
        try:
            user = await anyio.to_thread.run_sync(current_user, request)
        except HTTPException as exc:
            if exc.status_code == status.HTTP_401_UNAUTHORIZED:
                raise _unauthorized("sign in, or use a viewer token or HTTP Basic authentication") from None
            raise
    if user.role not in READER_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "DICOMweb reads are for radiologists and administrators")
    request.state.user = user
    return user
