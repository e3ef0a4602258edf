"""The operations page ``GET /admin/work``: failed studies, jobs by state, dead-letter deliveries, and their fixes.

Why: an administrator should not need a shell to see what failed and to try again once the cause is fixed
(the worker restarted, a destination back).  Administrators only (403 for others).  The filters (job
``state``, ``site`` code, ``since`` a date in the hospital's zone, ``limit``) live in the URL, so a reload or
a bookmark shows the same lists.

Buttons (CSRF; Post/Redirect/Get back to the same filters, with a fixed message chosen by ``done``):

* ``POST /admin/work/studies/{uid}/retry``: the failed study's analysis again (audited ``study.retry``).
* ``POST /admin/work/studies/{uid}/reanalyze`` ``model``, ``prompt``, ``stat``: a failed study's primary
  analysis again with that choice (``study.reanalyze``); another study gets a second opinion
  (``opinion.requested``).
* ``POST /admin/work/deliveries/{id}/retry``: a dead letter pending again (``delivery.retry``).

A refusal (not failed any more, an unknown model, the same model and prompt already queued) shows the page
again with its sentence (409; 404 for an unknown study).  The actions are :mod:`integration.failed_work`'s,
the same as the command line's.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.failed_work import NoSuchStudy, WorkRefused, reanalyze_study, retry_dead_letters, retry_study
from integration.live_config import live_settings, prompt_names
from integration.store.deliveries import list_deliveries
from integration.store.tables import DeliveryState, JobState, UserRole
from integration.store.work import WorkFilter, failed_studies, list_jobs, skipped_studies
from integration.web.deps import AppSettings, CurrentUser, DbSession, StudyUid, client_address, require_roles
from integration.web.pages.templating import PageRoute, display_zone, render
from integration.web.security.csrf import require_csrf

#: Administrators only; a :class:`PageRoute` shows others a 403 page.
PageAdmin = Annotated[CurrentUser, Depends(require_roles(UserRole.ADMIN, refusal="this page is for administrators"))]
#: The filters a button's form carries back to the page.
Back = Annotated[str, Form(max_length=1000)]
#: The page's address.
PAGE = "/admin/work"
#: The filters kept in the URL (and carried through a button's Post/Redirect/Get).
FILTERS = ("state", "site", "since", "limit")
#: What the page says after an action, by ``done`` (only these; nothing is echoed but a job or delivery id).
DONE = {
    "retried": "Analysis queued again as job {n}.",
    "reanalyzed": "Primary analysis queued again as job {n}.",
    "opinion": "Second opinion queued as job {n}.",
    "delivery": "Dead letter {n} queued for delivery again.",
}
#: Said when the broker did not take the message.
NOT_SENT = " The broker is away: it is sent once it is back."
#: Rows per list at most.
MAX_ROWS = 500
#: The job state filter's value for every state.
ANY = "any"


def _filters(settings: Settings, state: str, site: str, since: str, limit: int) -> tuple[JobState | None, WorkFilter]:
    """Read the URL's filters.

    Raises
    ------
    fastapi.HTTPException
        422 naming the bad filter.
    """
    try:
        wanted = JobState(state) if state and state != ANY else None
    except ValueError:
        choices = ", ".join(s.value for s in JobState)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"state: use {ANY} or one of {choices}") from None
    moment = None
    if since:
        try:
            day = date.fromisoformat(since)
        except ValueError:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since: a date such as 2026-05-01") from None
        zone = display_zone(settings.timezone)
        moment = datetime.combine(day, time(), tzinfo=zone) if zone else datetime.combine(day, time()).astimezone()
    return wanted, WorkFilter(site or None, moment, limit)


def _page(
    request: Request,
    settings: Settings,
    session: Session,
    query: dict[str, str],
    *,
    error: str | None = None,
    code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    given = query.get("limit", "")
    limit = int(given) if given.isdigit() and 1 <= int(given) <= MAX_ROWS else 50
    wanted, where = _filters(settings, query.get("state", ""), query.get("site", ""), query.get("since", ""), limit)
    context: dict[str, Any] = {
        "failed": failed_studies(session, where),
        "skipped": skipped_studies(session, where),  # not errors: a routing rule said skip
        "jobs": list_jobs(session, wanted, where),
        "dead_letters": list_deliveries(session, DeliveryState.DEAD_LETTER, where.limit),
        "job_states": [s.value for s in JobState],
        "models": sorted(live_settings(settings).models),
        "prompts": prompt_names(settings),
        "filters": {name: query.get(name, "") for name in FILTERS},
        "back": urlencode({name: query[name] for name in FILTERS if query.get(name)}),
        "error": error,
        "message": _message(query),
    }
    return render(request, "admin_work.html", context, status_code=code)


def _message(query: dict[str, str]) -> str | None:
    template = DONE.get(query.get("done", ""))
    number = query.get("n", "")
    if template is None or not number.isdigit():
        return None
    return template.format(n=number) + ("" if query.get("sent") != "0" else NOT_SENT)


def _kept(back: str) -> dict[str, str]:
    """The filters a button's form carried back (only :data:`FILTERS`, each short)."""
    return {name: value[:64] for name, value in parse_qsl(back[:1000]) if name in FILTERS}


def _redirect(back: str, done: str, number: int, sent: bool) -> Response:
    query = urlencode({**_kept(back), "done": done, "n": number, **({} if sent else {"sent": 0})})
    return RedirectResponse(
        f"{PAGE}?{query}", status_code=status.HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"}
    )


def _refused(request: Request, settings: Settings, session: Session, back: str, exc: WorkRefused) -> HTMLResponse:
    code = status.HTTP_404_NOT_FOUND if isinstance(exc, NoSuchStudy) else status.HTTP_409_CONFLICT
    return _page(request, settings, session, _kept(back), error=str(exc), code=code)


def admin_work_router() -> APIRouter:
    """Build the operations page's routes.

    Returns
    -------
    fastapi.APIRouter
        ``GET /admin/work`` and its three buttons.
    """
    router = APIRouter(route_class=PageRoute, tags=["operations page"])
    csrf = [Depends(require_csrf)]

    @router.get(PAGE, response_class=HTMLResponse, summary="Operations page: failed work")
    def work_page(
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: PageAdmin,
        state: Annotated[str, Query(max_length=16)] = "failed",
        site: Annotated[str, Query(max_length=16)] = "",
        since: Annotated[str, Query(max_length=32)] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 50,
    ) -> HTMLResponse:
        """Failed studies, jobs in a state and dead-letter deliveries, with the buttons that fix them."""
        query = {"state": state, "site": site, "since": since, "limit": str(limit)}
        query |= {name: value[:16] for name, value in request.query_params.items() if name in ("done", "n", "sent")}
        return _page(request, settings, session, query)

    @router.post(PAGE + "/studies/{study_uid}/retry", summary="Retry a failed analysis", dependencies=csrf)
    def retry(
        study_uid: StudyUid,
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: PageAdmin,
        back: Back = "",
    ) -> Response:
        """Queue the failed study's analysis again, then back to the page (303)."""
        try:
            queued = retry_study(settings, study_uid, actor=user.username, source=client_address(request))
        except WorkRefused as exc:
            return _refused(request, settings, session, back, exc)
        return _redirect(back, "retried", queued.job_id, queued.sent)

    @router.post(PAGE + "/studies/{study_uid}/reanalyze", summary="Re-analyse a study", dependencies=csrf)
    def reanalyze(
        study_uid: StudyUid,
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: PageAdmin,
        model: Annotated[str, Form(max_length=64)] = "",
        prompt: Annotated[str, Form(max_length=64)] = "",
        stat: Annotated[str, Form(max_length=8)] = "",
        back: Back = "",
    ) -> Response:
        """Analyse the study again with the chosen model and prompt, then back to the page (303)."""
        try:
            queued = reanalyze_study(
                settings,
                study_uid,
                model=model or None,
                prompt=prompt or None,
                stat=bool(stat),
                actor=user.username,
                source=client_address(request),
            )
        except WorkRefused as exc:
            return _refused(request, settings, session, back, exc)
        done = "reanalyzed" if queued.purpose == "primary" else "opinion"
        return _redirect(back, done, queued.job_id, queued.sent)

    @router.post(PAGE + "/deliveries/{delivery_id}/retry", summary="Retry a dead letter", dependencies=csrf)
    def retry_delivery(
        delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: PageAdmin,
        back: Back = "",
    ) -> Response:
        """Make the dead letter pending again with fresh attempts and send it, then back to the page (303)."""
        try:
            _, sent = retry_dead_letters(settings, [delivery_id], actor=user.username, source=client_address(request))
        except WorkRefused as exc:
            return _refused(request, settings, session, back, exc)
        return _redirect(back, "delivery", delivery_id, sent)

    return router
