"""Critical-finding alerts on the web: the list, acknowledging one, and the study page's banner.

JSON (radiologists and administrators; object-level 404 for other sites' alerts, as for studies):

* ``GET /api/alerts?state=open``: the alerts the user may see, newest first (``state``: ``open`` by default,
  ``acknowledged``, ``closed`` or ``all``), each with its notifications (contact, channel, level, state,
  attempts); no patient data.
* ``POST /api/alerts/{id}/acknowledge``: records who (the signed-in user) and when, audited
  (``alert.acknowledged``); pending notifications are cancelled and escalation stops.  Acknowledging again
  answers the first acknowledgement unchanged; 409 for an alert closed without one.

Page: ``POST /studies/{uid}/alerts/{id}/acknowledge`` (the banner's button; CSRF form field) acknowledges
and goes back to the study page (303).  The banner (``alert_banner.html``, included by the study page) lists
the study's alerts from :func:`study_alerts`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import RedirectResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.store.alert_tables import AlertState, CriticalAlert
from integration.store.alerts import AlertClosed, acknowledge_alert, alert_as_json, alerts_query, notifications_of
from integration.store.tables import utcnow
from integration.web.deps import CurrentUser, DbSession, PageReviewer, Reviewer, StudyUid, client_address
from integration.web.pages.templating import PageRoute
from integration.web.security.access import visible
from integration.web.security.csrf import require_csrf
from integration.web.security.refusals import CrossSiteRefused

#: Most alerts one ``GET /api/alerts`` answers.
MAX_ALERTS = 500

AlertId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The alert's id")]


def alert_for(session: Session, user: CurrentUser, alert_id: int) -> tuple[CriticalAlert, str, str | None]:
    """Return an alert with its study's UID and site code when the user may see its study.

    Raises
    ------
    fastapi.HTTPException
        404 when it does not exist or its study belongs to another site (then a :class:`CrossSiteRefused`).
    """
    row = session.execute(visible(alerts_query().where(CriticalAlert.id == alert_id), user)).one_or_none()
    if row is None:
        if session.scalar(select(CriticalAlert.id).where(CriticalAlert.id == alert_id)) is not None:
            raise CrossSiteRefused("no such alert", "alert", str(alert_id))
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such alert")
    alert, study_uid, site = row
    return alert, study_uid, site


def _with_notifications(session: Session, rows: list[tuple[CriticalAlert, str, str | None]]) -> list[dict[str, Any]]:
    notified = notifications_of(session, [alert.id for alert, _, _ in rows])
    answer = []
    for alert, study_uid, site in rows:
        entry = alert_as_json(alert, study_uid, site)
        entry["notifications"] = [
            {
                "id": n.id,
                "contact": n.contact,
                "channel": n.channel,
                "level": n.level,
                "state": n.state.value,
                "attempts": n.attempts,
                "sent_at": n.sent_at.isoformat() if n.sent_at else None,
            }
            for n in notified.get(alert.id, ())
        ]
        answer.append(entry)
    return answer


class AlertNotificationView(BaseModel):
    """One notification of an alert: to whom, how, and where it stands."""

    id: int
    contact: str
    channel: str
    level: int
    state: str
    attempts: int
    sent_at: str | None


class AlertView(BaseModel):
    """A critical-finding alert as the API shows it (no patient data)."""

    id: int
    report_id: int
    study_uid: str
    site: str | None
    codes: list[str]
    labels: list[str]
    state: str
    level: int
    raised_at: str
    due_at: str | None
    acknowledged_by: str | None
    acknowledged_at: str | None
    closed_reason: str | None
    notifications: list[AlertNotificationView]


def study_alerts(session: Session, study_id: int) -> list[dict[str, Any]]:
    """Return a study's alerts for its page's banner (the caller checked the user may see the study), open first."""
    rows = [
        (alert, uid, site)
        for alert, uid, site in session.execute(alerts_query().where(CriticalAlert.study_id == study_id).limit(20))
    ]
    rows.sort(key=lambda row: row[0].state != AlertState.OPEN)
    return _with_notifications(session, rows)


def acknowledge(session: Session, user: CurrentUser, alert_id: int, source: str | None, via: str) -> dict[str, Any]:
    """Acknowledge an alert the user may see, as the user; return it.

    Raises
    ------
    fastapi.HTTPException
        404 (no such alert, or another site's), 409 (closed without an acknowledgement).
    """
    alert, study_uid, site = alert_for(session, user, alert_id)
    try:
        done = acknowledge_alert(session, alert.id, user.username, utcnow(), source=source, via=via)
    except AlertClosed as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    assert done is not None  # alert_for found it, and alerts are never deleted but with their study
    return _with_notifications(session, [(done.alert, study_uid, site)])[0]


def alerts_router() -> APIRouter:
    """Build the alert routes: the JSON API and the study page's acknowledge form.

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    router = APIRouter(tags=["critical alerts"])
    csrf = [Depends(require_csrf)]

    @router.get("/api/alerts", summary="Critical-finding alerts", response_model=list[AlertView])
    def list_alerts(
        session: DbSession,
        user: Reviewer,
        state: Annotated[Literal["open", "acknowledged", "closed", "all"], Query()] = "open",
    ) -> list[dict[str, Any]]:
        """The alerts of the studies the user may see, newest first, with their notifications."""
        query = alerts_query(None if state == "all" else AlertState(state))
        rows = [(alert, uid, site) for alert, uid, site in session.execute(visible(query, user).limit(MAX_ALERTS))]
        return _with_notifications(session, rows)

    @router.post(
        "/api/alerts/{alert_id}/acknowledge",
        summary="Acknowledge a critical-finding alert",
        dependencies=csrf,
        responses={404: {}, 409: {"description": "closed without an acknowledgement"}},
        response_model=AlertView,
    )
    def acknowledge_api(alert_id: AlertId, request: Request, session: DbSession, user: Reviewer) -> dict[str, Any]:
        """Record that the signed-in user acknowledged the alert (who and when; audited); idempotent."""
        return acknowledge(session, user, alert_id, client_address(request), "api")

    pages = APIRouter(route_class=PageRoute, tags=["review page"])

    @pages.post(
        "/studies/{study_uid}/alerts/{alert_id}/acknowledge",
        summary="Acknowledge a critical-finding alert from the study page",
        dependencies=csrf,
    )
    def acknowledge_page(
        study_uid: StudyUid, alert_id: AlertId, request: Request, session: DbSession, user: PageReviewer
    ) -> RedirectResponse:
        """Acknowledge and go back to the study page (303)."""
        _, alert_study, _ = alert_for(session, user, alert_id)
        if alert_study != study_uid:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such alert of this study")
        acknowledge(session, user, alert_id, client_address(request), "page")
        return RedirectResponse(
            f"/studies/{study_uid}#critical-alerts",
            status_code=status.HTTP_303_SEE_OTHER,
            headers={"Cache-Control": "no-store"},
        )

    router.include_router(pages)
    return router
