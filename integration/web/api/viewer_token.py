"""``POST /api/viewer-token``: a bearer token with which the hospital's viewer reads our DICOMweb as you.

A viewer (OHIF on another origin, a PACS viewer) cannot use the review app's cookie, which is
``SameSite=Strict`` and not readable by scripts.  A signed-in radiologist or administrator asks for a token
of scope ``dicomweb`` (:data:`~integration.store.users.DICOMWEB_SCOPE`): it reads ``/dicomweb`` as that
user, with the same site restriction, for ``Settings.viewer_token_hours``; it is refused as a cookie and
on ``/api`` (sessions are looked up by scope).  The request needs the session cookie and the CSRF token, so
another site cannot mint a token for a signed-in user.  Audited ``viewer_token.issued`` (never the token).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel
from sqlalchemy import select

from integration.store.audit import add_event
from integration.store.tables import User, UserSession
from integration.store.users import DICOMWEB_SCOPE, create_session, hash_token
from integration.web.deps import AppSettings, DbSession, Reviewer, client_address
from integration.web.security.csrf import require_csrf


class ViewerToken(BaseModel):
    """A viewer's bearer token (``Authorization: Bearer <token>`` on ``/dicomweb``) and when it expires."""

    token: str
    expires_at: datetime


def viewer_token_router() -> APIRouter:
    """Build ``POST /api/viewer-token``."""
    router = APIRouter(prefix="/api", tags=["dicomweb"])

    @router.post(
        "/viewer-token",
        status_code=status.HTTP_201_CREATED,
        summary="A DICOMweb bearer token for a viewer",
        dependencies=[Depends(require_csrf)],
        responses={401: {}, 403: {"description": "not a radiologist or administrator, or no CSRF token"}},
    )
    def issue(request: Request, settings: AppSettings, session: DbSession, user: Reviewer) -> ViewerToken:
        """A token for ``/dicomweb`` reads as you (your site's studies only), valid for a few hours."""
        account = session.get(User, user.id)
        if account is None or not account.active:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in")
        hours = settings.viewer_token_hours
        token = create_session(session, account, timedelta(hours=hours), scope=DICOMWEB_SCOPE)
        session.flush()
        expires_at = session.scalar(select(UserSession.expires_at).where(UserSession.token_hash == hash_token(token)))
        assert expires_at is not None
        add_event(
            session,
            actor=user.username,
            action="viewer_token.issued",
            object_type="user",
            object_id=str(user.id),
            source=client_address(request),
            detail={"hours": hours},
        )
        return ViewerToken(token=token, expires_at=expires_at)

    return router
