"""The worklist API: ``GET /api/studies`` and ``GET /api/studies/{study_uid}`` for radiologists and admins.

Object-level authorization: a radiologist sees only the studies of their own site; a study of another
site answers 404, exactly like a study that does not exist.  Administrators see every site.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.tables import Instance, Report, Series, Site, Study, UserRole
from integration.web.access import visible
from integration.web.auth import CurrentUser, require_roles

#: Most rows one worklist answer carries.
WORKLIST_LIMIT = 500

Reviewer = Annotated[CurrentUser, Depends(require_roles(UserRole.RADIOLOGIST, UserRole.ADMIN))]


def worklist(session: Session, user: CurrentUser, limit: int = WORKLIST_LIMIT) -> list[dict[str, Any]]:
    """Return the studies the user may review, newest first, with counts and the newest report.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    user : CurrentUser
        The signed-in user.
    limit : int
        Maximum rows.

    Returns
    -------
    list of dict
        One row per study.
    """
    series_count = select(func.count(Series.id)).where(Series.study_id == Study.id).correlate(Study).scalar_subquery()
    modalities = (
        select(func.count(func.distinct(Series.modality))).where(Series.study_id == Study.id).correlate(Study)
    ).scalar_subquery()
    newest_report = (
        select(func.max(Report.id)).where(Report.study_id == Study.id).correlate(Study).scalar_subquery()
    ).label("report_id")
    query = visible(
        select(Study, Site.code, series_count, modalities, newest_report).outerjoin(Site, Study.site_id == Site.id),
        user,
    ).order_by(Study.last_received_at.desc(), Study.id.desc())
    rows = session.execute(query.limit(limit)).all()
    report_ids = [report_id for *_, report_id in rows if report_id is not None]
    statuses = dict(session.execute(select(Report.id, Report.status).where(Report.id.in_(report_ids))).all())
    return [
        {
            "study_uid": study.study_uid,
            "state": study.state.value,
            "version": study.version,
            "site": site_code,
            "series_count": series,
            "modality_count": modality,
            "last_received_at": study.last_received_at.isoformat(),
            "report_id": report_id,
            "report_status": statuses[report_id].value if report_id is not None else None,
        }
        for study, site_code, series, modality, report_id in rows
    ]


def study_detail(session: Session, user: CurrentUser, study_uid: str) -> dict[str, Any] | None:
    """Return one study with its series and reports, or None when it is absent or not the user's to see.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    user : CurrentUser
        The signed-in user.
    study_uid : str
        Study Instance UID.

    Returns
    -------
    dict or None
        The study.
    """
    study = session.scalar(visible(select(Study).where(Study.study_uid == study_uid), user))
    if study is None:
        return None
    instance_counts = dict(
        session.execute(
            select(Series.id, func.count(Instance.id))
            .outerjoin(Instance, Instance.series_id == Series.id)
            .where(Series.study_id == study.id)
            .group_by(Series.id)
        ).all()
    )
    reports = session.scalars(select(Report).where(Report.study_id == study.id).order_by(Report.id)).all()
    return {
        "study_uid": study.study_uid,
        "state": study.state.value,
        "version": study.version,
        "last_received_at": study.last_received_at.isoformat(),
        "series": [
            {
                "series_uid": series.series_uid,
                "modality": series.modality,
                "body_part": series.body_part,
                "series_number": series.series_number,
                "instances": instance_counts.get(series.id, 0),
            }
            for series in sorted(study.series, key=lambda s: (s.series_number is None, s.series_number, s.id))
        ],
        "reports": [
            {
                "id": report.id,
                "study_version": report.study_version,
                "status": report.status.value,
                "ai_generated": report.ai_generated,
                "verification": report.verification,
                "model_id": report.model_id,
                "prompt_version": report.prompt_version,
                "findings": report.findings,
                "text": report.text,
                "created_at": report.created_at.isoformat(),
            }
            for report in reports
        ],
    }


def studies_router() -> APIRouter:
    """Build the worklist router.

    Returns
    -------
    fastapi.APIRouter
        ``GET /api/studies`` and ``GET /api/studies/{study_uid}``.
    """
    router = APIRouter(prefix="/api", tags=["review"])

    @router.get("/studies", summary="Worklist")
    def list_studies(request: Request, user: Reviewer) -> list[dict[str, Any]]:
        """The studies of the user's site (administrators: all sites), newest first."""
        from integration.store.session import session_scope

        settings: Settings = request.app.state.settings
        with session_scope(settings.database_url) as session:
            return worklist(session, user)

    @router.get("/studies/{study_uid}", summary="One study with its reports")
    def get_study(study_uid: str, request: Request, user: Reviewer) -> dict[str, Any]:
        """One study of the user's site with its series and reports; 404 for any other."""
        from integration.store.session import session_scope

        settings: Settings = request.app.state.settings
        with session_scope(settings.database_url) as session:
            found = study_detail(session, user, study_uid)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
        return found

    return router
