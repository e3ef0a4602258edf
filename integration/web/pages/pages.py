"""The review pages: server-rendered HTML with light JavaScript, usable without it.

* ``GET /`` goes to the worklist (or the sign-in form); ``GET``/``POST /login``, ``POST /logout``.
* ``GET /worklist`` (:mod:`integration.web.pages.worklist_page`).
* ``GET /studies/{uid}`` and the review forms under it (:mod:`integration.web.pages.study_page`).
* Frames as PNG (:mod:`integration.web.api.images`); static files under ``/static``.

Pages without a session redirect to the sign-in form.  Forms carry the CSRF token; state-changing routes
check it, the sign-in form included (its token is a random value in the form and in a cookie, since there is
no session yet: a cross-site page cannot sign a victim's browser in to the attacker's account).  Every
template is autoescaped: model output and patient data are shown as text.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from os import PathLike
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from integration.store.tables import UserRole
from integration.web.api.claims import claim_page_router
from integration.web.api.images import images_router
from integration.web.deps import CurrentUser, app_settings, current_user
from integration.web.pages.admin_config import admin_config_router
from integration.web.pages.admin_prompts import admin_prompts_router
from integration.web.pages.admin_work import admin_work_router
from integration.web.pages.reading import reading_router
from integration.web.pages.study_page import study_page_router
from integration.web.pages.templating import STATIC_DIR, PageRoute, local_path, render, sign_in_redirect
from integration.web.pages.worklist_page import worklist_page_router
from integration.web.security.auth import set_session_cookie, sign_in, sign_out
from integration.web.security.csrf import require_csrf
from integration.web.security.refusals import CsrfRefused
from integration.web.security.sso import provider_sign_out_page, provider_sign_out_url

#: The cookie holding the sign-in form's CSRF token (the form's hidden field must match it).
LOGIN_CSRF_COOKIE = "pacsvlm_login_csrf"
#: Where each role lands after signing in.
HOME = {UserRole.RADIOLOGIST: "/worklist", UserRole.ADMIN: "/worklist", UserRole.UPLOADER: "/upload"}


class StaticAssets(StaticFiles):
    """The pages' stylesheet and script: ``nosniff``, and revalidated (ETag) so a new release is picked up."""

    def file_response(
        self, full_path: PathLike[str] | str, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        """Serve a file with the extra headers.

        Parameters
        ----------
        full_path : path-like
            The file.
        stat_result : os.stat_result
            Its status.
        scope : starlette.types.Scope
            The request scope.
        status_code : int
            HTTP status.

        Returns
        -------
        starlette.responses.Response
            The file response.
        """
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"
        return response


def _signed_in(request: Request) -> CurrentUser | None:
    """Return the user of a live session, or None."""
    try:
        return current_user(request)
    except HTTPException:
        return None


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})


def pages_router() -> APIRouter:
    """Build the router of the review pages and their static files.

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    router = APIRouter(route_class=PageRoute, tags=["review page"])
    router.mount("/static", StaticAssets(directory=STATIC_DIR), name="static")

    @router.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        """The user's home page, or the sign-in form."""
        user = _signed_in(request)
        return _redirect(HOME[user.role]) if user else sign_in_redirect(request)

    @router.get("/login", response_class=HTMLResponse, summary="Sign-in form")
    def login_form(request: Request, next: str | None = None) -> Response:
        """The sign-in form (signed-in users go straight on)."""
        user = _signed_in(request)
        if user is not None:
            target = local_path(next, HOME[user.role])
            return _redirect(HOME[user.role] if target.startswith("/login") else target)
        return _login_page(request, {"next": local_path(next, ""), "message": None, "username": ""})

    @router.post("/login", response_class=HTMLResponse, summary="Sign in from the form")
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=256)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
        next: Annotated[str, Form(max_length=2000)] = "",
        csrf_token: Annotated[str, Form(max_length=128)] = "",
    ) -> Response:
        """Check the form's token, then the credentials (throttled and audited as ``POST /api/login``)."""
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(csrf_token.encode(), expected.encode()):
            raise CsrfRefused("the sign-in form has expired or came from another site; reload the page")
        if not username or not password:
            return _login_refused(request, status.HTTP_422_UNPROCESSABLE_CONTENT, "enter a username and password", next)
        try:
            token, user = sign_in(request, username, password)
        except HTTPException as exc:
            return _login_refused(request, exc.status_code, str(exc.detail), next, username, exc.headers)
        response = _redirect(local_path(next, HOME[user.role]))
        set_session_cookie(response, request, token)
        return response

    @router.post("/logout", summary="Sign out from the page", dependencies=[Depends(require_csrf)])
    def logout(request: Request) -> Response:
        """End the session and clear the cookie; then the sign-in form (or first the provider's sign-out)."""
        user = _signed_in(request)
        at_provider = provider_sign_out_url(request, user.id) if user is not None else None
        response: Response = _redirect("/login") if at_provider is None else provider_sign_out_page(at_provider)
        sign_out(request, response)
        return response

    router.include_router(worklist_page_router())
    router.include_router(reading_router())
    router.include_router(study_page_router())
    router.include_router(claim_page_router())
    router.include_router(images_router())
    router.include_router(admin_work_router())
    router.include_router(admin_prompts_router())  # before the configuration's /admin/config/{slug}
    router.include_router(admin_config_router())
    return router


def _login_page(request: Request, context: Mapping[str, object], status_code: int = status.HTTP_200_OK) -> HTMLResponse:
    """Render the sign-in form with a fresh CSRF token, also set as a cookie for the form's post to match.

    The token of a form sent before signing in cannot come from a session, so the form and a cookie carry
    the same random value (a cross-site page can make the browser post but can read neither).
    """
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    sso = app_settings(request).sso
    sso_name = sso.display_name if sso is not None else None
    page = render(
        request, "login.html", {**context, "login_csrf_token": token, "sso_name": sso_name}, status_code=status_code
    )
    page.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return page


def _login_refused(
    request: Request,
    status_code: int,
    message: str,
    next: str,
    username: str = "",
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Show the sign-in form again with one message (the username kept, never the password)."""
    context = {"next": local_path(next, ""), "message": message, "username": username[:256]}
    page = _login_page(request, context, status_code=status_code)
    for name, value in (headers or {}).items():
        page.headers[name] = value
    return page
