"""The FastAPI dependencies of the web layer: settings, a database session, the signed-in user, a study UID.

Routes declare what they need as annotated parameters (``settings: AppSettings``, ``session: DbSession``,
``user: Reviewer``, ``study_uid: StudyUid``) instead of reading ``request.app.state`` or opening sessions
themselves, so each route shows its inputs and the OpenAPI document describes them.

:data:`DbSession` is the route's one transaction: it commits when the route returns, before the answer is
sent, and rolls back when the route raises.  The signed-in user is looked up in a short transaction of its
own, since it notes the sign-in session as seen whatever the route then does.  A study UID that is not a
DICOM UID answers 422 naming the parameter; one that is valid but belongs to another site answers 404
(:mod:`integration.web.security.access`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from pydantic import AfterValidator
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.session import session_scope
from integration.store.tables import UserRole
from integration.store.users import user_for_token
from integration.uids import is_valid_uid

#: The session cookie's name.
SESSION_COOKIE = "pacsvlm_session"


def app_settings(request: Request) -> Settings:
    """The settings the application was built with."""
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(app_settings)]


def database_session(settings: AppSettings) -> Iterator[Session]:
    """The route's session: committed when the route returns, rolled back when it raises."""
    with session_scope(settings.database_url) as session:
        yield session


DbSession = Annotated[Session, Depends(database_session, scope="function")]


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


def client_address(request: Request) -> str | None:
    """``host:port`` of the client, or None when unknown."""
    return f"{request.client.host}:{request.client.port}" if request.client else None


def client_host(request: Request) -> str | None:
    """The client's host without port (the source of sign-in events and of their throttle), or None."""
    return request.client.host if request.client else None


def current_user(request: Request) -> CurrentUser:
    """Return the user of the request's session cookie, also left in ``request.state.user``.

    Raises
    ------
    fastapi.HTTPException
        401 when the cookie is missing, unknown or expired, or the user is inactive.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with session_scope(app_settings(request).database_url) as session:
            user = user_for_token(session, token)
            if user is not None:
                signed_in = CurrentUser(user.id, user.username, user.role, user.site_id)
                request.state.user = signed_in  # the actor of refusals audited later, and of the pages
                return signed_in
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in")


SignedIn = Annotated[CurrentUser, Depends(current_user)]


def require_roles(*roles: UserRole, refusal: str = "not allowed for your role") -> Callable[..., CurrentUser]:
    """Build a dependency that admits only the given roles: 401 when not signed in, 403 with ``refusal`` else."""

    def dependency(user: SignedIn) -> CurrentUser:
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, refusal)
        return user

    return dependency


#: Radiologists and administrators, for the JSON API.
Reviewer = Annotated[CurrentUser, Depends(require_roles(UserRole.RADIOLOGIST, UserRole.ADMIN))]
#: Radiologists and administrators, for the pages (a :class:`~integration.web.pages.templating.PageRoute` shows 403).
PageReviewer = Annotated[
    CurrentUser,
    Depends(
        require_roles(UserRole.RADIOLOGIST, UserRole.ADMIN, refusal="this page is for radiologists and administrators")
    ),
]
#: Administrators only.
Admin = Annotated[CurrentUser, Depends(require_roles(UserRole.ADMIN))]


def _dicom_uid(value: str) -> str:
    if not is_valid_uid(value):
        raise ValueError("not a DICOM UID (digits and dots, at most 64 characters)")
    return value


#: A DICOM UID in the path; anything else (a path, a quote, a NUL byte) answers 422 before any query.
Uid = Annotated[str, AfterValidator(_dicom_uid)]
StudyUid = Annotated[Uid, Path(max_length=64, description="Study Instance UID")]
