"""The administrator's pages for the configuration kept in the database: ``/admin/config`` and one page per kind.

Why: calling AEs, routing rules, destinations and the model list change while everything runs; an
administrator should change them in a form, see at once what the application refused and why, and see who
changed what.  Administrators only (403 for others, as on ``/admin/work``).  Every write goes through
:mod:`integration.app_config` (the value objects check it; each change is audited with its before and after
and bumps the generation the listener and the workers poll).

* ``GET /admin/config``: the kinds with their counts, the generation, the recent changes as differences.
* ``GET /admin/config/{section}`` (``calling-aes``, ``models``, ``rules``, ``destinations``; ``?edit=<name>``
  fills the form with an entry): the entries and a form.  A value object's simple fields are form fields, the
  rest a JSON box (:mod:`integration.web.pages.config_forms`); a destination is a JSON document.
* ``POST .../save``, ``POST .../delete`` (``name``), ``POST /admin/config/rules/move`` (``name``, ``direction``).

A refused document answers 422 with the page again, its message, and the form as it was typed; a change
goes back to the page (303) saying the new generation.  Prompt templates: :mod:`integration.web.pages.admin_prompts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration import app_config
from integration.app_config import ConfigRefused, ModelEntry
from integration.config import CallingAE
from integration.destinations import Destination
from integration.imaging.routing import RoutingRule
from integration.store import app_config as rows
from integration.store.audit import query_events
from integration.store.config_tables import ConfigEntry, ConfigKind
from integration.store.tables import Site
from integration.web.deps import DbSession, client_address
from integration.web.pages.admin_work import PageAdmin
from integration.web.pages.config_forms import (
    differences,
    document_from_form,
    form_fields,
    json_object,
    rest_json,
    simple_fields,
)
from integration.web.pages.templating import PageRoute, render
from integration.web.security.csrf import require_csrf

#: The overview's address.
PAGE = "/admin/config"
#: Recent changes shown on the overview.
RECENT_CHANGES = 50
#: Longest form value taken (a JSON document, a prompt's task).
MAX_FORM_VALUE = 20_000
#: What a page says after a change, by ``done`` (the generation is the only thing echoed).
DONE = {
    "saved": "Saved.",
    "deleted": "Deleted.",
    "moved": "Moved.",
    "retired": "Retired.",
    "unchanged": "Nothing changed.",
}
#: Simple fields shown one column each; a value object with more shows the fields it sets in one column.
MAX_COLUMNS = 5
#: Form fields that are never part of a document.
NOT_FIELDS = ("csrf_token", "name", "json", "editing")
#: Entry names (as the store keeps them).
Name = Annotated[str, Form(min_length=1, max_length=64)]


@dataclass(frozen=True)
class Section:
    """One page of entries of one kind.

    Attributes
    ----------
    slug : str
        The page's address under ``/admin/config/``.
    kind : ConfigKind
        What it edits.
    title : str
        The page's heading.
    model : type of BaseModel
        The value object that checks a document.
    name_label : str
        What the entry's name is called (``AE title``).
    json_only : bool
        The whole document is one JSON box (destinations), no form fields.
    movable : bool
        Entries are ordered and may be moved up and down (routing rules).
    """

    slug: str
    kind: ConfigKind
    title: str
    model: type[BaseModel]
    name_label: str = "Name"
    json_only: bool = False
    movable: bool = False


SECTIONS = {
    section.slug: section
    for section in (
        Section("calling-aes", ConfigKind.CALLING_AE, "Calling AEs", CallingAE, name_label="AE title"),
        Section("models", ConfigKind.MODEL, "Models", ModelEntry),
        Section("rules", ConfigKind.ROUTING_RULE, "Routing rules", RoutingRule, movable=True),
        Section("destinations", ConfigKind.DESTINATION, "Destinations", Destination, json_only=True),
    )
}


async def form_values(request: Request) -> dict[str, str]:
    """FastAPI dependency: a form post's text fields (the CSRF check has read the body already).

    Raises
    ------
    fastapi.HTTPException
        422 when a field is longer than :data:`MAX_FORM_VALUE` characters.
    """
    form = await request.form()
    values = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    too_long = sorted(key for key, value in values.items() if len(value) > MAX_FORM_VALUE)
    if too_long:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"{too_long[0]}: at most {MAX_FORM_VALUE} characters"
        )
    return values


#: The posted form's fields.
FormValues = Annotated[dict[str, str], Depends(form_values)]


def section_of(slug: str) -> Section:
    """Return the section at ``slug``.

    Raises
    ------
    fastapi.HTTPException
        404 for an unknown section.
    """
    section = SECTIONS.get(slug)
    if section is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such configuration page")
    return section


def done_message(query: dict[str, str]) -> str | None:
    """What a page says after a change (``done`` and the generation ``g`` of its redirect), or None."""
    text = DONE.get(query.get("done", ""))
    number = query.get("g", "")
    if text is None or not number.isdigit():
        return None
    return f"{text} Configuration generation {number}."


def back_to(path: str, session: Session, done: str) -> Response:
    """303 back to a page, saying what was done and the generation now (after this route's change)."""
    return RedirectResponse(
        f"{path}?done={done}&g={rows.generation(session)}",
        status_code=status.HTTP_303_SEE_OTHER,
        headers={"Cache-Control": "no-store"},
    )


def _sites(session: Session) -> list[tuple[str, str]]:
    return [
        (code, f"{code} ({name})") for code, name in session.execute(select(Site.code, Site.name).order_by(Site.code))
    ]


def _entry_row(section: Section, entry: ConfigEntry) -> dict[str, Any]:
    """An entry as the table shows it: each simple field's text, and the rest as JSON."""
    problem: str | None = None
    try:
        value: BaseModel | None = app_config.check(section.kind, entry.name, entry.document)
    except ConfigRefused as refused:  # kept before a value object's rule changed: shown, and editable
        value, problem = None, str(refused)
    fields = []
    if not section.json_only and value is not None:
        fields = form_fields(section.model, value.model_dump(), skip=("name",))
        if len(fields) > MAX_COLUMNS:  # a long value object: its set fields in one column
            set_fields = value.model_dump(exclude_defaults=True)
            fields = [field for field in fields if field.name in set_fields]
    rest = rest_json(section.model, value, skip=("name",)) if not section.json_only else ""
    document = json.dumps(entry.document, indent=2, sort_keys=True)
    return {"entry": entry, "fields": fields, "rest": rest, "document": document, "problem": problem}


def _section_page(
    request: Request,
    session: Session,
    section: Section,
    *,
    edit: str = "",
    typed: dict[str, str] | None = None,
    error: str | None = None,
    code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    entries = rows.list_entries(session, section.kind)
    editing = next((entry for entry in entries if entry.name == edit), None) if typed is None else None
    choices = {"site": _sites(session)} if section.kind is ConfigKind.CALLING_AE else {}
    if typed is not None:
        current: dict[str, Any] = typed
        json_text, name = typed.get("json", ""), typed.get("name", "")
    elif editing is not None:
        name = editing.name
        try:
            value: BaseModel | None = app_config.check(section.kind, editing.name, editing.document)
        except ConfigRefused as refused:  # kept before a value object's rule changed: its document to mend
            value, error = None, str(refused)
        current = dict(editing.document) if value is None else value.model_dump()
        if section.json_only:
            json_text = json.dumps(editing.document, indent=2, sort_keys=True)
        elif value is None:
            rest = {k: v for k, v in editing.document.items() if k not in simple_fields(section.model)}
            json_text = json.dumps(rest, indent=2, sort_keys=True) if rest else ""
        else:
            json_text = rest_json(section.model, value, skip=("name",))
    else:
        current, json_text, name = {}, "", ""
    fields = [] if section.json_only else form_fields(section.model, current, skip=("name",), choices=choices)
    columns = [] if section.json_only else form_fields(section.model, {}, skip=("name",))
    context = {
        "section": section,
        "sections": SECTIONS.values(),
        "rows": [_entry_row(section, entry) for entry in entries],
        "columns": columns if len(columns) <= MAX_COLUMNS else [],
        "has_rest": section.json_only
        or bool(set(section.model.model_fields) - set(simple_fields(section.model)) - {"name"}),
        "fields": fields,
        "json_text": json_text,
        "name": name,
        "editing": editing is not None or bool(typed and typed.get("editing")),
        "generation": rows.generation(session),
        "error": error,
        "message": None if error else done_message(dict(request.query_params)),
    }
    return render(request, "admin_config_section.html", context, status_code=code)


def _overview(request: Request, session: Session) -> HTMLResponse:
    counts = [(section, len(rows.list_entries(session, section.kind))) for section in SECTIONS.values()]
    changes = [
        (event, differences((event.detail or {}).get("before"), (event.detail or {}).get("after")))
        for event in query_events(session, action="config.", limit=RECENT_CHANGES)
    ]
    context = {
        "counts": counts,
        "prompts": len(rows.current_prompts(session)),
        "generation": rows.generation(session),
        "changes": changes,
    }
    return render(request, "admin_config.html", context)


def _move(session: Session, section: Section, name: str, direction: str, actor: str, source: str | None) -> bool:
    """Move a rule one place up or down; False when it is at that end already.

    One audited change: the store puts an entry given a position another entry holds before that entry
    (up: the position of the rule above; down: just after the rule below).

    Raises
    ------
    fastapi.HTTPException
        404 for an unknown entry.
    """
    entries = rows.list_entries(session, section.kind)
    at = next((index for index, entry in enumerate(entries) if entry.name == name), None)
    if at is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such entry")
    to = at - 1 if direction == "up" else at + 1
    if not 0 <= to < len(entries):
        return False
    entry = entries[at]
    position = entries[to].position if direction == "up" else entries[to].position + 1
    app_config.save(session, section.kind, name, entry.document, actor=actor, position=position, source=source)
    return True


def admin_config_router() -> APIRouter:
    """Build the configuration pages' routes (prompt templates are :func:`admin_prompts_router`'s).

    Returns
    -------
    fastapi.APIRouter
        The overview, and each section's page, save, delete and (rules) move.
    """
    router = APIRouter(route_class=PageRoute, tags=["configuration pages"])
    csrf = [Depends(require_csrf)]

    @router.get(PAGE, response_class=HTMLResponse, summary="Configuration: kinds, generation, recent changes")
    def overview(request: Request, session: DbSession, user: PageAdmin) -> HTMLResponse:
        """The kinds with their counts, the generation, and the recent changes with their differences."""
        return _overview(request, session)

    @router.get(PAGE + "/{slug}", response_class=HTMLResponse, summary="Configuration entries of one kind")
    def section_page(
        slug: str,
        request: Request,
        session: DbSession,
        user: PageAdmin,
        edit: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        """The entries of one kind and the form to add one (or edit ``edit``)."""
        return _section_page(request, session, section_of(slug), edit=edit)

    @router.post(PAGE + "/{slug}/save", summary="Save a configuration entry", dependencies=csrf)
    def save(slug: str, request: Request, session: DbSession, user: PageAdmin, form: FormValues) -> Response:
        """Check and keep the form's entry, then back to the page (303); a refusal is the page again (422)."""
        section = section_of(slug)
        name = form.get("name", "").strip()
        try:
            if not name or len(name) > 64:
                raise ConfigRefused(f"{section.name_label}: 1 to 64 characters")
            if not form.get("editing") and rows.get_entry(session, section.kind, name) is not None:
                raise ConfigRefused(f"{section.name_label} {name!r} exists already: edit it in its row")
            if section.json_only:
                document = json_object(form.get("json", ""))
                document.pop("name", None)
            else:
                extra = {k: v for k, v in form.items() if k not in NOT_FIELDS}
                document = document_from_form(section.model, extra, form.get("json", ""), skip=("name",))
            app_config.save(session, section.kind, name, document, actor=user.username, source=client_address(request))
        except ConfigRefused as refused:
            code = status.HTTP_422_UNPROCESSABLE_CONTENT
            return _section_page(request, session, section, typed=form, error=str(refused), code=code)
        return back_to(f"{PAGE}/{section.slug}", session, "saved")

    @router.post(PAGE + "/{slug}/delete", summary="Delete a configuration entry", dependencies=csrf)
    def delete(slug: str, request: Request, session: DbSession, user: PageAdmin, name: Name) -> Response:
        """Delete the named entry, then back to the page (303); 404 when there is none, 422 when a rule needs it."""
        section = section_of(slug)
        try:
            source = client_address(request)
            removed = app_config.remove(session, section.kind, name, actor=user.username, source=source)
        except ConfigRefused as refused:  # a model a routing rule names
            code = status.HTTP_422_UNPROCESSABLE_CONTENT
            return _section_page(request, session, section, error=str(refused), code=code)
        if not removed:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such entry")
        return back_to(f"{PAGE}/{section.slug}", session, "deleted")

    @router.post(PAGE + "/rules/move", summary="Move a routing rule up or down", dependencies=csrf)
    def move(
        request: Request,
        session: DbSession,
        user: PageAdmin,
        name: Name,
        direction: Annotated[str, Form(pattern="^(up|down)$")],
    ) -> Response:
        """Swap the rule with the one above or below it, then back to the rules (303)."""
        moved = _move(session, SECTIONS["rules"], name, direction, user.username, client_address(request))
        return back_to(f"{PAGE}/rules", session, "moved" if moved else "unchanged")

    return router
