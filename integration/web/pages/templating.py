"""Server-rendered HTML for the review app: one Jinja2 environment, strict security headers.

Every template is autoescaped (model output and patient data are untrusted text).  Pages run no inline
scripts: JavaScript lives in ``integration/web/pages/static/*.js`` and the Content-Security-Policy allows only
same-origin scripts, styles and images.  Responses are never cached (they carry patient data).

Times are shown in the hospital's zone (``timezone``, an IANA name; unset: the server's local zone) with the
zone's abbreviation beside them (``2026-12-05 14:03 CET``), so nobody reads a UTC time as local; the
``datetime`` attribute of ``<time>`` elements stays ISO 8601 in UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context

from integration.web.security.csrf import csrf_token
from integration.web.security.refusals import audit_http_refusal

#: Folder of the page templates.
TEMPLATE_DIR = Path(__file__).parent / "templates"
#: Folder served at ``/static``.
STATIC_DIR = Path(__file__).parent / "static"

#: Only same-origin resources; no inline script or style, no framing, forms post only to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

#: Headers every page carries.
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    """Return the template environment (built once, on first use).

    Returns
    -------
    jinja2.Environment
        Autoescaping for every template, whatever its name.
    """
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(enabled_extensions=(), default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["person"] = person_name
    env.filters["dicom_date"] = dicom_date
    env.filters["when"] = _when_in_zone
    return env


def display_zone(name: str | None) -> tzinfo | None:
    """Return the zone times are shown in: the IANA zone ``name``, or None for the server's local zone.

    Parameters
    ----------
    name : str or None
        The ``timezone`` setting (validated at start-up).

    Returns
    -------
    datetime.tzinfo or None
        The zone.
    """
    return _zone(name) if name else None


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@pass_context
def _when_in_zone(context: Context, value: object, part: Literal["datetime", "time"] = "datetime") -> str:
    """The ``when`` filter: :func:`when` in the zone of the settings of the page's application."""
    request = context.get("request")
    settings = getattr(getattr(getattr(request, "app", None), "state", None), "settings", None)
    return when(value, display_zone(getattr(settings, "timezone", None)), part)


def person_name(value: object) -> str:
    """Show a DICOM person name (``Family^Given^Middle^Prefix^Suffix``) as ``Family, Given Middle``.

    Parameters
    ----------
    value : object
        The stored name (None or empty gives an empty string).

    Returns
    -------
    str
        The readable name (escaped by the template like any other text).
    """
    if not value:
        return ""
    alphabetic = str(value).split("=")[0]
    family, _, rest = alphabetic.partition("^")
    given = " ".join(part for part in rest.split("^")[:2] if part)
    return f"{family}, {given}" if family and given else family or given


def dicom_date(value: object) -> str:
    """Show a DICOM date (``YYYYMMDD``) as ``YYYY-MM-DD``; anything else as it is.

    Parameters
    ----------
    value : object
        The stored date.

    Returns
    -------
    str
        The readable date.
    """
    text = "" if value is None else str(value)
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def when(value: object, zone: tzinfo | None = None, part: Literal["datetime", "time"] = "datetime") -> str:
    """Show a moment as ``YYYY-MM-DD HH:MM <zone>`` (or ``HH:MM <zone>``) in a zone, its abbreviation beside it.

    Parameters
    ----------
    value : datetime or str
        A datetime or an ISO 8601 string; one without a zone is read as UTC (the store writes UTC).
    zone : datetime.tzinfo or None
        The zone to show it in; None: the server's local zone.
    part : {"datetime", "time"}
        The date and the time, or the time only.

    Returns
    -------
    str
        The readable time, e.g. ``2026-12-05 14:03 CET``.

    Raises
    ------
    ValueError
        ``value`` is a string that is not an ISO 8601 time.
    """
    if value is None or value == "":
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(zone) if zone is not None else moment.astimezone()
    return local.strftime("%H:%M %Z" if part == "time" else "%Y-%m-%d %H:%M %Z")


def render(request: Request, template_name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """Render a page.

    The context gets ``request``, ``user`` (the signed-in :class:`~integration.web.deps.CurrentUser` a page
    dependency left in ``request.state.user``, or None) and ``csrf_token`` (for the hidden ``csrf_token`` field
    of every form and the ``csrf-token`` meta tag) unless the caller gave them.

    Parameters
    ----------
    request : fastapi.Request
        The request.
    template_name : str
        File name under ``integration/web/pages/templates``, e.g. ``"worklist.html"``.
    context : dict
        Template variables.
    status_code : int, optional
        HTTP status, 200 by default.

    Returns
    -------
    fastapi.responses.HTMLResponse
        The page with ``Cache-Control: no-store``, the Content-Security-Policy and ``nosniff``.
    """
    values: dict[str, Any] = {
        "request": request,
        "user": getattr(request.state, "user", None),
        "csrf_token": csrf_token(request) or "",
    }
    values.update(context)
    html = environment().get_template(template_name).render(values)
    return HTMLResponse(html, status_code=status_code, headers=dict(PAGE_HEADERS))


def error_page(
    request: Request, status_code: int, message: str, *, back: str | None = None, unsaved: str | None = None
) -> HTMLResponse:
    """Render the error page.

    Parameters
    ----------
    request : fastapi.Request
        The request.
    status_code : int
        HTTP status (404, 409, 422 ...).
    message : str
        What went wrong, safe to show (it is escaped).
    back : str, optional
        A local URL to go back to (the study, say).
    unsaved : str, optional
        Text the user sent that was not saved (shown so it can be copied, not lost).

    Returns
    -------
    fastapi.responses.HTMLResponse
        The page.
    """
    context = {"status_code": status_code, "message": message, "back": back, "unsaved": unsaved}
    return render(request, "error.html", context, status_code=status_code)


def local_path(value: str | None, default: str = "/worklist") -> str:
    """Return ``value`` when it is a path on this site (``/...``, not ``//host``), else ``default``.

    Parameters
    ----------
    value : str or None
        A candidate redirect target (from a query parameter or form).
    default : str
        The fallback.

    Returns
    -------
    str
        A safe local path.
    """
    if value is None or not value.startswith("/") or value.startswith("//") or len(value) > 2000:
        return default
    if any(not ch.isprintable() or ch.isspace() or ch == "\\" for ch in value):
        return default
    return value


def sign_in_redirect(request: Request) -> RedirectResponse:
    """Send a browser without a (live) session to the sign-in form, coming back here afterwards (GET only).

    Parameters
    ----------
    request : fastapi.Request
        The request.

    Returns
    -------
    fastapi.responses.RedirectResponse
        303 to ``/login``.
    """
    target = "/login"
    if request.method == "GET":
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target += "?next=" + quote(local_path(here), safe="")
    return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})


def validation_message(exc: RequestValidationError) -> str:
    """Describe invalid request parameters: each parameter's name and what is wrong, never the value sent.

    Parameters
    ----------
    exc : fastapi.exceptions.RequestValidationError
        The error.

    Returns
    -------
    str
        One line per problem.
    """
    lines = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path", "form")]
        name = ".".join(location) or "request"
        lines.append(f"{name}: {error.get('msg', 'invalid')}")
    return "; ".join(lines) or "invalid request"


#: Form fields whose text a refused request shows back, so that nothing typed is lost (never a password).
UNSAVED_FIELDS = ("text", "reason")


async def unsaved_text(request: Request) -> str | None:
    """Return the free text a refused form post carried (fields :data:`UNSAVED_FIELDS`), or None.

    Parameters
    ----------
    request : fastapi.Request
        The request.

    Returns
    -------
    str or None
        The text, to show on the error page.
    """
    if request.method in ("GET", "HEAD"):
        return None
    if not request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        return None
    try:
        form = await request.form()
    except Exception:  # an unreadable body has no text to give back
        return None
    texts = [value for name in UNSAVED_FIELDS if isinstance(value := form.get(name), str) and value.strip()]
    return "\n\n".join(texts) or None


class PageRoute(APIRoute):
    """A route that answers errors as pages: no session redirects to ``/login``, others render ``error.html``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap the handler so that HTTP and validation errors become HTML pages.

        Returns
        -------
        callable
            The wrapped handler.
        """
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                audit_http_refusal(request, exc)
                if exc.status_code == status.HTTP_401_UNAUTHORIZED and request.method == "GET":
                    return sign_in_redirect(request)
                unsaved = await unsaved_text(request)
                if exc.status_code == status.HTTP_401_UNAUTHORIZED:
                    message = "Your session has ended: sign in again, then reload the page and send your change again."
                    return error_page(request, exc.status_code, message, back="/login", unsaved=unsaved)
                page = error_page(request, exc.status_code, str(exc.detail), unsaved=unsaved)
                for name, value in (exc.headers or {}).items():
                    page.headers[name] = value
                return page
            except RequestValidationError as exc:
                return error_page(request, status.HTTP_422_UNPROCESSABLE_CONTENT, validation_message(exc))

        return page_handler
