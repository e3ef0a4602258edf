"""A study's priority: stat while stat work is still open, routine again once it is done.

Several things make a study stat: a stat RIS order (:mod:`integration.store.orders`, :mod:`integration.store.jobs`),
a stat second opinion (:func:`integration.store.opinions.request_second_opinion`) and a critical finding
(:func:`integration.store.alerts.open_alert`).  Each raises the priority where it happens; this module is the one
place that says when the priority comes down again, so a stat second opinion no longer leaves a study at the top of
the worklist for good.  :func:`settle_priority` is called where stat work can end: a signature, a job that
finishes or fails, an acknowledged alert, an order change, and a radiologist opening a report
(:func:`mark_read`).

A study stays stat while any of:

(a) its linked order is stat, still scheduled (a cancelled or discontinued order asks for nothing), and the study
    has no signed report of record yet;
(b) a critical-finding alert of the study is open (not yet acknowledged, and not closed with its draft);
(c) a stat second opinion is queued or running, or its draft exists (status ``draft``) and no radiologist has
    opened it yet (``reports.read_at`` is None): the person who asked urgently has not seen the answer;
(d) a stat routing rule took the study (its current version's primary job is ``stat`` and was not superseded
    or cancelled) and it has no signed report of record yet.

Settling only ever lowers: a routine study is never made stat here (the code that starts stat work raises it).
When a study returns to routine its ``critical_reason`` (shown beside STAT on the worklist) is cleared only when
its newest alert was acknowledged: a critical finding whose alert closed unacknowledged (its draft superseded or
withdrawn) keeps the reason visible, so nobody loses sight of a finding no person confirmed.  Like every store
module, nothing here commits: the caller's transaction does.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session

from integration.store.alert_tables import AlertState, CriticalAlert
from integration.store.opinions import PRIMARY, ROUTINE, RULE_REQUESTER, SECOND_OPINION, STAT
from integration.store.order_tables import Order, OrderStatus
from integration.store.tables import (
    AnalysisJob,
    JobState,
    Report,
    ReportPurpose,
    ReportStatus,
    Study,
    UserRole,
    utcnow,
)

#: Job states in which a stat second opinion is still being worked on.
_OPEN_JOBS = (JobState.QUEUED, JobState.RUNNING)


def settle_priority(session: Session, study: Study, now: datetime) -> str:
    """Recompute a stat study's priority from the stat work still open; return the priority it has now.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session (the caller commits).
    study : Study
        The study.  A routine study is left routine.
    now : datetime.datetime
        Aware UTC; the study's ``updated_at`` when its priority comes down.

    Returns
    -------
    str
        ``stat`` or ``routine``.
    """
    if study.priority != STAT:
        return study.priority
    if (
        _stat_order_open(session, study)
        or _critical_alert_open(session, study)
        or _stat_opinion_open(session, study)
        or _stat_rule_open(session, study)
    ):
        return STAT
    study.priority = ROUTINE
    study.updated_at = now
    if study.critical_reason is not None and _critical_acknowledged(session, study.id):
        study.critical_reason = None
    return ROUTINE


def settle_priority_of(session: Session, study_id: int, now: datetime) -> str | None:
    """Settle the priority of the study with this id (see :func:`settle_priority`); None when there is none."""
    study = session.get(Study, study_id)
    return settle_priority(session, study, now) if study is not None else None


def mark_read(session: Session, report: Report | None, now: datetime | None = None, *, role: UserRole) -> bool:
    """Record that a radiologist opened a page showing the report (the first time only), and settle its study.

    Only a radiologist's reading counts: an administrator or an uploader opening the page leaves ``read_at``
    alone.  The first reader's time is kept when two open it at once (a conditional update).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session (the caller commits).
    report : Report or None
        The report the page shows; None (no report) does nothing.
    now : datetime.datetime, optional
        Aware UTC; now by default.
    role : UserRole
        The role of the user who opened the page.

    Returns
    -------
    bool
        True when this call recorded the first reading.
    """
    if report is None or role is not UserRole.RADIOLOGIST or report.read_at is not None:
        return False
    now = now or utcnow()
    marked = session.execute(
        update(Report).where(Report.id == report.id, Report.read_at.is_(None)).values(read_at=now).returning(Report.id)
    ).first()
    session.refresh(report, ["read_at"])
    if marked is None:
        return False
    settle_priority_of(session, report.study_id, now)
    return True


def _stat_order_open(session: Session, study: Study) -> bool:
    """Rule (a): a stat, still scheduled order and no signed report of record."""
    if study.order_id is None:
        return False
    order = session.get(Order, study.order_id)
    if order is None or order.priority != STAT or order.status != OrderStatus.SCHEDULED.value:
        return False
    signed = select(Report.id).where(
        Report.study_id == study.id, Report.status == ReportStatus.SIGNED, Report.purpose == ReportPurpose.PRIMARY
    )
    return session.scalar(signed.limit(1)) is None


def _critical_alert_open(session: Session, study: Study) -> bool:
    """Rule (b): an alert of the study waits for an acknowledgement."""
    query = select(CriticalAlert.id).where(CriticalAlert.study_id == study.id, CriticalAlert.state == AlertState.OPEN)
    return session.scalar(query.limit(1)) is not None


def _stat_opinion_open(session: Session, study: Study) -> bool:
    """Rule (c): a stat second opinion queued or running, or its draft not yet opened by a radiologist."""
    unread_draft = exists().where(
        Report.job_id == AnalysisJob.id, Report.status == ReportStatus.DRAFT, Report.read_at.is_(None)
    )
    query = select(AnalysisJob.id).where(
        AnalysisJob.study_id == study.id,
        AnalysisJob.purpose == SECOND_OPINION,
        AnalysisJob.priority == STAT,
        AnalysisJob.state.in_(_OPEN_JOBS) | and_(AnalysisJob.state == JobState.DONE, unread_draft),
    )
    return session.scalar(query.limit(1)) is not None


def _stat_rule_open(session: Session, study: Study) -> bool:
    """Rule (d): a stat routing rule made the current version's primary job and nothing is signed yet."""
    query = select(AnalysisJob.id).where(
        AnalysisJob.study_id == study.id,
        AnalysisJob.study_version == study.version,
        AnalysisJob.purpose == PRIMARY,
        AnalysisJob.priority == STAT,
        AnalysisJob.requested_by.startswith(RULE_REQUESTER),
        AnalysisJob.state.not_in((JobState.SUPERSEDED, JobState.CANCELLED)),
    )
    if session.scalar(query.limit(1)) is None:
        return False
    signed = select(Report.id).where(
        Report.study_id == study.id, Report.status == ReportStatus.SIGNED, Report.purpose == ReportPurpose.PRIMARY
    )
    return session.scalar(signed.limit(1)) is None


def _critical_acknowledged(session: Session, study_id: int) -> bool:
    """Whether the study's newest alert was acknowledged, or it never had one (its reason may go)."""
    newest = session.scalar(
        select(CriticalAlert.state).where(CriticalAlert.study_id == study_id).order_by(CriticalAlert.id.desc()).limit(1)
    )
    return newest is None or newest == AlertState.ACKNOWLEDGED
