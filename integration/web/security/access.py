"""Object-level authorization: which studies and reports a signed-in user may see.

A radiologist or uploader sees only the studies of their own sites (``user_sites``); administrators see every
site.  Anything else answers 404, exactly like something that does not exist, so ids of other sites' studies
leak nothing; such an attempt on something that does exist is audited (``access.cross_site``, aggregated).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from integration.store.shadow import reviewable
from integration.store.tables import Report, Study, UserRole
from integration.uids import is_valid_uid
from integration.web.deps import CurrentUser
from integration.web.security.refusals import CrossSiteRefused


def visible(query: Select[Any], user: CurrentUser) -> Select[Any]:
    """Restrict a query over :class:`Study` (joined tables allowed) to the studies the user may see."""
    if user.role is UserRole.ADMIN:
        return query
    return query.where(Study.site_id.in_(user.site_ids), Study.site_id.is_not(None))


def study_for(session: Session, user: CurrentUser, study_uid: str) -> Study:
    """Return the study with this UID when the user may see it.

    Raises
    ------
    fastapi.HTTPException
        404 when it does not exist or belongs to another site (then a :class:`CrossSiteRefused`).
    """
    if not is_valid_uid(study_uid):  # routes refuse such UIDs (422); this keeps NUL bytes from PostgreSQL
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    study: Study | None = session.scalar(visible(select(Study).where(Study.study_uid == study_uid), user))
    if study is None:
        raise _study_not_found(session, study_uid)
    return study


def _study_not_found(session: Session, study_uid: str) -> HTTPException:
    """The 404 for a study the user may not see: a :class:`CrossSiteRefused` (audited) when it exists elsewhere."""
    if session.scalar(select(Study.id).where(Study.study_uid == study_uid)) is not None:
        return CrossSiteRefused("no such study", "study", study_uid)
    return HTTPException(status.HTTP_404_NOT_FOUND, "no such study")


def report_for(session: Session, user: CurrentUser, report_id: int) -> Report:
    """Return the report with this id when the user may see its study.

    Raises
    ------
    fastapi.HTTPException
        404 when it does not exist or its study belongs to another site (then a :class:`CrossSiteRefused`).
    """
    report: Report | None = session.scalar(
        visible(
            select(Report).join(Study, Report.study_id == Study.id).where(Report.id == report_id, reviewable()), user
        )
    )
    if report is None:
        if session.scalar(select(Report.id).where(Report.id == report_id, reviewable())) is not None:
            raise CrossSiteRefused("no such report", "report", str(report_id))
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report")
    return report


def report_of_study(session: Session, user: CurrentUser, study_uid: str, report_id: int) -> Report:
    """Return a report of this study when the user may see the study.

    Raises
    ------
    fastapi.HTTPException
        404 for another site's study or report, or a report of another study.
    """
    study = study_for(session, user, study_uid)
    report = report_for(session, user, report_id)
    if report.study_id != study.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report for this study")
    return report
