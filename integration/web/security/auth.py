"""Sign-in for the review app: ``POST /api/login``, ``POST /api/logout``, and the sign-in steps the forms share.

A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure over https); the database keeps
only its SHA-256.  Sign-ins are audited with the client's host as their source (throttled ones aggregated);
application logs name neither usernames nor passwords.  :func:`check_credentials` is the one credential
check (sign-in form, ``POST /api/login``, DICOMweb HTTP Basic): each attempt is counted atomically per
username and source before argon2 runs, and an attempt that must wait gets 429 with ``Retry-After``
(back-off in :mod:`integration.store.sign_in_throttle`; never a lock-out from another source).  A
deactivated user's cookie stops working at once and their sign-in gets the same 401 as a wrong password.
Who the signed-in user of a request is, is a dependency (:func:`integration.web.deps.current_user`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import timedelta

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.store.sign_in_throttle import attempt_succeeded, reserve_attempt
from integration.store.tables import User, UserRole
from integration.store.users import authenticate, create_session, end_session, user_for_token
from integration.web.deps import SESSION_COOKIE, CurrentUser, app_settings, client_address, client_host, signed_in_user
from integration.web.schemas import SignedIn
from integration.web.security.csrf import require_csrf
from integration.web.security.refusals import record_refusal

#: The answer to a local sign-in while only single sign-on is allowed.
LOCAL_SIGN_IN_OFF = "sign-in with a password is turned off here: use single sign-on"
#: The answer to a non-administrator's local sign-in while single sign-on is on.
LOCAL_SIGN_IN_ADMINS = "sign-in with a password is for administrators here: use single sign-on"
#: The one answer to wrong credentials (the same for an unknown user, a wrong password and a deactivated user).
BAD_CREDENTIALS = "invalid username or password"
#: The answer when sign-ins are throttled (``Retry-After`` says when to try again).
TOO_MANY_ATTEMPTS = "too many failed sign-ins: try again later"


class LoginRequest(BaseModel):
    """The body of ``POST /api/login``."""

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


def check_credentials(
    request: Request,
    username: str,
    password: str,
    *,
    unauthorized: Callable[[str], HTTPException] | None = None,
    via: str | None = None,
) -> CurrentUser:
    """Check a username and password behind the sign-in throttle; blocking (argon2).

    The attempt is first counted atomically for its (username, source) and its source
    (:func:`integration.store.sign_in_throttle.reserve_attempt`), so concurrent guesses never get past the
    limit; an attempt that must wait gives 429 (audited ``auth.login_throttled``, aggregated) before the
    password is looked at.  Wrong credentials, an unknown user and a deactivated user all give the same 401
    (audited ``auth.login_failed``); a success clears the (username, source) count.

    Parameters
    ----------
    request : fastapi.Request
        The request (settings and client address).
    username, password : str
        What the person typed.
    unauthorized : callable, optional
        Builds the 401 (HTTP Basic adds its challenge); a plain 401 by default.
    via : str, optional
        How the credentials came (``basic``), recorded in the audit detail.

    Returns
    -------
    CurrentUser
        The user.

    Raises
    ------
    fastapi.HTTPException
        401 on bad credentials; 429 with ``Retry-After`` (seconds) when the attempt must wait.
    """
    refuse = unauthorized or (lambda message: HTTPException(status.HTTP_401_UNAUTHORIZED, message))
    host = client_host(request)
    extra = {"via": via} if via else {}
    actor = username.replace("\x00", "")[:128]
    url = app_settings(request).database_url
    if "\x00" in username:  # no account has one, and PostgreSQL refuses NUL in text: a failed sign-in as it is
        with session_scope(url) as session:
            add_event(session, actor=actor, action="auth.login_failed", source=host, detail=extra or None)
        raise refuse(BAD_CREDENTIALS)
    with session_scope(url) as session:  # the attempt is counted (committed) before argon2 runs
        wait = reserve_attempt(session, username, host)
        if wait is not None:  # raised inside the scope: a refused attempt counts nowhere
            retry_after = max(1, math.ceil(wait))
            record_refusal(
                request, "auth.login_throttled", actor=actor, detail={"retry_after_seconds": retry_after, **extra}
            )
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS, TOO_MANY_ATTEMPTS, headers={"Retry-After": str(retry_after)}
            )
    with session_scope(url) as session:
        user = authenticate(session, username, password)
        if user is not None:
            attempt_succeeded(session, username, host)
            return signed_in_user(session, user)
        add_event(session, actor=actor, action="auth.login_failed", source=host, detail=extra or None)
    raise refuse(BAD_CREDENTIALS)  # after the scope has committed the failure's audit event


def open_session(session: Session, request: Request, user: User, detail: Mapping[str, object]) -> str:
    """Open a session for a user who has just signed in (any way) and audit ``auth.login``; return its token.

    ``detail`` says how (``{"via": "password"}``, ``{"via": "sso", ...}``); the session lasts ``session_hours``.
    """
    token = create_session(session, user, timedelta(hours=app_settings(request).session_hours))
    add_event(
        session,
        actor=user.username,
        action="auth.login",
        object_type="user",
        object_id=str(user.id),
        source=client_host(request),
        detail=dict(detail),
    )
    return token


def sign_in(request: Request, username: str, password: str) -> tuple[str, CurrentUser]:
    """Sign a person in: throttled credential check (:func:`check_credentials`), new session, audit.

    The one sign-in step of the JSON API and of the HTML sign-in form; success opens a session (audited
    ``auth.login``).  The caller sets the cookie (:func:`set_session_cookie`).

    Parameters
    ----------
    request : fastapi.Request
        The request (settings and client address).
    username, password : str
        What the person typed.

    Returns
    -------
    tuple of (str, CurrentUser)
        The raw session token for the cookie and the signed-in user.

    Raises
    ------
    fastapi.HTTPException
        401 on bad credentials; 429 with ``Retry-After`` (seconds) when throttled; 403 when local sign-in is
        off for this user (``local_sign_in``; audited ``auth.local_refused``).
    """
    settings = app_settings(request)
    policy = local_sign_in_policy(settings)
    if policy == "none":
        record_refusal(request, "auth.local_refused", actor=username.replace("\x00", "")[:128])
        raise HTTPException(status.HTTP_403_FORBIDDEN, LOCAL_SIGN_IN_OFF)
    signed_in = check_credentials(request, username, password)
    with session_scope(settings.database_url) as session:
        user = session.get(User, signed_in.id)
        if user is None or not user.active:  # deactivated between the check and now
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, BAD_CREDENTIALS)
        if policy == "admins" and user.role is not UserRole.ADMIN:
            add_event(session, actor=user.username, action="auth.local_refused", source=client_host(request))
            refused = True
        else:
            refused = False
            token = open_session(session, request, user, {"via": "password"})
            if settings.sso is not None:  # a local password beside single sign-on: break-glass, audited as such
                add_event(
                    session,
                    actor=user.username,
                    action="auth.break_glass",
                    object_type="user",
                    object_id=str(user.id),
                    source=client_host(request),
                    detail={"role": user.role.value},
                )
    if refused:
        raise HTTPException(status.HTTP_403_FORBIDDEN, LOCAL_SIGN_IN_ADMINS)
    return token, signed_in


def local_sign_in_policy(settings: Settings) -> str:
    """Who may sign in with a local password: ``all``, ``admins`` or ``none`` (``local_sign_in``).

    Unset, it is ``admins`` while single sign-on is configured (the break-glass accounts) and ``all`` without.
    """
    if settings.local_sign_in is not None:
        return settings.local_sign_in
    return "admins" if settings.sso is not None else "all"


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    """Put a session token in the response's cookie (HttpOnly, SameSite=Strict, Secure over https).

    Parameters
    ----------
    response : fastapi.Response
        The response to set the cookie on (a redirect, for a form).
    request : fastapi.Request
        The request (its scheme decides ``Secure``).
    token : str
        The raw token from :func:`sign_in`.
    """
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(app_settings(request).session_hours * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.headers["Cache-Control"] = "no-store"


def sign_out(request: Request, response: Response) -> None:
    """End the session of the request's cookie (if any), audit ``auth.logout`` and clear the cookie.

    Parameters
    ----------
    request : fastapi.Request
        The request.
    response : fastapi.Response
        The answer, whose cookie is cleared.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with session_scope(app_settings(request).database_url) as session:
            user = user_for_token(session, token)
            if end_session(session, token) and user is not None:
                add_event(session, actor=user.username, action="auth.logout", source=client_address(request))
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def auth_router() -> APIRouter:
    """Build the sign-in router.

    Returns
    -------
    fastapi.APIRouter
        ``POST /api/login`` and ``POST /api/logout``.
    """
    router = APIRouter(prefix="/api", tags=["authentication"])

    @router.post(
        "/login",
        summary="Sign in",
        responses={401: {"description": BAD_CREDENTIALS}, 429: {"description": "too many failed sign-ins"}},
    )
    def login(body: LoginRequest, request: Request, response: Response) -> SignedIn:
        """Check the credentials and set the session cookie; 401 with one generic message, 429 when throttled."""
        token, user = sign_in(request, body.username, body.password)
        set_session_cookie(response, request, token)
        return SignedIn(username=user.username, role=user.role.value)

    @router.post(
        "/logout",
        summary="Sign out",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=[Depends(require_csrf)],
    )
    def logout(request: Request) -> Response:
        """End the session of the cookie (if any) and clear the cookie."""
        response = Response(status_code=status.HTTP_204_NO_CONTENT)
        sign_out(request, response)
        return response

    return router
