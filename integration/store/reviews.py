"""A reviewer's changes to a draft: the append-only change log and the working copy it gives.

The draft itself is never modified.  Each change (accept, reject, edit, add, impression, limitations,
comparison, reset) is one :class:`~integration.store.tables.ReviewChange` row numbered ``seq`` 1, 2, ... per report;
the *working copy* a reviewer sees and signs is the draft with its changes applied in order.  A change
names the ``seq`` it was made against (``expected_seq``), so two reviewers editing one draft cannot
overwrite each other unnoticed: the second gets :class:`ReviewConflict`.

Every function that writes commits its own short transaction.  On PostgreSQL the report row is locked
(``FOR UPDATE``) after a per-report advisory lock that signing holds for its whole duration
(:func:`review_lock`), so no change lands between reading the working copy and signing it; on SQLite the
unique ``(report, seq)`` constraint turns a concurrent change into :class:`ReviewConflict`.

``before`` and ``after`` of a change hold text for the actions that change text (``edit``, ``add``,
``impression``, ``limitations``, ``comparison``, ``reset``) and the finding's decision for ``accept`` and ``reject``.

The draft's consistency checks (:class:`integration.draft_checks.Check`) travel with the working copy: a
reviewer either fixes the finding a check is about (edits or rejects it; for the draft as a whole, finding 0,
edits the impression) or dismisses the check, a ``dismiss`` change whose ``after`` is the check's key
(``"2:laterality"``).  :attr:`WorkingCopy.open_checks` are those neither fixed nor dismissed: signing refuses
while there are any (:mod:`integration.reports.readiness`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from integration.draft_checks import Check
from integration.findings import (
    MAX_FINDING_CHARS,
    MAX_FINDINGS,
    MAX_SECTION_CHARS,
    Document,
    Finding,
    edited_text,
    evidence_of,
    images_of,
)
from integration.store.audit import add_event
from integration.store.revisions import UnknownReport
from integration.store.session import engine_for
from integration.store.tables import Report, ReportStatus, ReviewChange, utcnow
from integration.untrusted import InvalidFindings

#: Most changes one draft may collect.
MAX_CHANGES = 5000
#: The actions a change may be.
ACTIONS = frozenset({"accept", "reject", "edit", "add", "impression", "limitations", "comparison", "reset", "dismiss"})
#: First key of the PostgreSQL advisory locks that serialise signing and changes of one report.
REVIEW_LOCK_SPACE = 0x52455649  # "REVI"

_FINDING_ACTIONS = frozenset({"accept", "reject", "edit", "reset"})
#: The actions that replace a whole section of text (may be empty), each a field of :class:`WorkingCopy`.
_SECTION_ACTIONS = ("impression", "limitations", "comparison")


class ReviewError(ValueError):
    """An invalid change; the message is safe to show to the user."""


class ReviewConflict(RuntimeError):
    """The change was made against an old working copy: someone else changed the draft meanwhile."""


class ReportClosed(ValueError):
    """The report is not a draft any more (signed, rejected or superseded)."""


@dataclass(frozen=True)
class WorkingFinding:
    """One finding of a working copy.

    Attributes
    ----------
    index : int
        0-based: the draft's findings first, then added ones in order of addition.
    text : str
        Current text.
    draft_text : str or None
        The model's text (None for an added finding).
    images : tuple of int
        Image numbers cited (as numbered in the prompt, 1-based).
    decision : str
        ``pending``, ``accepted``, ``edited``, ``rejected`` or ``added``.
    confidence : float or None
        The model's confidence in the wording of its draft text (see :class:`integration.findings.Finding`);
        None for added findings and drafts without scores.
    """

    index: int
    text: str
    draft_text: str | None
    images: tuple[int, ...]
    decision: str
    confidence: float | None = None


@dataclass(frozen=True)
class WorkingCopy:
    """A draft with a reviewer's changes applied.

    Attributes
    ----------
    report_id : int
        The report.
    status : str
        The report's status (``draft``, ``signed``, ``rejected``, ``superseded``).
    seq : int
        Number of the last change (0: none).
    findings : tuple of WorkingFinding
        Every finding, rejected ones included (they are left out when signing).
    impression, limitations : str
        Current text.
    draft_impression, draft_limitations : str
        The model's text.
    comparison : str
        Current comparison with the prior studies (the report's COMPARISON line; when empty, the line names
        the priors compared with, or says why there was none: ``prior_note``).
    draft_comparison : str
        The model's comparison.
    prior_note : str
        The draft's note of why no prior study was given ('' when priors were given); not editable.
    checks : tuple of Check
        The draft's consistency checks (finding numbers 1-based, 0 for the draft as a whole).
    dismissed : tuple of str
        The keys of the checks a reviewer dismissed, in order.
    """

    report_id: int
    status: str
    seq: int
    findings: tuple[WorkingFinding, ...]
    impression: str
    limitations: str
    draft_impression: str
    draft_limitations: str
    comparison: str = ""
    draft_comparison: str = ""
    prior_note: str = ""
    checks: tuple[Check, ...] = ()
    dismissed: tuple[str, ...] = ()

    def check_state(self, check: Check) -> str:
        """Say whether a check is ``dismissed``, ``fixed`` or still ``open``.

        Fixed: its finding (the model's finding of that number) is edited or rejected; for the draft as a whole
        (finding 0), the impression differs from the model's.
        """
        if check.key in self.dismissed:
            return "dismissed"
        if check.finding == 0:
            return "fixed" if self.impression != self.draft_impression else "open"
        drafted = [finding for finding in self.findings if finding.draft_text is not None]
        if check.finding <= len(drafted) and drafted[check.finding - 1].decision in ("edited", "rejected"):
            return "fixed"
        return "open"

    @property
    def open_checks(self) -> tuple[Check, ...]:
        """The checks neither dismissed nor fixed: signing waits for them."""
        return tuple(check for check in self.checks if self.check_state(check) == "open")

    @property
    def signed_findings(self) -> list[dict[str, Any]]:
        """The findings a signature stores: every one but the rejected, as stored (``{"text", "images"}``)."""
        return [Finding(f.text, f.images).as_json() for f in self.findings if f.decision != "rejected"]

    @property
    def draft(self) -> Document:
        """The draft as the working copy read it (its findings with text, impression, limitations, comparison)."""
        findings = tuple(Finding(f.draft_text, f.images) for f in self.findings if f.draft_text is not None)
        return Document(findings, self.draft_impression, self.draft_limitations, comparison=self.draft_comparison)


def evidence_images(evidence: object) -> frozenset[int]:
    """Return the image numbers a draft's stored evidence names validly: the images a finding may cite."""
    return images_of(evidence_of(evidence))


def draft_findings(document: object, images_seen: Collection[int] = ()) -> list[WorkingFinding]:
    """Return a draft's findings (read by :meth:`integration.findings.Document.read`) as pending working findings.

    Citations of images outside ``images_seen`` (when given) are dropped: a signature would refuse them,
    and a reviewer cannot change citations.
    """
    findings = Document.read(document, images_seen).findings
    return [
        WorkingFinding(index, f.text, f.text, f.images, "pending", f.confidence) for index, f in enumerate(findings)
    ]


def _decided(finding: WorkingFinding, status: str) -> WorkingFinding:
    """Set a finding's decision from what was done to it (``status``) and whether its text differs."""
    if finding.draft_text is None:
        return replace(finding, decision="rejected" if status == "rejected" else "added")
    if status == "rejected":
        return replace(finding, decision="rejected")
    if finding.text != finding.draft_text:
        return replace(finding, decision="edited")
    return replace(finding, decision=status)


def _apply(copy: WorkingCopy, change: ReviewChange) -> WorkingCopy:
    """Apply one stored change to a working copy (unknown actions and indexes change nothing)."""
    findings = list(copy.findings)
    action, index = change.action, change.finding
    if action == "add" and change.after is not None:
        findings.append(WorkingFinding(len(findings), change.after, None, (), "added"))
    elif action == "impression" and change.after is not None:
        copy = replace(copy, impression=change.after)
    elif action == "limitations" and change.after is not None:
        copy = replace(copy, limitations=change.after)
    elif action == "comparison" and change.after is not None:
        copy = replace(copy, comparison=change.after)
    elif action == "dismiss" and change.after is not None and change.after not in copy.dismissed:
        copy = replace(copy, dismissed=(*copy.dismissed, change.after))
    elif action in _FINDING_ACTIONS and index is not None and 0 <= index < len(findings):
        finding = findings[index]
        if action == "accept":
            finding = _decided(finding, "accepted")
        elif action == "reject":
            finding = _decided(finding, "rejected")
        elif action == "edit" and change.after is not None:
            finding = _decided(replace(finding, text=change.after), "accepted")
        elif action == "reset":
            if finding.draft_text is None:
                finding = _decided(finding, "rejected")
            else:
                finding = replace(finding, text=finding.draft_text, decision="pending")
        findings[index] = finding
    return replace(copy, seq=change.seq, findings=tuple(findings))


def _report(session: Session, report_id: int, *, lock: bool = False, advisory: bool = True) -> Report:
    query = select(Report).where(Report.id == report_id).execution_options(populate_existing=True)
    if lock and session.get_bind().dialect.name == "postgresql":
        if advisory:
            keys = {"space": REVIEW_LOCK_SPACE, "report": report_id}
            session.execute(text("SELECT pg_advisory_xact_lock(:space, :report)"), keys)
        query = query.with_for_update()
    report = session.scalars(query).one_or_none()
    if report is None:
        raise UnknownReport(f"no report with id {report_id}")
    return report


def _working_copy(session: Session, report: Report) -> WorkingCopy:
    document = Document.read(report.findings)
    copy = WorkingCopy(
        report_id=report.id,
        status=report.status.value,
        seq=0,
        findings=tuple(draft_findings(document, evidence_images(report.evidence))),
        impression=document.impression,
        limitations=document.limitations,
        draft_impression=document.impression,
        draft_limitations=document.limitations,
        comparison=document.comparison,
        draft_comparison=document.comparison,
        prior_note=document.prior_note,
        checks=document.checks,
    )
    changes = session.scalars(
        select(ReviewChange).where(ReviewChange.report_id == report.id).order_by(ReviewChange.seq)
    )
    for change in changes:
        copy = _apply(copy, change)
    return copy


def working_copy(session: Session, report_id: int) -> WorkingCopy:
    """Return a report's draft with its review changes applied.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    report_id : int
        The report.

    Returns
    -------
    WorkingCopy
        The working copy.

    Raises
    ------
    integration.store.revisions.UnknownReport
        No report has this id.
    """
    return _working_copy(session, _report(session, report_id))


def lock_draft(
    session: Session, report_id: int, expected_seq: int | None = None, *, advisory: bool = True
) -> tuple[Report, WorkingCopy]:
    """Lock a draft for a change (advisory lock and ``FOR UPDATE`` on PostgreSQL) and return its working copy.

    The locks last until the session's transaction ends.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    report_id : int
        The report.
    expected_seq : int, optional
        The change number the caller saw; checked when given.
    advisory : bool
        Take the report's advisory lock too; False when the caller holds it already through
        :func:`review_lock` (taking it again from this connection would wait for ever).

    Returns
    -------
    tuple of Report and WorkingCopy
        The locked row and its working copy.

    Raises
    ------
    integration.store.revisions.UnknownReport
        No report has this id.
    ReportClosed
        The report is not a draft.
    ReviewConflict
        ``expected_seq`` is not the last change's number.
    """
    report = _report(session, report_id, lock=True, advisory=advisory)
    if report.status != ReportStatus.DRAFT:
        state = report.status.value
        raise ReportClosed(f"report {report_id} is {state}, not a draft: it cannot be changed")
    copy = _working_copy(session, report)
    if expected_seq is not None and expected_seq != copy.seq:
        raise ReviewConflict(
            f"report {report_id} was changed meanwhile (change {copy.seq}, you saw {expected_seq}): reload it"
        )
    return report, copy


def checked_text(value: str | None, limit: int, what: str, *, required: bool) -> str:
    """Return a reviewer's text cleaned, or raise :class:`ReviewError` (see ``findings.edited_text``)."""
    try:
        return edited_text(value, limit, what, required=required)
    except InvalidFindings as exc:
        raise ReviewError(str(exc)) from None


def _before_after(
    copy: WorkingCopy, action: str, finding: int | None, body: str | None
) -> tuple[str | None, str | None]:
    """What a change records as before and after, once the request is checked."""
    if action == "add":
        if finding is not None:
            raise ReviewError("an added finding takes no finding index")
        if len(copy.findings) >= MAX_FINDINGS:
            raise ReviewError(f"a report may have at most {MAX_FINDINGS} findings")
        return None, checked_text(body, MAX_FINDING_CHARS, "finding text", required=True)
    if action == "dismiss":
        return None, _dismissable(copy, finding, body)
    if action in _SECTION_ACTIONS:
        if finding is not None:
            raise ReviewError(f"a change of the {action} takes no finding index")
        section: str = getattr(copy, action)
        return section, checked_text(body, MAX_SECTION_CHARS, action, required=False)
    if finding is None or not 0 <= finding < len(copy.findings):
        raise ReviewError(f"finding {finding} does not exist: the report has findings 0 to {len(copy.findings) - 1}")
    current = copy.findings[finding]
    if action == "edit":
        return current.text, checked_text(body, MAX_FINDING_CHARS, "finding text", required=True)
    if body is not None:
        raise ReviewError(f"{action} takes no text")
    if action == "reset":
        return current.text, current.draft_text
    return current.decision, "rejected" if action == "reject" else _decided(current, "accepted").decision


def _dismissable(copy: WorkingCopy, finding: int | None, key: str | None) -> str:
    """The key of the check a ``dismiss`` change names, once checked: a check of the draft, not dismissed yet."""
    if finding is not None:
        raise ReviewError("a dismissal names its check by key (text), not by a finding index")
    keys = [check.key for check in copy.checks]
    if key not in keys:
        named = ", ".join(keys) if keys else "none"
        raise ReviewError(f"the draft has no check {str(key)[:32]!r} to dismiss (its checks: {named})")
    if key in copy.dismissed:
        raise ReviewError(f"check {key} is already dismissed")
    return key


def record_change(
    session: Session,
    report_id: int,
    *,
    actor: str,
    action: str,
    finding: int | None = None,
    text: str | None = None,
    expected_seq: int | None = None,
    source: str | None = None,
) -> WorkingCopy:
    """Record one change to a draft with its ``review.change`` audit event, commit, and return the new working copy.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    report_id : int
        The draft.
    actor : str
        Who made the change (username).
    action : str
        ``accept``, ``reject``, ``edit`` (finding, text), ``reset`` (finding: back to pending with the
        draft's text; an added finding is removed, i.e. rejected), ``add`` (text: a new finding without
        images), ``impression``, ``limitations`` or ``comparison`` (text, may be empty), ``dismiss`` (text:
        the key of one of the draft's consistency checks, ``"2:laterality"``; audited with the key).
    finding : int, optional
        0-based index of the finding (see :class:`WorkingFinding`).
    text : str, optional
        Untrusted text: control characters are removed; refused when empty (edit, add) or longer than
        :data:`MAX_FINDING_CHARS` (findings) or :data:`MAX_SECTION_CHARS` (impression, limitations, comparison).
    expected_seq : int, optional
        The change number the reviewer's copy was at; a different one raises :class:`ReviewConflict`.
    source : str, optional
        Where the change came from (``host:port``), for the audit event (which never holds the text).

    Returns
    -------
    WorkingCopy
        The working copy with the change applied (``seq`` one higher).

    Raises
    ------
    ReviewError
        An unknown action, a missing or unknown finding, missing, empty or too long text.
    ReviewConflict
        ``expected_seq`` is stale, or a concurrent change took the number.
    ReportClosed
        The report is not a draft.
    integration.store.revisions.UnknownReport
        No report has this id.
    """
    if action not in ACTIONS:
        raise ReviewError(f"unknown action {action[:32]!r}; use one of {', '.join(sorted(ACTIONS))}")
    _, copy = lock_draft(session, report_id, expected_seq)
    if copy.seq >= MAX_CHANGES:
        raise ReviewError(f"report {report_id} has {copy.seq} changes, the most allowed: sign or reject it")
    before, after = _before_after(copy, action, finding, text)
    change = ReviewChange(
        report_id=report_id,
        seq=copy.seq + 1,
        actor=actor[:64],
        at=utcnow(),
        action=action,
        finding=finding,
        before=before,
        after=after,
    )
    session.add(change)
    add_event(
        session,
        actor=actor,
        action="review.change",
        object_type="report",
        object_id=str(report_id),
        source=source,
        detail={
            "action": action,
            "finding": finding,
            "seq": change.seq,
            **({"check": after} if action == "dismiss" else {}),
        },
    )
    try:
        session.flush()  # the (report, seq) key: a concurrent change collides here; the caller's scope commits
    except IntegrityError as exc:
        raise ReviewConflict(f"report {report_id} was changed meanwhile: reload it") from exc
    return _apply(copy, change)


def change_history(session: Session, report_id: int) -> list[dict[str, Any]]:
    """Return a report's review changes, oldest first.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    report_id : int
        The report.

    Returns
    -------
    list of dict
        ``seq``, ``actor``, ``at`` (ISO 8601), ``action``, ``finding``, ``before``, ``after``.
    """
    changes = session.scalars(
        select(ReviewChange).where(ReviewChange.report_id == report_id).order_by(ReviewChange.seq)
    )
    return [
        {
            "seq": c.seq,
            "actor": c.actor,
            "at": c.at.isoformat(),
            "action": c.action,
            "finding": c.finding,
            "before": c.before,
            "after": c.after,
        }
        for c in changes
    ]


def change_count(session: Session, report_id: int) -> int:
    """Return how many review changes a report has.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    report_id : int
        The report.

    Returns
    -------
    int
        The count.
    """
    return int(session.scalar(select(func.count(ReviewChange.id)).where(ReviewChange.report_id == report_id)) or 0)


@contextmanager
def review_lock(database_url: str, report_id: int) -> Iterator[None]:
    """Hold a report's review lock (a PostgreSQL session advisory lock) across several transactions.

    Signing writes files and commits in several steps; holding this lock meanwhile makes concurrent
    changes, rejections and signatures of the same report wait, then find it closed.  On other databases
    it does nothing (SQLite serialises writes, and the report's status is checked in each step).

    Parameters
    ----------
    database_url : str
        The database.
    report_id : int
        The report.

    Yields
    ------
    None
        While the lock is held.
    """
    engine = engine_for(database_url)
    if engine.dialect.name != "postgresql":
        yield
        return
    keys = {"space": REVIEW_LOCK_SPACE, "report": report_id}
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:space, :report)"), keys)
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:space, :report)"), keys)
            connection.commit()


def decisions_as_matches(copy: WorkingCopy) -> Sequence[int | None]:
    """Return, per draft finding, its position among the signed findings (None when rejected).

    Parameters
    ----------
    copy : WorkingCopy
        The working copy being signed.

    Returns
    -------
    sequence of int or None
        One entry per draft finding, for :func:`integration.reports.review_diff.review_difference`.
    """
    matches: list[int | None] = []
    position = 0
    for finding in copy.findings:
        kept = finding.decision != "rejected"
        if finding.draft_text is not None:
            matches.append(position if kept else None)
        position += kept
    return matches
