"""The prompt templates page ``/admin/config/prompts``: current versions, a new version, the history, retire.

Why: a prompt's wording changes what every draft says, so it is never overwritten: saving makes the next
version (:func:`integration.app_config.save_prompt`, audited with before and after), a draft names the
``name/vN`` it used, and every version stays readable here with who wrote it and when.  A retired template
is no longer chosen; its versions stay.  Administrators only; the forms carry the CSRF token.

* ``GET /admin/config/prompts`` (``?edit=<name>`` fills the form, ``?history=<name>`` lists its versions).
* ``POST /admin/config/prompts/save`` ``name``, ``modality``, ``body_parts`` (comma-separated), ``task``.
* ``POST /admin/config/prompts/retire`` ``name``: its next version, retired.

A refused field answers 422 with the page, its message and the form as typed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from integration import app_config
from integration.app_config import ConfigRefused
from integration.store import app_config as rows
from integration.store.config_tables import PromptTemplateRow
from integration.web.deps import DbSession, client_address
from integration.web.pages.admin_config import PAGE, SECTIONS, FormValues, Name, back_to, done_message
from integration.web.pages.admin_work import PageAdmin
from integration.web.pages.templating import PageRoute, render
from integration.web.security.csrf import require_csrf

#: The page's address.
PROMPTS = PAGE + "/prompts"
#: Names in the URL.
NameQuery = Annotated[str, Query(max_length=64)]


def _typed(template: PromptTemplateRow) -> dict[str, str]:
    """A version as the form shows it."""
    parts = ", ".join(template.body_parts)
    return {"name": template.name, "modality": template.modality or "", "body_parts": parts, "task": template.task}


def _page(
    request: Request,
    session: Session,
    *,
    edit: str = "",
    history: str = "",
    typed: dict[str, str] | None = None,
    error: str | None = None,
    code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    current = rows.current_prompts(session, retired=True)
    editing = next((template for template in current if template.name == edit), None)
    form: dict[str, Any] = typed if typed is not None else (_typed(editing) if editing is not None else {})
    context = {
        "sections": SECTIONS.values(),
        "templates": current,
        "form": form,
        "editing": bool(form.get("name")) and (editing is not None or bool(form.get("editing"))),
        "history_name": history,
        "history": rows.prompt_history(session, history) if history else [],
        "generation": rows.generation(session),
        "error": error,
        "message": None if error else done_message(dict(request.query_params)),
    }
    return render(request, "admin_prompts.html", context, status_code=code)


def admin_prompts_router() -> APIRouter:
    """Build the prompt templates page's routes.

    Returns
    -------
    fastapi.APIRouter
        The page, save (a new version) and retire.
    """
    router = APIRouter(route_class=PageRoute, tags=["configuration pages"])
    csrf = [Depends(require_csrf)]

    @router.get(PROMPTS, response_class=HTMLResponse, summary="Prompt templates: versions and history")
    def prompts_page(
        request: Request, session: DbSession, user: PageAdmin, edit: NameQuery = "", history: NameQuery = ""
    ) -> HTMLResponse:
        """The current version of each template, the form, and one template's history."""
        return _page(request, session, edit=edit, history=history)

    @router.post(PROMPTS + "/save", summary="Save a prompt template's next version", dependencies=csrf)
    def save(request: Request, session: DbSession, user: PageAdmin, form: FormValues) -> Response:
        """Keep the form's wording as the template's next version, then back to the page (303); 422 if refused."""
        name = form.get("name", "").strip()
        fields = {
            "modality": form.get("modality", "").strip().upper() or None,
            "body_parts": [part.strip().upper() for part in form.get("body_parts", "").split(",") if part.strip()],
            "task": form.get("task", "").strip(),
        }
        before = rows.prompt_history(session, name)[:1] if name else []
        try:
            app_config.save_prompt(session, name, fields, actor=user.username, source=client_address(request))
        except ConfigRefused as refused:
            code = status.HTTP_422_UNPROCESSABLE_CONTENT
            return _page(request, session, typed=form, error=str(refused), code=code)
        now = rows.prompt_history(session, name)[:1]
        done = "saved" if [row.id for row in now] != [row.id for row in before] else "unchanged"
        return back_to(PROMPTS, session, done)

    @router.post(PROMPTS + "/retire", summary="Retire a prompt template", dependencies=csrf)
    def retire(request: Request, session: DbSession, user: PageAdmin, name: Name) -> Response:
        """Save the template's next version as retired (no longer chosen), then back to the page (303)."""
        history = rows.prompt_history(session, name)
        if not history:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such prompt template")
        current = history[0]
        fields = {"modality": current.modality, "body_parts": list(current.body_parts), "task": current.task}
        try:
            app_config.save_prompt(
                session, name, fields, actor=user.username, retired=True, source=client_address(request)
            )
        except ConfigRefused as refused:  # a version kept before today's rules: mend it with the form first
            return _page(request, session, edit=name, error=str(refused), code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        return back_to(PROMPTS, session, "retired")

    return router
