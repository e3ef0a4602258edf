"""The review page's one form: every text box travels with every button, so typed text is never lost.

The study page's editor is a single ``<form>`` posting to ``POST /studies/{uid}/reports/{id}/review``.
Whatever button was pressed (``do``: ``accept:N``, ``reject:N``, ``reset:N``, ``edit:N``, ``dismiss:<check key>``,
``add``, ``impression``, ``limitations``, ``comparison``, ``save``, ``sign`` or ``sign-next``), the text the
radiologist typed anywhere on the page (each finding's box ``text-N``, ``new_finding``, ``impression``,
``limitations``, ``comparison``) is saved first, as the review changes it amounts to; then the button's own
action runs.  Accepting finding 2 therefore keeps the impression typed a moment before, and signing signs what
is on the screen, not what was last saved.

Every change is one review action (:mod:`integration.web.api.review_actions`, the same as the JSON API's) against
the change number the page showed (``expected_seq``), so a draft someone else changed meanwhile answers 409
and shows the text that was not saved.  Signing goes through the same rules as the API (the report of record
only, reviewed or confirmed findings, radiologists only); "Sign and open next" (``sign-next``) signs exactly as
Sign does and then goes to the next study to read of the worklist the page was opened from
(:mod:`integration.web.pages.reading`).  That worklist travels as the form's hidden ``list`` field and stays in
every redirect back to the page.  The answers of every review form of the page (303 back to it, or a refusal
page) are built here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from integration.config import Settings
from integration.store.reviews import ReviewConflict, ReviewError, WorkingCopy, working_copy
from integration.store.session import session_scope
from integration.untrusted import clean_text
from integration.web.api import review_actions as actions
from integration.web.api.review_actions import Change
from integration.web.deps import AppSettings, CurrentUser, PageReviewer, StudyUid, client_address
from integration.web.pages.reading_list import filters_from, list_query
from integration.web.pages.templating import PageRoute, error_page
from integration.web.security.access import report_of_study
from integration.web.security.csrf import require_csrf

#: The buttons of the form: an action on one finding, or one of the whole-form actions.
_FINDING_BUTTON = re.compile(r"^(accept|reject|reset|edit):(\d{1,5})$")
#: The Dismiss button of a consistency check: ``dismiss:<finding>:<kind>`` (the check's key).
_DISMISS_BUTTON = re.compile(r"^dismiss:((\d{1,5}):[a-z]{1,16})$")
_FORM_BUTTONS = frozenset({"add", "impression", "limitations", "comparison", "save", "sign", "sign-next"})
#: The buttons that sign: Sign, and Sign and open next.
_SIGN_BUTTONS = frozenset({"sign", "sign-next"})
#: The boxes of whole sections of the report, each a review action of its own name.
_SECTIONS = ("impression", "limitations", "comparison")
#: Most fields the form may carry: a box per finding (at most 200), the other boxes and hidden fields.
MAX_FORM_FIELDS = 2 * 200 + 20


def study_url(
    study_uid: str,
    report_id: int | None = None,
    done: str | None = None,
    anchor: str = "",
    reading_list: str | None = None,
) -> str:
    """The study page's URL, showing ``report_id`` with the notice ``done`` (see ``study_page.NOTICES``).

    ``reading_list`` is the worklist the page was opened from (its ``list`` query, kept when not empty).
    """
    params: dict[str, Any] = {}
    if report_id is not None:
        params["report"] = report_id
    if done is not None:
        params["done"] = done
    if reading_list:
        params["list"] = reading_list
    return f"/studies/{study_uid}" + (f"?{urlencode(params)}" if params else "") + (f"#{anchor}" if anchor else "")


def next_url(reading_list: str, after_study_uid: str | None = None) -> str:
    """Return the URL of the next study to read (:mod:`integration.web.pages.reading`) after the study just left.

    ``reading_list`` is the worklist's ``list`` query (empty: the default worklist).
    """
    params = {"list": reading_list} if reading_list else {}
    if after_study_uid:
        params["after"] = after_study_uid
    return "/worklist/next" + (f"?{urlencode(params)}" if params else "")


def see_other(url: str) -> RedirectResponse:
    """Answer 303 to a local URL (Post/Redirect/Get), never cached."""
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})


def back_to_page(
    study_uid: str,
    report_id: int,
    action: str,
    finding: int | None,
    copy: WorkingCopy | None,
    reading_list: str | None = None,
) -> RedirectResponse:
    """Go back to the page with the notice of ``action``, at the part of the page it concerns (same worklist)."""
    if action == "add" and copy is not None:
        anchor = f"finding-{copy.findings[-1].index}" if copy.findings else "findings"
    elif action == "dismiss":
        anchor = f"finding-{finding}" if finding is not None else "draft-checks"
    elif finding is not None:
        anchor = f"finding-{finding}"
    elif action == "sign":
        anchor = "report"
    else:
        anchor = action if action in _SECTIONS else "findings"
    return see_other(study_url(study_uid, report_id, done=action, anchor=anchor, reading_list=reading_list))


def refusal_page(request: Request, exc: Exception, back: str, unsaved: str | None = None) -> HTMLResponse:
    """Answer a refused review action as a page that keeps the text not saved (409 and 422).

    Raises
    ------
    Exception
        ``exc`` itself when it is not a refusal (see :func:`integration.web.api.review_actions.refusal`).
    """
    code, message = actions.refusal(exc)
    if isinstance(exc, ReviewConflict):
        message = f"Someone else changed this draft while you were reading it ({exc}). Nothing of yours was saved."
    keep = unsaved if code in (status.HTTP_409_CONFLICT, status.HTTP_422_UNPROCESSABLE_CONTENT) else None
    return error_page(request, code, message, back=back, unsaved=keep)


def _differs(typed: str | None, current: str) -> bool:
    """Whether a box holds other text than the working copy (compared as the review domain stores it)."""
    return isinstance(typed, str) and clean_text(typed, limit=len(typed) + 1) != current


def typed_changes(copy: WorkingCopy, fields: Mapping[str, str]) -> list[Change]:
    """Return the changes of the text typed in the form's boxes that the working copy does not hold yet.

    Edits of findings (a box left empty is not an edit), the impression, the limitations, the comparison and a
    new finding, in that order.
    """
    changes = []
    for finding in copy.findings:
        typed = fields.get(f"text-{finding.index}")
        if _differs(typed, finding.text) and typed is not None and typed.strip():
            changes.append(Change(action="edit", finding=finding.index, text=typed))
    for section in _SECTIONS:
        if _differs(fields.get(section), getattr(copy, section)):
            changes.append(Change(action=section, finding=None, text=fields[section]))
    new = fields.get("new_finding")
    if isinstance(new, str) and new.strip():
        changes.append(Change(action="add", finding=None, text=new))
    return changes


def button_change(do: str) -> Change | None:
    """Return the change a button makes beyond saving the typed text (None for save, sign, edit, add ...).

    Raises
    ------
    ValueError
        An unknown button.
    """
    if do in _FORM_BUTTONS:
        return None
    if (dismiss := _DISMISS_BUTTON.match(do)) is not None:
        return Change(action="dismiss", finding=None, text=dismiss.group(1))
    match = _FINDING_BUTTON.match(do)
    if match is None:
        raise ValueError(f"unknown review action {do[:32]!r}")
    action, index = match.group(1), int(match.group(2))
    return None if action == "edit" else Change(action=action, finding=index, text=None)


def _unsaved(fields: Mapping[str, str], copy: WorkingCopy) -> str | None:
    """The text of the form that differs from the working copy, to show when nothing could be saved."""
    texts = [text for change in typed_changes(copy, fields) if (text := change["text"])]
    return "\n\n".join(texts) or None


def apply_review_form(
    request: Request, settings: Settings, user: CurrentUser, study_uid: str, report_id: int, fields: Mapping[str, str]
) -> Response:
    """Save the typed text, run the pressed button's action and go back to the page (or sign).

    Returns 303 back to the page (to the next study to read after ``sign-next``), or a refusal page (409 stale
    or not ready to sign, 422 invalid).  The page's worklist (``list``) is kept in either.

    Raises
    ------
    fastapi.HTTPException
        404 for another site's study or a report of another study, 403 when a non-radiologist signs.
    """
    do = fields.get("do") or "save"
    seq_text = fields.get("expected_seq", "")
    confirm_text = fields.get("confirm_unreviewed", "")
    reading = list_query(filters_from(fields.get("list")))
    with session_scope(settings.database_url) as session:
        report_of_study(session, user, study_uid, report_id)
        copy = working_copy(session, report_id)
    try:
        if not seq_text.isdigit() or (confirm_text and not confirm_text.isdigit()):
            raise ReviewError("the form is incomplete: reload the page")
        button = button_change(do)
        if do in _SIGN_BUTTONS:
            actions.require_signer(user)
        changes = typed_changes(copy, fields)
        if do == "add" and not any(change["action"] == "add" for change in changes):
            raise ReviewError("type the new finding before adding it")
        seq = int(seq_text)
        review = actions.Review(settings, user, report_id, client_address(request))
        for change in [*changes, *([button] if button else [])]:
            copy = review.change(change, seq)
            seq = copy.seq
        if do in _SIGN_BUTTONS:
            review.sign(seq, int(confirm_text) if confirm_text else None)
    except actions.REFUSED as exc:
        back = study_url(study_uid, report_id, reading_list=reading)
        return refusal_page(request, exc, back, unsaved=_unsaved(fields, copy))
    if do == "sign-next":
        return see_other(next_url(reading, study_uid))
    if (dismiss := _DISMISS_BUTTON.match(do)) is not None:
        checked = int(dismiss.group(2))  # 1-based; 0 is the draft as a whole, at the top
        return back_to_page(study_uid, report_id, "dismiss", checked - 1 if checked else None, copy, reading)
    match = _FINDING_BUTTON.match(do)
    if match is not None:
        return back_to_page(study_uid, report_id, match.group(1), int(match.group(2)), copy, reading)
    return back_to_page(study_uid, report_id, do, None, copy, reading)


def review_form_router() -> APIRouter:
    """Build the route of the review page's form, ``POST /studies/{study_uid}/reports/{report_id}/review``."""
    router = APIRouter(route_class=PageRoute, tags=["review page"])

    @router.post(
        "/studies/{study_uid}/reports/{report_id}/review",
        dependencies=[Depends(require_csrf)],
        summary="Save the review page's text and run its button",
    )
    async def review(
        study_uid: StudyUid, report_id: int, request: Request, settings: AppSettings, user: PageReviewer
    ) -> Response:
        """Save every box's typed text, then accept/reject/reset a finding, add, save or sign."""
        form = await request.form(max_fields=MAX_FORM_FIELDS)
        fields = {name: value for name, value in form.multi_items() if isinstance(value, str) and name != "do"}
        buttons = [value for name, value in form.multi_items() if name == "do" and isinstance(value, str)]
        fields["do"] = buttons[-1] if buttons else "save"
        return await run_in_threadpool(apply_review_form, request, settings, user, study_uid, report_id, fields)

    return router
