"""The review page's one form: every text box travels with every button, so typed text is never lost.

The study page's editor is a single ``<form>`` posting to ``POST /studies/{uid}/reports/{id}/review``.
Whatever button was pressed (``do``: ``accept:N``, ``reject:N``, ``reset:N``, ``edit:N``, ``add``,
``impression``, ``limitations``, ``save`` or ``sign``), the text the radiologist typed anywhere on the page
(each finding's box ``text-N``, ``new_finding``, ``impression``, ``limitations``) is saved first, as the
review changes it amounts to; then the button's own action runs.  Accepting finding 2 therefore keeps the
impression typed a moment before, and signing signs what is on the screen, not what was last saved.

Every change is one :func:`integration.store.reviews.record_change` call against the change number the page
showed (``expected_seq``), so a draft someone else changed meanwhile answers 409 and shows the text that was
not saved.  Signing goes through the same rules as the API (:func:`integration.reports.review.sign_reviewed`:
the report of record only, reviewed or confirmed findings, radiologists only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from integration.reports.sr_content import sr_text
from integration.store.reviews import WorkingCopy
from integration.web.auth import CurrentUser, client_address
from integration.web.csrf import require_csrf
from integration.web.templating import PageRoute, page_reviewer

Reviewer = Annotated[CurrentUser, Depends(page_reviewer)]

#: The buttons of the form: an action on one finding, or one of the whole-form actions.
_FINDING_BUTTON = re.compile(r"^(accept|reject|reset|edit):(\d{1,5})$")
_FORM_BUTTONS = frozenset({"add", "impression", "limitations", "save", "sign"})
#: Most fields the form may carry: a box per finding (at most 200), the other boxes and hidden fields.
MAX_FORM_FIELDS = 2 * 200 + 20


@dataclass(frozen=True)
class Change:
    """One review change the form amounts to."""

    action: str
    finding: int | None = None
    text: str | None = None


def _differs(typed: str | None, current: str) -> bool:
    """Whether a box holds other text than the working copy (compared as the review domain stores it)."""
    return isinstance(typed, str) and sr_text(typed, limit=len(typed) + 1) != current


def typed_changes(copy: WorkingCopy, fields: Mapping[str, str]) -> list[Change]:
    """Return the changes of the text typed in the form's boxes that the working copy does not hold yet.

    Parameters
    ----------
    copy : WorkingCopy
        The working copy the page showed.
    fields : mapping of str to str
        The form.

    Returns
    -------
    list of Change
        Edits of findings (a box left empty is not an edit), the impression, the limitations and a new
        finding, in that order.
    """
    changes = []
    for finding in copy.findings:
        typed = fields.get(f"text-{finding.index}")
        if _differs(typed, finding.text) and typed is not None and typed.strip():
            changes.append(Change("edit", finding.index, typed))
    for section, current in (("impression", copy.impression), ("limitations", copy.limitations)):
        if _differs(fields.get(section), current):
            changes.append(Change(section, None, fields[section]))
    new = fields.get("new_finding")
    if isinstance(new, str) and new.strip():
        changes.append(Change("add", None, new))
    return changes


def button_change(do: str) -> Change | None:
    """Return the change a button makes beyond saving the typed text (None for save, sign, edit, add ...).

    Parameters
    ----------
    do : str
        The pressed button's value.

    Returns
    -------
    Change or None
        ``accept``, ``reject`` or ``reset`` of one finding.

    Raises
    ------
    ValueError
        An unknown button.
    """
    if do in _FORM_BUTTONS:
        return None
    match = _FINDING_BUTTON.match(do)
    if match is None:
        raise ValueError(f"unknown review action {do[:32]!r}")
    action, index = match.group(1), int(match.group(2))
    return None if action == "edit" else Change(action, index)


def _unsaved(fields: Mapping[str, str], copy: WorkingCopy | None) -> str | None:
    """The text of the form that differs from the working copy, to show when nothing could be saved."""
    if copy is None:
        return None
    texts = [change.text for change in typed_changes(copy, fields) if change.text]
    return "\n\n".join(texts) or None


def apply_review_form(
    request: Request, user: CurrentUser, study_uid: str, report_id: int, fields: Mapping[str, str]
) -> Response:
    """Save the typed text, run the pressed button's action and go back to the page (or sign).

    Parameters
    ----------
    request : fastapi.Request
        The request (settings, client address).
    user : CurrentUser
        The radiologist or administrator.
    study_uid : str
        The study.
    report_id : int
        The draft.
    fields : mapping of str to str
        The form's text fields.

    Returns
    -------
    fastapi.Response
        303 back to the page, or an error page (409 stale or not ready to sign, 422 invalid).
    """
    from integration.reports.review import sign_reviewed, signer_of
    from integration.store.reviews import ReportClosed, ReviewConflict, ReviewError, record_change, working_copy
    from integration.store.revisions import UnknownReport
    from integration.store.session import session_scope
    from integration.web.review import require_signer
    from integration.web.study_page import checked_report, refusal_page, see_other, study_url

    settings = request.app.state.settings
    checked_report(request, user, study_uid, report_id)
    back = study_url(study_uid, report_id)
    do = fields.get("do") or "save"
    seq_text = fields.get("expected_seq", "")
    confirm_text = fields.get("confirm_unreviewed", "")
    copy: WorkingCopy | None = None
    try:
        if not seq_text.isdigit() or (confirm_text and not confirm_text.isdigit()):
            raise ReviewError("the form is incomplete: reload the page")
        button = button_change(do)
        if do == "sign":
            require_signer(user)
        with session_scope(settings.database_url) as session:
            copy = working_copy(session, report_id)
        changes = typed_changes(copy, fields)
        if do == "add" and not any(change.action == "add" for change in changes):
            raise ReviewError("type the new finding before adding it")
        seq = int(seq_text)
        for change in [*changes, *([button] if button else [])]:
            with session_scope(settings.database_url) as session:
                saved = record_change(
                    session,
                    report_id,
                    actor=user.username,
                    action=change.action,
                    finding=change.finding,
                    text=change.text,
                    expected_seq=seq,
                    source=client_address(request),
                )
            seq, copy = saved.seq, saved
        if do == "sign":
            with session_scope(settings.database_url) as session:
                person_name, organization = signer_of(session, user.id)
            sign_reviewed(
                settings,
                report_id,
                actor=user.username,
                person_name=person_name,
                organization=organization,
                source=client_address(request),
                expected_seq=seq,
                confirm_unreviewed=int(confirm_text) if confirm_text else None,
            )
            return see_other(study_url(study_uid, report_id, done="sign", anchor="report"))
    except (ReviewError, ReviewConflict, ReportClosed, UnknownReport, LookupError, ValueError, RuntimeError) as exc:
        return refusal_page(request, exc, back, unsaved=_unsaved(fields, copy))
    return see_other(_after(study_uid, report_id, do, copy))


def _after(study_uid: str, report_id: int, do: str, copy: WorkingCopy | None) -> str:
    """Where the page goes back to: the notice of the pressed button, at the part of the page it concerns."""
    from integration.web.study_page import study_url

    match = _FINDING_BUTTON.match(do)
    if match is not None:
        return study_url(study_uid, report_id, done=match.group(1), anchor=f"finding-{match.group(2)}")
    if do == "add" and copy is not None and copy.findings:
        return study_url(study_uid, report_id, done="add", anchor=f"finding-{copy.findings[-1].index}")
    anchor = do if do in ("impression", "limitations") else "findings"
    return study_url(study_uid, report_id, done=do, anchor=anchor)


def review_form_router() -> APIRouter:
    """Build the route of the review page's form.

    Returns
    -------
    fastapi.APIRouter
        ``POST /studies/{study_uid}/reports/{report_id}/review``.
    """
    router = APIRouter(route_class=PageRoute, tags=["review page"])

    @router.post(
        "/studies/{study_uid}/reports/{report_id}/review",
        dependencies=[Depends(require_csrf)],
        summary="Save the review page's text and run its button",
    )
    async def review(study_uid: str, report_id: int, request: Request, user: Reviewer) -> Response:
        """Save every box's typed text, then accept/reject/reset a finding, add, save or sign."""
        form = await request.form(max_fields=MAX_FORM_FIELDS)
        fields = {name: value for name, value in form.multi_items() if isinstance(value, str) and name != "do"}
        buttons = [value for name, value in form.multi_items() if name == "do" and isinstance(value, str)]
        fields["do"] = buttons[-1] if buttons else "save"
        return await run_in_threadpool(apply_review_form, request, user, study_uid, report_id, fields)

    return router
