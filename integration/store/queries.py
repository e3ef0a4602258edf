"""Read-only queries for the command line, the demo and (later) the review API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from integration.store.tables import ROLE_CURRENT, AnalysisJob, Instance, Series, Study


@dataclass(frozen=True)
class StudySummary:
    """One study (UID, state, sender, version) with series, instance and job counts and its newest arrival time."""

    study_uid: str
    state: str
    version: int
    series: int
    instances: int
    jobs: int
    calling_ae: str
    last_received_at: datetime


def study_summaries(session: Session, limit: int = 50, study_uids: list[str] | None = None) -> list[StudySummary]:
    """Return at most ``limit`` studies (or only ``study_uids``), newest first, with series, instance and job counts.

    Priors retrieved for other studies are listed only when named in ``study_uids``.
    """
    series_count = select(func.count(Series.id)).where(Series.study_id == Study.id).correlate(Study).scalar_subquery()
    instance_count = (
        select(func.count(Instance.id))
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == Study.id)
        .correlate(Study)
        .scalar_subquery()
    )
    job_count = (
        select(func.count(AnalysisJob.id)).where(AnalysisJob.study_id == Study.id).correlate(Study).scalar_subquery()
    )
    query = select(
        Study.study_uid,
        Study.state,
        Study.version,
        series_count,
        instance_count,
        job_count,
        Study.calling_ae,
        Study.last_received_at,
    ).order_by(Study.last_received_at.desc())
    if study_uids is not None:
        query = query.where(Study.study_uid.in_(study_uids))
    else:
        query = query.where(Study.role == ROLE_CURRENT)
    rows = session.execute(query.limit(limit)).all()
    return [
        StudySummary(uid, str(state), version, series, instances, jobs, ae, last)
        for uid, state, version, series, instances, jobs, ae, last in rows
    ]
