"""Sign-in for the review app: ``POST /api/login``, ``POST /api/logout`` and the ``current_user`` dependency.

A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure over https); the database keeps
only its SHA-256.  Sign-ins, failed or not, are audited with the client address; application logs name
neither usernames nor passwords.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from integration.config import Settings
from integration.store.tables import UserRole

#: The session cookie's name.
SESSION_COOKIE = "pacsvlm_session"
#: How long a sign-in lasts.
SESSION_TTL = timedelta(hours=8)
#: The one answer to wrong credentials (the same for an unknown user and a wrong password).
BAD_CREDENTIALS = "invalid username or password"


@dataclass(frozen=True)
class CurrentUser:
    """The signed-in user of a request.

    Attributes
    ----------
    id : int
        User id.
    username : str
        Sign-in name.
    role : UserRole
        What the user may do.
    site_id : int or None
        The user's site; None for a global administrator.
    """

    id: int
    username: str
    role: UserRole
    site_id: int | None


class LoginRequest(BaseModel):
    """The body of ``POST /api/login``."""

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def client_address(request: Request) -> str | None:
    """Return ``host:port`` of the client, or None when unknown.

    Parameters
    ----------
    request : fastapi.Request
        The request.

    Returns
    -------
    str or None
        The address.
    """
    return f"{request.client.host}:{request.client.port}" if request.client else None


def current_user(request: Request) -> CurrentUser:
    """FastAPI dependency: the user of the request's session cookie.

    Parameters
    ----------
    request : fastapi.Request
        The request.

    Returns
    -------
    CurrentUser
        The signed-in user.

    Raises
    ------
    fastapi.HTTPException
        401 when the cookie is missing, unknown or expired, or the user is inactive.
    """
    from integration.store.session import session_scope
    from integration.store.users import user_for_token

    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with session_scope(_settings(request).database_url) as session:
            user = user_for_token(session, token)
            if user is not None:
                return CurrentUser(user.id, user.username, user.role, user.site_id)
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in")


def require_roles(*roles: UserRole) -> Callable[[CurrentUser], CurrentUser]:
    """Build a dependency that admits only the given roles.

    Parameters
    ----------
    *roles : UserRole
        The roles admitted.

    Returns
    -------
    callable
        A FastAPI dependency returning the :class:`CurrentUser`; 401 when not signed in, 403 for other roles.
    """

    def dependency(user: Annotated[CurrentUser, Depends(current_user)]) -> CurrentUser:
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "not allowed for your role")
        return user

    return dependency


def auth_router() -> APIRouter:
    """Build the sign-in router.

    Returns
    -------
    fastapi.APIRouter
        ``POST /api/login`` and ``POST /api/logout``.
    """
    router = APIRouter(prefix="/api", tags=["authentication"])

    @router.post("/login", summary="Sign in")
    def login(body: LoginRequest, request: Request, response: Response) -> dict[str, str]:
        """Check the credentials and set the session cookie; 401 with one generic message otherwise."""
        from integration.store.audit import record_event
        from integration.store.session import session_scope
        from integration.store.users import authenticate, create_session

        source = client_address(request)
        with session_scope(_settings(request).database_url) as session:
            user = authenticate(session, body.username, body.password)
            if user is None:
                record_event(session, actor=body.username, action="auth.login_failed", source=source)
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, BAD_CREDENTIALS)
            token = create_session(session, user, SESSION_TTL)
            record_event(
                session,
                actor=user.username,
                action="auth.login",
                object_type="user",
                object_id=str(user.id),
                source=source,
            )
            answer = {"username": user.username, "role": user.role.value}
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(SESSION_TTL.total_seconds()),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        response.headers["Cache-Control"] = "no-store"
        return answer

    @router.post("/logout", summary="Sign out", status_code=status.HTTP_204_NO_CONTENT)
    def logout(request: Request) -> Response:
        """End the session of the cookie (if any) and clear the cookie."""
        from integration.store.audit import record_event
        from integration.store.session import session_scope
        from integration.store.users import end_session, user_for_token

        token = request.cookies.get(SESSION_COOKIE)
        if token:
            with session_scope(_settings(request).database_url) as session:
                user = user_for_token(session, token)
                if end_session(session, token) and user is not None:
                    record_event(session, actor=user.username, action="auth.logout", source=client_address(request))
        response = Response(status_code=status.HTTP_204_NO_CONTENT)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return router
