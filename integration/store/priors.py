"""Prior studies: the search for a study's priors, the priors chosen, and the studies reserved to hold them.

A study's search is opened pending with its first instance (:mod:`integration.store.ingest`, same
transaction), claimed by a fetcher (``SKIP LOCKED`` on PostgreSQL, a lease for a fetcher that died) and
finished done or failed; the study's analysis job waits for it, up to a deadline
(:func:`integration.store.jobs.complete_stable_studies`).  A prior retrieved from an archive is stored
into a study reserved for it (role ``prior``): never queued, never on the worklist, only instances sent as
priors may join it.  Every function here adds and flushes; the caller's ``session_scope`` commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from integration.store.reports import InstanceFile
from integration.store.tables import (
    ROLE_PRIOR,
    Instance,
    PriorSearch,
    PriorSearchState,
    PriorState,
    Report,
    ReportRevision,
    ReportStatus,
    RevisionStatus,
    Series,
    Study,
    StudyPrior,
    StudyState,
)

#: Search states a study's analysis job waits for.
SEARCH_OPEN = (PriorSearchState.PENDING, PriorSearchState.RUNNING)

#: ``study_priors`` columns :func:`record_prior` and :func:`update_prior` set, with the string lengths cut to.
_PRIOR_COLUMNS: dict[str, int | None] = {
    "prior_study_id": None,
    "rank": None,
    "source": 64,
    "state": None,
    "reason": 2000,
    "study_date": 8,
    "modality": 64,
    "description": 64,
    "accession": 16,
    "report_text": None,
    "report_source": 8,
    "series_uids": None,
    "instances": None,
    "bytes": None,
    "seconds": None,
    "finished_at": None,
}


@dataclass(frozen=True)
class LocalStudy:
    """A study of the patient that we hold already: a candidate prior that needs no retrieval.

    Its fields named as :class:`integration.priors.archive.StudyMatch`'s mean the same, so matching takes both.

    Attributes
    ----------
    study_id : int
        Row id.
    study_uid : str
        Study Instance UID.
    patient_id : str
        Patient ID.
    issuer : str or None
        Issuer of Patient ID.
    study_date : str or None
        ``YYYYMMDD``.
    modalities : tuple of str
        The modalities of its series (sorted).
    body_parts : tuple of str
        The Body Part Examined values of its series (sorted).
    description : str or None
        Study Description.
    accession : str or None
        Accession Number.
    role : str
        ``current`` (sent to us) or ``prior`` (retrieved earlier as a prior).
    instances : int
        Instances stored (0 for a reserved prior whose retrieval stored nothing).
    has_signed_report : bool
        Whether we hold a signed report of it (:func:`signed_report_text`).
    source : str
        Always ``local``.
    """

    study_id: int
    study_uid: str
    patient_id: str
    issuer: str | None
    study_date: str | None
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    description: str | None
    accession: str | None
    role: str
    instances: int
    has_signed_report: bool
    source: str = "local"


@dataclass(frozen=True)
class PriorView:
    """One chosen prior of a study, as the worker and the review page read it.

    Attributes
    ----------
    id : int
        ``study_priors`` row id.
    prior_study_uid : str
        The prior's Study Instance UID.
    prior_study_id : int or None
        Our copy of it (None when it was never reserved or was purged).
    rank : int
        1 for the most recent chosen prior.
    source : str
        ``local`` or the archive's configured name.
    state : PriorState
        Found, fetching, ready or unavailable.
    reason : str or None
        Why it is unavailable (no patient data).
    study_date, modality, description, accession : str or None
        Its metadata (``YYYYMMDD``; modalities separated by backslashes).
    report_text : str or None
        Its report (untrusted text).
    report_source : str or None
        ``signed``, ``sr``, ``pdf`` or ``fhir``.
    series_uids : tuple of str
        The series chosen for retrieval.
    instances, bytes : int
        What its retrieval stored.
    seconds : float
        How long its retrieval took.
    files : tuple of InstanceFile
        Its stored instances (of ``series_uids`` when any were chosen), in arrival order.
    """

    id: int
    prior_study_uid: str
    prior_study_id: int | None
    rank: int
    source: str
    state: PriorState
    reason: str | None
    study_date: str | None
    modality: str | None
    description: str | None
    accession: str | None
    report_text: str | None
    report_source: str | None
    series_uids: tuple[str, ...]
    instances: int
    bytes: int
    seconds: float
    files: tuple[InstanceFile, ...]


@dataclass(frozen=True)
class PriorsView:
    """A study's prior search and its priors.

    Attributes
    ----------
    study_id : int
        The (current) study.
    search_state : PriorSearchState or None
        None when no search was ever opened (a study from before priors, or a prior itself).
    search_reason : str or None
        Why the search failed or found nothing usable.
    created_at, started_at, finished_at : datetime or None
        When the search was opened, last claimed and finished.
    priors : tuple of PriorView
        By rank.
    """

    study_id: int
    search_state: PriorSearchState | None
    search_reason: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    priors: tuple[PriorView, ...]

    @property
    def ready(self) -> tuple[PriorView, ...]:
        """The priors whose images are on disk."""
        return tuple(prior for prior in self.priors if prior.state is PriorState.READY)


def _insert(session: Session) -> Any:
    """The dialect's INSERT with ``ON CONFLICT`` (PostgreSQL or SQLite)."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def open_search(session: Session, study_id: int, now: datetime) -> bool:
    """Open a pending prior search for a study unless it has one; return whether one was opened."""
    inserted = session.execute(
        _insert(session)(PriorSearch)
        .values(study_id=study_id, state=PriorSearchState.PENDING.value, created_at=now, attempts=0)
        .on_conflict_do_nothing(index_elements=["study_id"])
        .returning(PriorSearch.id)
    ).scalar_one_or_none()
    return inserted is not None


def claim_searches(session: Session, now: datetime, limit: int = 10, lease_seconds: float = 300.0) -> list[int]:
    """Claim pending searches, and running ones whose fetcher let the lease run out; return their study ids.

    Each claimed search becomes ``running`` with ``started_at = now`` and one more attempt.  On PostgreSQL
    the rows are locked with ``SKIP LOCKED``, so several fetchers share the work.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    now : datetime
        Aware UTC.
    limit : int
        Most searches claimed.
    lease_seconds : float
        A running search started longer ago than this is claimed again (its fetcher died).
    """
    expired = and_(
        PriorSearch.state == PriorSearchState.RUNNING,
        PriorSearch.started_at < now - timedelta(seconds=lease_seconds),
    )
    searches = session.scalars(
        select(PriorSearch)
        .where(or_(PriorSearch.state == PriorSearchState.PENDING, expired))
        .order_by(PriorSearch.created_at, PriorSearch.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for search in searches:
        search.state = PriorSearchState.RUNNING
        search.started_at = now
        search.attempts += 1
    session.flush()
    return [search.study_id for search in searches]


def finish_search(session: Session, study_id: int, state: PriorSearchState, reason: str | None, now: datetime) -> None:
    """End a study's search as ``done`` or ``failed`` with its reason (no patient data); the job then goes ahead.

    Raises
    ------
    ValueError
        If ``state`` is not an end state.
    """
    if state not in (PriorSearchState.DONE, PriorSearchState.FAILED):
        raise ValueError(f"a search ends done or failed, not {state.value}")
    search = session.scalar(select(PriorSearch).where(PriorSearch.study_id == study_id))
    if search is None:
        search = PriorSearch(study_id=study_id, created_at=now, attempts=0)
        session.add(search)
    search.state = state
    search.finished_at = now
    search.reason = reason[:2000] if reason else None
    session.flush()


def _cut(values: dict[str, Any]) -> dict[str, Any]:
    unknown = set(values) - set(_PRIOR_COLUMNS)
    if unknown:
        raise TypeError(f"not a study_priors column: {', '.join(sorted(unknown))}")
    cut = {}
    for name, value in values.items():
        length = _PRIOR_COLUMNS[name]
        if name == "series_uids":
            value = list(value)
        elif length is not None and isinstance(value, str):
            value = value[:length]
        cut[name] = value
    return cut


def record_prior(
    session: Session, study_id: int, prior_study_uid: str, *, source: str, now: datetime, **values: Any
) -> int:
    """Record a prior chosen for a study (or update the one recorded for that UID); return its row id.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study_id : int
        The current study.
    prior_study_uid : str
        The prior's Study Instance UID.
    source : str
        ``local`` or the archive's name.
    now : datetime
        Aware UTC (``created_at``).
    **values
        Other ``study_priors`` columns: ``prior_study_id``, ``rank``, ``state``, ``reason``, ``study_date``,
        ``modality``, ``description``, ``accession``, ``report_text``, ``report_source``, ``series_uids``,
        ``instances``, ``bytes``, ``seconds``, ``finished_at``; strings are cut to the column lengths.

    Raises
    ------
    TypeError
        For a name that is not such a column.
    """
    columns = _cut({"source": source, **values})
    prior = session.scalar(
        select(StudyPrior).where(StudyPrior.study_id == study_id, StudyPrior.prior_study_uid == prior_study_uid)
    )
    if prior is None:
        prior = StudyPrior(study_id=study_id, prior_study_uid=prior_study_uid, created_at=now)
        session.add(prior)
    for name, value in columns.items():
        setattr(prior, name, value)
    session.flush()
    return prior.id


def update_prior(session: Session, prior_id: int, **values: Any) -> None:
    """Set columns of a recorded prior (its state, reason, report, retrieval counts ...).

    Raises
    ------
    TypeError
        For a name that is not a settable ``study_priors`` column.
    LookupError
        If there is no such prior.
    """
    columns = _cut(values)
    prior = session.get(StudyPrior, prior_id)
    if prior is None:
        raise LookupError(f"no prior {prior_id}")
    for name, value in columns.items():
        setattr(prior, name, value)
    session.flush()


def reserve_prior_study(
    session: Session,
    study_uid: str,
    site_id: int | None,
    calling_ae: str,
    now: datetime,
    *,
    patient_id: str | None = None,
    issuer: str | None = None,
    study_date: str | None = None,
    description: str | None = None,
    accession: str | None = None,
) -> tuple[int, bool]:
    """Reserve a study row to receive a prior (role ``prior``), unless that study exists; return (id, already held).

    A new row belongs to ``site_id`` (the current study's site), carries the archive's metadata (the worklist
    attributes a prior never gets otherwise, so a later study of the patient finds it locally) and stays
    ``receiving``: nothing ever queues a prior.  An existing study is used as it is (a current study is never
    made a prior).

    Returns
    -------
    tuple of (int, bool)
        The study's row id, and whether we hold it already: True for a study of our own (role ``current``,
        instances sent as priors are refused there) and for a prior with stored instances; False for a new
        reservation or one whose earlier retrieval stored nothing.
    """
    row = {
        "study_uid": study_uid,
        "state": StudyState.RECEIVING.value,
        "version": 1,
        "calling_ae": calling_ae[:16],
        "first_received_at": now,
        "last_received_at": now,
        "stable_after": now,
        "updated_at": now,
        "site_id": site_id,
        "role": ROLE_PRIOR,
        "source": "dicom",
        "patient_id": (patient_id or None) and patient_id[:64],
        "issuer_of_patient_id": (issuer or None) and issuer[:64],
        "study_date": (study_date or None) and study_date[:8],
        "study_description": (description or None) and description[:64],
        "accession_number": (accession or None) and accession[:16],
    }
    created = session.execute(
        _insert(session)(Study).values(**row).on_conflict_do_nothing(index_elements=["study_uid"]).returning(Study.id)
    ).scalar_one_or_none()
    if created is not None:
        return int(created), False
    study_id, role = session.execute(select(Study.id, Study.role).where(Study.study_uid == study_uid)).one()
    if role != ROLE_PRIOR:
        return int(study_id), True
    stored = session.scalar(select(exists().where(Instance.series_id == Series.id, Series.study_id == study_id)))
    return int(study_id), bool(stored)


def _same_issuer(issuer: str | None) -> ColumnElement[bool]:
    """Issuer-aware patient match: equal issuers, or both missing (another issuer's Patient ID is another patient)."""
    if issuer:
        return Study.issuer_of_patient_id == issuer
    return or_(Study.issuer_of_patient_id.is_(None), Study.issuer_of_patient_id == "")


def local_candidates(
    session: Session, patient_id: str, issuer: str | None, site_id: int | None, exclude_study_id: int | None
) -> list[LocalStudy]:
    """Return the patient's other studies that we hold at the site, newest study date first.

    The patient is the Patient ID with its issuer (equal issuers, or both without one); a name is never
    matched.  Any role: a prior retrieved for an earlier study serves a later one too.

    Parameters
    ----------
    patient_id : str
        Patient ID of the current study (empty: no candidates).
    issuer : str or None
        Its Issuer of Patient ID.
    site_id : int or None
        The current study's site (None: studies without a site).
    exclude_study_id : int or None
        The current study.
    """
    if not patient_id:
        return []
    site = Study.site_id == site_id if site_id is not None else Study.site_id.is_(None)
    query = select(Study).where(Study.patient_id == patient_id, _same_issuer(issuer), site)
    if exclude_study_id is not None:
        query = query.where(Study.id != exclude_study_id)
    studies = session.scalars(query.order_by(Study.study_date.desc(), Study.id.desc())).all()
    ids = [study.id for study in studies]
    series: dict[int, list[tuple[str | None, str | None]]] = {}
    for study_id, modality, body_part in session.execute(
        select(Series.study_id, Series.modality, Series.body_part).where(Series.study_id.in_(ids))
    ):
        series.setdefault(study_id, []).append((modality, body_part))
    counts = dict(
        session.execute(
            select(Series.study_id, func.count(Instance.id))
            .join(Instance, Instance.series_id == Series.id)
            .where(Series.study_id.in_(ids))
            .group_by(Series.study_id)
        ).all()
    )
    signed = set(
        session.scalars(select(Report.study_id).where(Report.study_id.in_(ids), Report.status == ReportStatus.SIGNED))
    )
    return [
        LocalStudy(
            study_id=study.id,
            study_uid=study.study_uid,
            patient_id=patient_id,
            issuer=study.issuer_of_patient_id or None,
            study_date=study.study_date,
            modalities=_distinct(m for m, _ in series.get(study.id, ())),
            body_parts=_distinct(b for _, b in series.get(study.id, ())),
            description=study.study_description,
            accession=study.accession_number,
            role=study.role,
            instances=int(counts.get(study.id, 0)),
            has_signed_report=study.id in signed,
        )
        for study in studies
    ]


def _distinct(values: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(sorted({value for value in values if value}))


def signed_report_text(session: Session, study_id: int) -> str | None:
    """Return the text of a study's signed report (its newest signed version), or None when it has none."""
    return session.scalar(
        select(ReportRevision.text)
        .join(Report, ReportRevision.report_id == Report.id)
        .where(
            Report.study_id == study_id,
            Report.status == ReportStatus.SIGNED,
            ReportRevision.status == RevisionStatus.SIGNED,
        )
        .order_by(ReportRevision.version.desc())
        .limit(1)
    )


def prior_files(session: Session, study_id: int, series_uids: Sequence[str] = ()) -> list[InstanceFile]:
    """Return a prior's stored instances (only of ``series_uids`` when given), in arrival order."""
    query = (
        select(Instance.storage_path, Instance.sop_instance_uid, Series.series_uid, Series.modality, Series.body_part)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
    )
    if series_uids:
        query = query.where(Series.series_uid.in_(list(series_uids)))
    return [InstanceFile(*row) for row in session.execute(query.order_by(Instance.id)).all()]


def priors_view(session: Session, study_id: int) -> PriorsView:
    """Return a study's prior search and its priors (by rank), each with its stored instance files."""
    search = session.scalar(select(PriorSearch).where(PriorSearch.study_id == study_id))
    rows = session.scalars(
        select(StudyPrior).where(StudyPrior.study_id == study_id).order_by(StudyPrior.rank, StudyPrior.id)
    ).all()
    priors = tuple(
        PriorView(
            id=row.id,
            prior_study_uid=row.prior_study_uid,
            prior_study_id=row.prior_study_id,
            rank=row.rank,
            source=row.source,
            state=PriorState(row.state),
            reason=row.reason,
            study_date=row.study_date,
            modality=row.modality,
            description=row.description,
            accession=row.accession,
            report_text=row.report_text,
            report_source=row.report_source,
            series_uids=tuple(row.series_uids or ()),
            instances=row.instances,
            bytes=row.bytes,
            seconds=row.seconds,
            files=tuple(prior_files(session, row.prior_study_id, row.series_uids or ()))
            if row.prior_study_id is not None
            else (),
        )
        for row in rows
    )
    return PriorsView(
        study_id=study_id,
        search_state=PriorSearchState(search.state) if search is not None else None,
        search_reason=search.reason if search is not None else None,
        created_at=search.created_at if search is not None else None,
        started_at=search.started_at if search is not None else None,
        finished_at=search.finished_at if search is not None else None,
        priors=priors,
    )
