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
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from pydantic import AfterValidator
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.session import session_scope
from integration.store.sso import user_site_ids
from integration.store.tables import Site, User, UserRole
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
    site_ids : frozenset of int
        The user's sites (``user_sites``); empty for a global administrator.
    """

    id: int
    username: str
    role: UserRole
    site_ids: frozenset[int]

    @property
    def site_id(self) -> int | None:
        """The user's one site; None for a user of no site or of several (see :func:`site_for_new`)."""
        return next(iter(self.site_ids)) if len(self.site_ids) == 1 else None

    def of_site(self, site_id: int | None) -> bool:
        """Whether something of ``site_id`` is within the user's sites (administrators: every site)."""
        return self.role is UserRole.ADMIN or (site_id is not None and site_id in self.site_ids)


def signed_in_user(session: Session, user: User) -> CurrentUser:
    """The :class:`CurrentUser` of a user row, with its sites read from ``user_sites``."""
    return CurrentUser(user.id, user.username, user.role, user_site_ids(session, user.id))


#: The answer to a user of several sites who did not say which one something new belongs to.
CHOOSE_SITE = "you work for several sites: choose the site this belongs to (site: one of your site codes)"


def site_codes_of(session: Session, user: CurrentUser) -> list[str]:
    """The codes of the user's sites, sorted (what a site chooser offers)."""
    return sorted(session.scalars(select(Site.code).where(Site.id.in_(user.site_ids))))


def new_site_of(settings: Settings, user: CurrentUser, site_code: str | None) -> int | None:
    """:func:`site_for_new` in a session of its own (blocking); no query for a user of one site naming none.

    Raises
    ------
    fastapi.HTTPException
        422 as :func:`site_for_new`.
    """
    if not (site_code or "").strip() and len(user.site_ids) <= 1:
        return user.site_id
    with session_scope(settings.database_url) as session:
        return site_for_new(session, user, site_code)


def site_for_new(session: Session, user: CurrentUser, site_code: str | None) -> int | None:
    """The site a new study, case or order of this user belongs to.

    A user's own site when they have one; for a user of several sites, the one ``site_code`` names (required);
    for an administrator, the site ``site_code`` names, or None.

    Raises
    ------
    fastapi.HTTPException
        422 when a user of several sites names none, or names a site that is not theirs or does not exist.
    """
    if site_code is None or not site_code.strip():
        if len(user.site_ids) > 1:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, CHOOSE_SITE)
        return user.site_id
    site_id = session.scalar(select(Site.id).where(Site.code == site_code.strip().upper()[:16]))
    if site_id is None or not user.of_site(site_id):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"site {site_code[:16]!r} is not one of your sites")
    return site_id


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
        401 when the cookie is missing, unknown or expired, the session was idle longer than
        ``session_idle_minutes`` (it is then ended), or the user is inactive.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        settings = app_settings(request)
        with session_scope(settings.database_url) as session:
            user = user_for_token(session, token, idle=timedelta(minutes=settings.session_idle_minutes))
            if user is not None:
                signed_in = signed_in_user(session, user)
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
