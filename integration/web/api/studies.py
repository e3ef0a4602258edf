"""The worklist API: ``GET /api/studies`` and ``GET /api/studies/{study_uid}`` for radiologists and admins.

Object-level authorization: a radiologist sees only the studies of their own site; a study of another
site answers 404, exactly like a study that does not exist.  Administrators see every site.  The worklist
takes the same filters and sort orders as the worklist page (:class:`WorklistFilter`); bad values answer
422 naming the parameter.  Queries are built with SQLAlchemy expressions only, never from strings.

Search (``q``) finds a study by any part of the patient's name (each word of the query must occur, in any
order and case: ``doe``, ``jane doe`` and ``Doe^Jane`` all find ``Doe^Jane``), patient ID, accession number or
study description; LIKE wildcards typed are matched as themselves.  A worklist answers one page: ``limit`` rows
(:data:`WORKLIST_PAGE` unless asked, at most :data:`WORKLIST_LIMIT`) from ``offset``; the JSON answer carries the
number of matching studies in the ``X-Total-Count`` header.  Each row says who is reading the study now (a live
claim, :mod:`integration.store.claims`); ``claim=available`` leaves out the studies others are reading and
``claim=mine`` keeps only the user's own.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from integration.store.audit import add_event
from integration.store.order_tables import Order
from integration.store.reading_tables import StudyClaim
from integration.store.shadow import reviewable
from integration.store.tables import (
    ROLE_CURRENT,
    Instance,
    Report,
    ReportStatus,
    Series,
    Site,
    Study,
    StudyState,
    User,
    utcnow,
)
from integration.store.work import skip_reasons
from integration.web import schemas
from integration.web.deps import AppSettings, CurrentUser, DbSession, Reviewer, StudyUid, client_address
from integration.web.pages.templating import display_zone
from integration.web.security.access import study_for, visible

#: Most rows one worklist answer carries.
WORKLIST_LIMIT = 500
#: Rows of one worklist page unless ``limit`` says otherwise: a morning's list at a glance, quick to render.
WORKLIST_PAGE = 100
#: Longest search text.
MAX_SEARCH = 200
#: Where a search splits the query into words: spaces, the DICOM name separator ``^`` and commas (``Doe, Jane``).
_WORDS = re.compile(r"[\s^,]+")

_CODE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


class ReportFilter(StrEnum):
    """The report status a worklist row may be filtered by (``none``: no report yet)."""

    DRAFT = "draft"
    SIGNED = "signed"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    WITHDRAWN = "withdrawn"
    NONE = "none"


class WorklistSort(StrEnum):
    """Worklist orders: ``priority`` (stat first, then newest), ``received`` (newest first), ``oldest``, ``status``."""

    PRIORITY = "priority"
    RECEIVED = "received"
    OLDEST = "oldest"
    STATUS = "status"


class ClaimFilter(StrEnum):
    """Worklist rows by claim: ``available`` (nobody else is reading them) or ``mine`` (the user is)."""

    AVAILABLE = "available"
    MINE = "mine"


class WorklistFilter(BaseModel):
    """The worklist's query parameters (empty values, as an HTML form sends them, mean "any").

    Attributes
    ----------
    q : str or None
        Search text: words of the patient's name, or part of the patient ID, accession number or description.
    status : ReportFilter or None
        Status of the study's newest report.
    modality : str or None
        A modality of one of the study's series (``CT``, ``MR`` ...).
    priority : {"routine", "stat"} or None
        The study's priority.
    received_from, received_to : datetime.date or None
        Days (both inclusive, in the hospital's zone: ``timezone``) the study's newest instance arrived in.
    site : str or None
        Site code (administrators; others see their own site only in any case).
    claim : ClaimFilter or None
        Studies nobody else is reading, or those the user is reading.
    sort : WorklistSort
        The order.
    limit : int
        Most rows (one page).
    offset : int
        Rows skipped (the page's start).
    """

    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(default=None, max_length=MAX_SEARCH)
    status: ReportFilter | None = None
    modality: str | None = Field(default=None, max_length=16)
    priority: Literal["routine", "stat"] | None = None
    received_from: date | None = None
    received_to: date | None = None
    site: str | None = Field(default=None, max_length=16)
    claim: ClaimFilter | None = None
    sort: WorklistSort = WorklistSort.PRIORITY
    limit: int = Field(default=WORKLIST_PAGE, ge=1, le=WORKLIST_LIMIT)
    offset: int = Field(default=0, ge=0, le=10_000_000)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_any(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("q")
    @classmethod
    def _search(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(not ch.isprintable() for ch in value):
            raise ValueError("the search may not contain control characters")
        return " ".join(value.split()) or None

    @field_validator("modality", "site")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _CODE.fullmatch(value):
            raise ValueError("use letters, digits, '-' or '_' (at most 16)")
        return value.upper()

    @model_validator(mode="after")
    def _dates_in_order(self) -> WorklistFilter:
        if self.received_from and self.received_to and self.received_from > self.received_to:
            raise ValueError("received_from is after received_to")
        return self


#: Order of report statuses in the ``status`` sort: what needs reading first.
_STATUS_ORDER = {
    ReportStatus.DRAFT.value: 0,
    ReportStatus.REJECTED.value: 2,
    ReportStatus.SUPERSEDED.value: 3,
    ReportStatus.WITHDRAWN.value: 3,
}


_Claimer = aliased(User)


def _matching(
    query: Select[Any], user: CurrentUser, filters: WorklistFilter, now: datetime, zone: tzinfo | None = UTC
) -> Select[Any]:
    """Join what the filters need (newest report, site, order, live claim and its holder) and filter.

    ``zone`` is the one the received days are days of (:func:`_day_start`).
    """
    latest = aliased(Report)
    newest = select(func.max(latest.id)).where(latest.study_id == Study.id, reviewable(latest))
    newest_id = newest.correlate(Study).scalar_subquery()
    query = (
        query.outerjoin(Site, Study.site_id == Site.id)
        .outerjoin(Report, Report.id == newest_id)
        .outerjoin(Order, Order.id == Study.order_id)
        .outerjoin(StudyClaim, and_(StudyClaim.study_id == Study.id, StudyClaim.expires_at > now))
        .outerjoin(_Claimer, _Claimer.id == StudyClaim.user_id)
        .where(Study.role == ROLE_CURRENT)  # a prior is shown beside its study, never on its own
    )
    query = _filtered(visible(query, user), filters, zone)
    if filters.claim is ClaimFilter.AVAILABLE:
        query = query.where(or_(StudyClaim.user_id.is_(None), StudyClaim.user_id == user.id))
    elif filters.claim is ClaimFilter.MINE:
        query = query.where(StudyClaim.user_id == user.id)
    return query


def worklist_total(
    session: Session, user: CurrentUser, filters: WorklistFilter | None = None, zone: tzinfo | None = UTC
) -> int:
    """Return how many studies match the filters (all pages; received days in ``zone``)."""
    filters = filters or WorklistFilter()
    query = _matching(select(func.count(Study.id)).select_from(Study), user, filters, utcnow(), zone)
    return int(session.scalar(query) or 0)


def worklist(
    session: Session,
    user: CurrentUser,
    filters: WorklistFilter | None = None,
    limit: int | None = None,
    zone: tzinfo | None = UTC,
) -> list[schemas.WorklistRow]:
    """Return one page of the studies the user may review, filtered and sorted (``limit`` overrides the filters').

    The received days of the filters are days in ``zone``, the hospital's (None: the server's local zone).
    """
    filters = filters or WorklistFilter()
    series_count = select(func.count(Series.id)).where(Series.study_id == Study.id).correlate(Study).scalar_subquery()
    columns = (Study, Site.code, series_count, Report.id, Report.status, Order)
    claim_columns = (_Claimer.username, _Claimer.person_name, StudyClaim.expires_at)
    query = _matching(select(*columns, *claim_columns).select_from(Study), user, filters, utcnow(), zone)
    query = query.order_by(*_order(filters.sort)).limit(limit or filters.limit).offset(filters.offset)
    rows = session.execute(query).all()
    modalities: dict[int, set[str]] = {}
    study_ids = [study.id for study, *_ in rows]
    for study_id, modality in session.execute(
        select(Series.study_id, Series.modality).where(Series.study_id.in_(study_ids), Series.modality.is_not(None))
    ):
        if modality:
            modalities.setdefault(study_id, set()).add(modality)
    skipped = skip_reasons(session, [study.study_uid for study, *_ in rows if study.state == StudyState.SKIPPED])
    return [
        schemas.WorklistRow(
            **_header(study, site_code, order),
            modalities=sorted(modalities.get(study.id, ())),
            series_count=series,
            last_received_at=study.last_received_at,
            report_id=report_id,
            report_status=ReportStatus(report_status).value if report_status is not None else None,
            claimed_by=claimer,
            claimed_by_name=claimer_name,
            claim_expires_at=claim_expires,
            state_reason=skipped.get(study.study_uid),
        )
        for study, site_code, series, report_id, report_status, order, claimer, claimer_name, claim_expires in rows
    ]


def _header(study: Study, site_code: str | None, order: Order | None) -> dict[str, Any]:
    """The fields of :class:`~integration.web.schemas.StudyHeader` of a study and its linked order."""
    return {
        "study_uid": study.study_uid,
        "state": study.state.value,
        "priority": study.priority,
        "source": study.source,
        "version": study.version,
        "site": site_code,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "patient_birth_date": study.patient_birth_date,
        "patient_sex": study.patient_sex,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "order": _order_summary(order),
        "order_problem": study.order_problem,
        "critical_reason": study.critical_reason,
    }


def _order_summary(order: Order | None) -> schemas.StudyOrder | None:
    """What the worklist and the study answer show of a linked order."""
    if order is None:
        return None
    return schemas.StudyOrder(
        accession_number=order.accession_number,
        indication=order.indication,
        priority=order.priority,
        procedure=order.procedure_text or order.procedure_code,
        ordering_provider=order.ordering_provider,
        status=order.status,
    )


def _day_start(day: date, zone: tzinfo | None) -> datetime:
    """The first moment of ``day`` in ``zone`` (None: the server's local zone), in UTC."""
    start = datetime.combine(day, time(), zone) if zone is not None else datetime.combine(day, time()).astimezone()
    return start.astimezone(UTC)


def _filtered(query: Select[Any], filters: WorklistFilter, zone: tzinfo | None = UTC) -> Select[Any]:
    """Add the filter conditions (the query joins the newest report as :class:`Report` and :class:`Site`)."""
    if filters.status is ReportFilter.NONE:
        query = query.where(Report.id.is_(None))
    elif filters.status is not None:
        query = query.where(Report.status == ReportStatus(filters.status.value))
    if filters.modality is not None:
        query = query.where(
            exists(select(Series.id).where(Series.study_id == Study.id, Series.modality == filters.modality))
        )
    if filters.priority is not None:
        query = query.where(Study.priority == filters.priority)
    if filters.received_from is not None:
        query = query.where(Study.last_received_at >= _day_start(filters.received_from, zone))
    if filters.received_to is not None:
        query = query.where(Study.last_received_at < _day_start(filters.received_to + timedelta(days=1), zone))
    if filters.site is not None:
        query = query.where(Site.code == filters.site)
    for word in _WORDS.split(filters.q or ""):
        if word:
            query = query.where(_search_word(word))
    return query


def _search_word(word: str) -> ColumnElement[bool]:
    """A study matches a word of the search in its patient's name, patient ID, accession number or description."""
    pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    columns = (Study.patient_name, Study.patient_id, Study.accession_number, Study.study_description)
    return or_(*(column.ilike(pattern, escape="\\") for column in columns))


def _order(sort: WorklistSort) -> list[ColumnElement[Any]]:
    """Return the ORDER BY terms of a sort order (ties always broken by newest, then id)."""
    stat_first = case((Study.priority == "stat", 0), else_=1)
    newest: list[ColumnElement[Any]] = [Study.last_received_at.desc(), Study.id.desc()]
    if sort is WorklistSort.RECEIVED:
        return newest
    if sort is WorklistSort.OLDEST:
        return [Study.last_received_at.asc(), Study.id.asc()]
    if sort is WorklistSort.STATUS:
        status_rank = case(
            *((Report.status == ReportStatus(value), rank) for value, rank in _STATUS_ORDER.items()),
            (Report.id.is_(None), 1),
            else_=4,
        )
        return [status_rank, stat_first, *newest]
    return [stat_first, *newest]


def study_detail(session: Session, study: Study) -> schemas.StudyDetail:
    """Return a study (already authorized) with its series and reports."""
    instance_counts = dict(
        session.execute(
            select(Series.id, func.count(Instance.id))
            .outerjoin(Instance, Instance.series_id == Series.id)
            .where(Series.study_id == study.id)
            .group_by(Series.id)
        ).all()
    )
    site_code = session.scalar(select(Site.code).where(Site.id == study.site_id)) if study.site_id else None
    reports = session.scalars(select(Report).where(Report.study_id == study.id, reviewable()).order_by(Report.id)).all()
    order = session.get(Order, study.order_id) if study.order_id is not None else None
    detail = {
        **_header(study, site_code, order),
        "last_received_at": study.last_received_at.isoformat(),
        "series": [
            {
                "series_uid": series.series_uid,
                "modality": series.modality,
                "body_part": series.body_part,
                "series_number": series.series_number,
                "instances": instance_counts.get(series.id, 0),
            }
            for series in sorted(study.series, key=lambda s: (s.series_number is None, s.series_number or 0, s.id))
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
                "evidence": report.evidence,
                "created_at": report.created_at.isoformat(),
            }
            for report in reports
        ],
    }
    return schemas.StudyDetail.model_validate(detail)


def record_study_view(session: Session, user: CurrentUser, request: Request, study_uid: str, via: str) -> None:
    """Audit that a user opened a study (``study.view`` via ``api`` or ``page``; no patient data in the record)."""
    add_event(
        session,
        actor=user.username,
        action="study.view",
        object_type="study",
        object_id=study_uid,
        source=client_address(request),
        detail={"via": via},
    )


def studies_router() -> APIRouter:
    """Build the worklist router: ``GET /api/studies`` and ``GET /api/studies/{study_uid}``."""
    router = APIRouter(prefix="/api", tags=["review"])

    @router.get("/studies", summary="Worklist")
    def list_studies(
        response: Response,
        session: DbSession,
        settings: AppSettings,
        user: Reviewer,
        filters: Annotated[WorklistFilter, Query()],
    ) -> list[schemas.WorklistRow]:
        """One page of the studies of the user's site (administrators: all sites), filtered; stat first, then newest.

        The number of matching studies (all pages) is in the ``X-Total-Count`` header.
        """
        zone = display_zone(settings.timezone)
        response.headers["X-Total-Count"] = str(worklist_total(session, user, filters, zone))
        return worklist(session, user, filters, zone=zone)

    @router.get("/studies/{study_uid}", summary="One study with its reports")
    def get_study(study_uid: StudyUid, request: Request, session: DbSession, user: Reviewer) -> schemas.StudyDetail:
        """One study of the user's site with its series and reports; 404 for any other.  Audited (study.view)."""
        detail = study_detail(session, study_for(session, user, study_uid))
        record_study_view(session, user, request, study_uid, "api")
        return detail

    return router
