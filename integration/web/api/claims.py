"""Claiming a study to read it, releasing it and taking it over: the JSON routes and the study page's forms.

* ``POST /api/studies/{uid}/claim`` (body optional ``{"take_over": true}``): claim or renew; 409 naming the
  holder when another radiologist is reading it and ``take_over`` is false.
* ``DELETE /api/studies/{uid}/claim``: release the user's own claim.
* ``POST /studies/{uid}/claim`` (take over) and ``POST /studies/{uid}/release`` from the page's forms: CSRF
  token required, answered with a redirect (Post/Redirect/Get) to the study page or the worklist it came from.

Only radiologists claim (administrators get a 403 saying so; they read nothing to sign).  Another site's study
answers 404 like everywhere else (:func:`~integration.web.security.access.study_for`).  Take-overs and releases
are audited (``study.claim.take_over``, ``study.claim.release``; the previous holder's user name, no patient
data).  The claim itself is :mod:`integration.store.claims`; opening the study page claims it too
(:mod:`integration.web.pages.claim_view`).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Depends, Form, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.audit import add_event
from integration.store.claims import Claim, StudyClaimed, claim_study, current_claim, release_claim
from integration.store.tables import UserRole, utcnow
from integration.web.deps import AppSettings, CurrentUser, DbSession, Reviewer, StudyUid, client_address
from integration.web.pages.reading_list import MAX_LIST_QUERY, filters_from, list_query, worklist_url
from integration.web.pages.review_form import see_other
from integration.web.pages.templating import PageRoute, display_zone
from integration.web.security.access import study_for
from integration.web.security.csrf import require_csrf

#: What an administrator who tries to claim a study is told.
NOT_A_READER = "only radiologists claim studies: an administrator account reads no reports to sign"


class ClaimRequest(BaseModel):
    """The body of ``POST /api/studies/{uid}/claim``."""

    model_config = ConfigDict(extra="forbid")

    take_over: bool = False


class ClaimAnswer(BaseModel):
    """A live claim, as the JSON routes answer it (times ISO 8601, UTC)."""

    study_uid: str
    claimed_by: str
    claimed_by_name: str | None
    claimed_at: str
    expires_at: str

    @classmethod
    def of(cls, study_uid: str, claim: Claim) -> ClaimAnswer:
        """Return the answer of a claim."""
        return cls(
            study_uid=study_uid,
            claimed_by=claim.username,
            claimed_by_name=claim.person_name,
            claimed_at=claim.claimed_at.isoformat(),
            expires_at=claim.expires_at.isoformat(),
        )


class Released(BaseModel):
    """The answer of ``DELETE /api/studies/{uid}/claim``: whether the user held a claim that is now gone."""

    study_uid: str
    released: bool


def _require_reader(user: CurrentUser) -> None:
    if user.role is not UserRole.RADIOLOGIST:
        raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_A_READER)


def take(
    settings: Settings, session: Session, user: CurrentUser, study_uid: str, source: str | None, take_over: bool
) -> Claim:
    """Claim a study for a radiologist (renewing their claim, or taking another's when ``take_over``).

    Raises
    ------
    fastapi.HTTPException
        403 for anyone but a radiologist; 404 for a study the user may not see; 409 when another radiologist
        reads it and ``take_over`` is false.
    """
    _require_reader(user)
    study = study_for(session, user, study_uid)
    now = utcnow()
    before = current_claim(session, study.id, now=now)
    try:
        claim = claim_study(session, study.id, user.id, minutes=settings.claim_minutes, now=now, take_over=take_over)
    except StudyClaimed as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, exc.describe(display_zone(settings.timezone))) from None
    if before is not None and not before.held_by(user.id):
        detail = {"from": before.username, "until": before.expires_at.isoformat()}
        add_event(
            session,
            actor=user.username,
            action="study.claim.take_over",
            object_type="study",
            object_id=study.study_uid,
            source=source,
            detail=detail,
        )
    return claim


def release(session: Session, user: CurrentUser, study_uid: str, source: str | None) -> bool:
    """Release the user's own claim on a study; return whether they held one.

    Raises
    ------
    fastapi.HTTPException
        403 for anyone but a radiologist; 404 for a study the user may not see.
    """
    _require_reader(user)
    study = study_for(session, user, study_uid)
    released = release_claim(session, study.id, user.id)
    if released:
        add_event(
            session,
            actor=user.username,
            action="study.claim.release",
            object_type="study",
            object_id=study.study_uid,
            source=source,
        )
    return released


def claims_router() -> APIRouter:
    """Build the JSON claim routes: ``POST`` and ``DELETE /api/studies/{uid}/claim``."""
    router = APIRouter(prefix="/api", tags=["review"])
    csrf = [Depends(require_csrf)]

    @router.post("/studies/{study_uid}/claim", summary="Claim a study to read it", dependencies=csrf)
    def claim(
        study_uid: StudyUid,
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: Reviewer,
        body: Annotated[ClaimRequest | None, Body()] = None,
    ) -> ClaimAnswer:
        """Claim or renew (radiologists); 409 naming the holder unless ``take_over``; 404 for other sites."""
        take_over = body.take_over if body is not None else False
        held = take(settings, session, user, study_uid, client_address(request), take_over)
        return ClaimAnswer.of(study_uid, held)

    @router.delete("/studies/{study_uid}/claim", summary="Release your claim", dependencies=csrf)
    def unclaim(study_uid: StudyUid, request: Request, session: DbSession, user: Reviewer) -> Released:
        """Release the user's own claim (another radiologist's claim stays); 404 for other sites."""
        return Released(study_uid=study_uid, released=release(session, user, study_uid, client_address(request)))

    return router


def _study_page(study_uid: str, reading_list: str | None) -> str:
    query = list_query(filters_from(reading_list))
    return f"/studies/{study_uid}" + (f"?{urlencode({'list': query})}" if query else "")


def claim_page_router() -> APIRouter:
    """Build the study page's claim forms: ``POST /studies/{uid}/claim`` (take over) and ``/release``."""
    router = APIRouter(route_class=PageRoute, tags=["review page"])
    csrf = [Depends(require_csrf)]

    @router.post("/studies/{study_uid}/claim", dependencies=csrf, summary="Take a study over from the page")
    def take_over(
        study_uid: StudyUid,
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: Reviewer,
        reading_list: Annotated[str | None, Form(alias="list", max_length=MAX_LIST_QUERY)] = None,
    ) -> Response:
        """Take the study over (radiologists) and go back to its page, in the worklist it came from."""
        take(settings, session, user, study_uid, client_address(request), take_over=True)
        return see_other(_study_page(study_uid, reading_list))

    @router.post("/studies/{study_uid}/release", dependencies=csrf, summary="Release a study from the page")
    def release_page(
        study_uid: StudyUid,
        request: Request,
        session: DbSession,
        user: Reviewer,
        reading_list: Annotated[str | None, Form(alias="list", max_length=MAX_LIST_QUERY)] = None,
    ) -> Response:
        """Release the user's claim and go back to the worklist the study was opened from."""
        release(session, user, study_uid, client_address(request))
        return see_other(worklist_url(filters_from(reading_list)))

    return router
