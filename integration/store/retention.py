"""Which studies the retention policies let go, and the purge's row steps (mark, check, delete).

A study's reading ends when its report of record is signed or its draft rejected (the latest such
revision).  It is *eligible* ``instance_days`` after that (its instances go) and ``report_days`` after it
(everything goes), unless it is live: receiving, stable, queued, running or held, with a job queued or
running, with a primary draft awaiting review, or a prior of a study that is.  Priors (``role`` prior) have
no reading of their own: they go with the studies that fetched them, once every one of those is purged or
eligible; a prior no study refers to any longer follows its own site's policy from its last arrival.

The purge never leaves a row without its file or a file without its row for good: :func:`mark` commits a
:class:`~integration.store.retention_tables.StudyPurge` row before any file is touched; the caller deletes
the files; :func:`delete_marked_rows` deletes the rows and the mark in one transaction, the study row
locked.  A mark whose study received an instance since (its version moved) is called off, unless files
are already gone (a crash after deleting some): then the files of the instances older than the mark go
with their rows, and the new ones stay.  These functions add and flush; the caller commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.orm import Session

from integration.retention_settings import RetentionPolicy, policy_for
from integration.store.retention_tables import PurgeScope, StudyPurge
from integration.store.tables import (
    ROLE_PRIOR,
    AnalysisJob,
    Instance,
    JobState,
    PriorState,
    Report,
    ReportPurpose,
    ReportRevision,
    ReportStatus,
    RevisionStatus,
    Series,
    Site,
    Study,
    StudyPrior,
    StudyState,
)
from integration.store.viewer_tables import ReportObject

#: Study states that mean the study is still being received, assembled, drafted or held.
LIVE_STATES = (StudyState.RECEIVING, StudyState.STABLE, StudyState.QUEUED, StudyState.RUNNING, StudyState.HELD)


@dataclass(frozen=True)
class Candidate:
    """A study the policies let go now.

    Attributes
    ----------
    study_id, study_uid : int, str
        Which study.
    role : str
        ``current`` or ``prior``.
    scope : PurgeScope
        Its instances only, or the whole study.
    instances, size_bytes : int
        What its instance files hold.
    """

    study_id: int
    study_uid: str
    role: str
    scope: PurgeScope
    instances: int
    size_bytes: int
    #: When its reading ended (a prior: its latest referrer's, or its last arrival): pressure takes the oldest first.
    read_at: datetime | None = None


@dataclass(frozen=True)
class StudyFiles:
    """The files of one marked study: instance files (under the instance store) and ours (under the data folder).

    ``instance_paths`` holds only the instances received up to the mark when the purge is partial.
    """

    instance_paths: list[str]
    data_paths: list[str]


def _reading_ends(session: Session) -> dict[int, datetime]:
    """Return when each study's reading ended (latest signed or rejected revision of a primary report)."""
    ended = (
        select(Report.study_id, func.max(ReportRevision.created_at))
        .join(ReportRevision, ReportRevision.report_id == Report.id)
        .where(
            Report.purpose == ReportPurpose.PRIMARY,
            Report.status.in_((ReportStatus.SIGNED, ReportStatus.REJECTED)),
            ReportRevision.status.in_((RevisionStatus.SIGNED, RevisionStatus.REJECTED)),
        )
        .group_by(Report.study_id)
    )
    return {int(study_id): at for study_id, at in session.execute(ended) if at is not None}


def live_studies(session: Session) -> set[int]:
    """Return the ids of studies being received, drafted, held or reviewed (priors aside: they stay receiving)."""
    live = set(session.scalars(select(Study.id).where(Study.role != ROLE_PRIOR, Study.state.in_(LIVE_STATES))).all())
    live |= set(
        session.scalars(
            select(AnalysisJob.study_id).where(AnalysisJob.state.in_((JobState.QUEUED, JobState.RUNNING)))
        ).all()
    )
    live |= set(
        session.scalars(
            select(Report.study_id).where(Report.purpose == ReportPurpose.PRIMARY, Report.status == ReportStatus.DRAFT)
        ).all()
    )
    return live


def eligible_studies(
    session: Session, policies: Sequence[RetentionPolicy], now: datetime, *, early: bool = False
) -> list[Candidate]:
    """Return the studies the policies let go at ``now``, with what goes of each.

    With ``early`` (disk pressure, ``purge_early_under_pressure``) the instances of every read study a policy
    covers are eligible before their ``instance_days``; the live ones and the never read ones still are not.

    Parameters
    ----------
    session : Session
        An open session.
    policies : sequence of RetentionPolicy
        ``Settings.retention``; empty: nothing is eligible.
    now : datetime
        The time the days count to.

    Returns
    -------
    list of Candidate
        Current studies first, then priors, oldest study id first.
    """
    if not policies:
        return []
    ends = _reading_ends(session)
    live = live_studies(session)
    held = (
        select(
            Study.id,
            Study.study_uid,
            Study.role,
            Study.source,
            Site.code,
            Study.last_received_at,
            func.count(Instance.id),
            func.coalesce(func.sum(Instance.size_bytes), 0),
        )
        .outerjoin(Site, Site.id == Study.site_id)
        .outerjoin(Series, Series.study_id == Study.id)
        .outerjoin(Instance, Instance.series_id == Series.id)
        .group_by(Study.id, Study.study_uid, Study.role, Study.source, Site.code, Study.last_received_at)
        .order_by(Study.id)
    )
    referrers: dict[int, set[int]] = {}
    fetching: set[int] = set()
    for study_id, prior_id, state in session.execute(
        select(StudyPrior.study_id, StudyPrior.prior_study_id, StudyPrior.state).where(
            StudyPrior.prior_study_id.is_not(None)
        )
    ):
        if prior_id is None:
            continue
        referrers.setdefault(prior_id, set()).add(study_id)
        if state in (PriorState.FOUND, PriorState.FETCHING):
            fetching.add(prior_id)
    chosen: dict[int, Candidate] = {}
    priors = []
    instances_of: dict[int, int] = {}
    for study_id, uid, role, source, site, last_received, count, size in session.execute(held):
        instances_of[study_id] = int(count)
        if role == ROLE_PRIOR:
            priors.append((study_id, uid, source, site, last_received, int(count), int(size)))
            continue
        policy = policy_for(policies, site, source)
        ended = ends.get(study_id)
        if policy is None or ended is None or study_id in live or referrers.get(study_id, set()) & live:
            continue
        scope = _scope(policy, ended, now, int(count))
        if scope is None and early and count:
            scope = PurgeScope.INSTANCES
        if scope is not None:
            chosen[study_id] = Candidate(study_id, uid, role, scope, int(count), int(size), ended)
    for study_id, uid, source, site, last_received, count, size in priors:
        if study_id in fetching:
            continue
        refs = referrers.get(study_id, set())
        if refs:
            if any(ref not in chosen and instances_of.get(ref, 0) > 0 for ref in refs):
                continue  # a study that fetched it still holds its images
            whole = all(ref in chosen and chosen[ref].scope is PurgeScope.STUDY for ref in refs)
            scope = PurgeScope.STUDY if whole else (PurgeScope.INSTANCES if count else None)
            read_at = max((ends[ref] for ref in refs if ref in ends), default=last_received)
        else:
            policy = policy_for(policies, site, source)
            due = policy is not None and last_received <= now - timedelta(days=policy.instance_days)
            scope = PurgeScope.STUDY if due else None
            read_at = last_received
        if scope is not None:
            chosen[study_id] = Candidate(study_id, uid, ROLE_PRIOR, scope, count, size, read_at)
    return list(chosen.values())


def _scope(policy: RetentionPolicy, ended: datetime, now: datetime, instances: int) -> PurgeScope | None:
    if policy.report_days is not None and ended <= now - timedelta(days=policy.report_days):
        return PurgeScope.STUDY
    if instances and ended <= now - timedelta(days=policy.instance_days):
        return PurgeScope.INSTANCES
    return None


def mark(session: Session, candidates: Sequence[Candidate], now: datetime) -> int:
    """Mark candidates as purges under way (a study already marked keeps its mark); return how many were added."""
    existing = set(session.scalars(select(StudyPurge.study_id)).all())
    added = 0
    for candidate in candidates:
        if candidate.study_id in existing:
            continue
        version = session.scalar(select(Study.version).where(Study.id == candidate.study_id))
        if version is None:
            continue
        session.add(
            StudyPurge(
                study_id=candidate.study_id,
                study_uid=candidate.study_uid,
                scope=candidate.scope,
                marked_at=now,
                study_version=version,
            )
        )
        added += 1
    session.flush()
    return added


def marked_purges(session: Session) -> list[StudyPurge]:
    """Return the purges under way, oldest mark first."""
    return list(session.scalars(select(StudyPurge).order_by(StudyPurge.id)).all())


def lock_study(session: Session, purge_id: int) -> StudyPurge | None:
    """Lock a marked study's row for the rest of the transaction (an arriving instance waits); None: no mark."""
    purge = session.get(StudyPurge, purge_id)
    if purge is None:
        return None
    # a write takes the lock on every backend (SQLite: the database; PostgreSQL: the study's row)
    session.execute(update(Study).where(Study.id == purge.study_id).values(version=Study.version))
    session.refresh(purge)
    return purge


def moved_on(session: Session, purge: StudyPurge) -> bool:
    """Tell whether the marked study received an instance since its mark (its version moved, or a later arrival)."""
    version = session.scalar(select(Study.version).where(Study.id == purge.study_id))
    later = session.scalar(
        select(func.count())
        .select_from(Instance)
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == purge.study_id, Instance.received_at > purge.marked_at)
    )
    return bool(version != purge.study_version or later)


def files_of(session: Session, purge: StudyPurge, *, received_before: datetime | None = None) -> StudyFiles:
    """Return the files a purge removes (instances received up to ``received_before`` only, when given)."""
    instances = (
        select(Instance.storage_path)
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == purge.study_id)
    )
    if received_before is not None:
        instances = instances.where(Instance.received_at <= received_before)
    data: list[str] = []
    if purge.scope is PurgeScope.STUDY:
        reports = select(Report.id).where(Report.study_id == purge.study_id)
        data += [p for p in session.scalars(select(Report.sr_path).where(Report.study_id == purge.study_id)) if p]
        data += [
            p for p in session.scalars(select(ReportRevision.sr_path).where(ReportRevision.report_id.in_(reports))) if p
        ]
        data += [p for p in session.scalars(select(ReportObject.path).where(ReportObject.report_id.in_(reports))) if p]
    return StudyFiles(list(session.scalars(instances).all()), data)


def delete_marked_rows(session: Session, purge: StudyPurge, *, received_before: datetime | None = None) -> int:
    """Delete the rows a purge removes and its mark; return the instance rows deleted.

    With ``received_before`` (a partial purge) only the instances received up to then go, and the study
    stays; otherwise an instances purge deletes the study's series and instances, a study purge the study.
    """
    in_study = select(Series.id).where(Series.study_id == purge.study_id)
    old = select(Instance.id).where(Instance.series_id.in_(in_study))
    if received_before is not None:
        old = old.where(Instance.received_at <= received_before)
    count = session.scalar(select(func.count()).select_from(old.subquery())) or 0
    session.execute(delete(Instance).where(Instance.id.in_(old)))
    if purge.scope is PurgeScope.STUDY and received_before is None:
        session.execute(delete(Study).where(Study.id == purge.study_id))  # cascades, the mark included
    else:
        session.execute(
            delete(Series).where(Series.study_id == purge.study_id, ~exists().where(Instance.series_id == Series.id))
        )
        session.execute(delete(StudyPurge).where(StudyPurge.id == purge.id))
    session.flush()
    return int(count)


def call_off(session: Session, purge: StudyPurge) -> None:
    """Remove a mark without deleting anything (its study received an instance before a file was touched)."""
    session.execute(delete(StudyPurge).where(StudyPurge.id == purge.id))
    session.flush()
