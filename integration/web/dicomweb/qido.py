"""QIDO-RS (PS3.18 10.6): search for studies, series and instances under ``/dicomweb``.

Viewers (OHIF, Orthanc's DICOMweb client, dicomweb-client) find what we hold here before retrieving it.
Matching and parameters are checked in :mod:`integration.web.dicomweb.qido_match`; the DICOM JSON is
built in :mod:`integration.web.dicomweb.qido_results`.  Studies are matched and paged in SQL with the
site restriction (:func:`~integration.web.security.access.visible`); series and instances are the
studies' catalogs (received instances, then our own SR, TID 1500 and KOS objects), matched and paged as
they are read, study after study.  A study of another site answers 404 on the routes that name it and is
absent from lists.  No match is ``200`` with ``[]`` (dicomweb-client and OHIF read both that and 204); a
page cut short by ``limit``, and ``fuzzymatching=true`` (only literal matching is done), carry a ``Warning``
header (299, as PS3.18 asks).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.catalog import StoredObject, objects_of, study_summary, summary_of
from integration.store.tables import Study
from integration.web.deps import AppSettings, CurrentUser, DbSession, StudyUid, Uid
from integration.web.dicomweb.links import dicomweb_base
from integration.web.dicomweb.qido_match import Level, QidoQuery, parse_query
from integration.web.dicomweb.qido_results import (
    INSTANCE_ALL,
    SERIES_ALL,
    STUDY_ALL,
    instance_attributes,
    series_attributes,
    sorted_json,
    study_attributes,
)
from integration.web.security.access import study_for, visible
from integration.web.security.dicomweb_auth import dicomweb_reader

#: Media type of the answer.
DICOM_JSON = "application/dicom+json"
_ACCEPTABLE = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})

Reader = Annotated[CurrentUser, Depends(dicomweb_reader)]


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept")
    if accept:
        ranges = {item.split(";", 1)[0].strip().lower() for item in accept.split(",")}
        if not ranges & _ACCEPTABLE:
            raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, f"QIDO-RS answers {DICOM_JSON}")


def _answer(results: list[dict[str, Any]], query: QidoQuery, more: bool) -> Response:
    headers = {"Cache-Control": "no-store"}
    warnings = []
    if more or query.capped:
        warnings.append(
            f'299 pacs-vlm "There are more matching results than returned (at most {query.limit} at once): '
            f'ask again with offset={query.offset + len(results)}"'
        )
    if query.fuzzy_asked:
        warnings.append(
            '299 pacs-vlm "The fuzzymatching parameter is not supported. Only literal matching has been performed."'
        )
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    body = json.dumps([sorted_json(item) for item in results], separators=(",", ":"), ensure_ascii=False)
    return Response(body.encode(), media_type=DICOM_JSON, headers=headers)


def _studies(session: Session, user: CurrentUser, query: QidoQuery, study_uid: str | None) -> Iterator[Study]:
    """The studies to search: the one named (404 when not visible) or every visible one under the study keys."""
    if study_uid is not None:
        study = study_for(session, user, study_uid)
        if not query.study or session.scalar(select(Study.id).where(Study.id == study.id, *query.study)):
            yield study
        return
    statement = visible(select(Study).where(*query.candidate_studies()), user).order_by(Study.id)
    yield from session.scalars(statement.execution_options(yield_per=100))


def search_studies(
    session: Session, settings: Settings, user: CurrentUser, query: QidoQuery, base: str
) -> tuple[list[dict[str, Any]], bool]:
    """Match and page studies in SQL, newest study date first; return the page and whether more match."""
    statement = (
        visible(select(Study).where(*query.study), user)
        .order_by(Study.study_date.desc().nulls_last(), Study.id.desc())
        .offset(query.offset)
        .limit(query.limit + 1)
    )
    studies = list(session.scalars(statement))
    extra = (*query.includefields, *(STUDY_ALL if query.include_all else ()))
    results = [
        study_attributes(settings, study, study_summary(session, study), base, extra)
        for study in studies[: query.limit]
    ]
    return results, len(studies) > query.limit


def _series_groups(objects: list[StoredObject]) -> list[list[StoredObject]]:
    groups: dict[str, list[StoredObject]] = {}
    for item in objects:
        groups.setdefault(item.series_uid, []).append(item)
    return list(groups.values())


def search_objects(
    session: Session,
    settings: Settings,
    user: CurrentUser,
    query: QidoQuery,
    base: str,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Match and page series or instances, study by study; return the page and whether more match.

    Raises
    ------
    fastapi.HTTPException
        404 when the named study is not visible, or the named series is not in it.
    """
    level_all = SERIES_ALL if query.level is Level.SERIES else INSTANCE_ALL
    extra = (*query.includefields, *(level_all if query.include_all else ()))
    with_study = study_uid is None
    with_series = query.level is Level.INSTANCE and series_uid is None
    results: list[dict[str, Any]] = []
    skipped = 0
    for study in _studies(session, user, query, study_uid):
        objects = objects_of(session, study, series_uid=series_uid)
        if series_uid is not None and not objects:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such series in this study")
        study_json: dict[str, Any] | None = None
        groups = _series_groups(objects)
        for group in groups:
            if query.level is Level.SERIES:
                matched: list[StoredObject | list[StoredObject]] = [group] if query.matches(group[0]) else []
            else:
                matched = [item for item in group if query.matches(item)]
            for found in matched:
                if skipped < query.offset:
                    skipped += 1
                    continue
                if len(results) == query.limit:
                    return results, True
                row: dict[str, Any] = {}
                if with_study:
                    if study_json is None:
                        study_json = study_attributes(settings, study, summary_of(objects), base)
                    row.update(study_json)
                if isinstance(found, list):
                    row.update(series_attributes(settings, found, base, extra))
                else:
                    if with_series:
                        row.update(series_attributes(settings, group, base))
                    row.update(instance_attributes(settings, found, base, extra))
                results.append(row)
    return results, False


def _search(
    request: Request,
    session: Session,
    settings: Settings,
    user: CurrentUser,
    level: Level,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Response:
    _check_accept(request)
    query = parse_query(list(request.query_params.multi_items()), level)
    base = dicomweb_base(request, settings)
    if level is Level.STUDY:
        results, more = search_studies(session, settings, user, query, base)
    else:
        results, more = search_objects(session, settings, user, query, base, study_uid=study_uid, series_uid=series_uid)
    return _answer(results, query, more)


def qido_router() -> APIRouter:
    """Build the QIDO-RS router (mounted under ``/dicomweb`` by :mod:`integration.web.dicomweb.read`)."""
    router = APIRouter()
    errors: dict[int | str, dict[str, Any]] = {
        400: {"description": "unknown attribute, or a value not valid for it"},
        401: {"description": "no or wrong credentials"},
        403: {"description": "not a radiologist or administrator"},
        406: {"description": "the answer is application/dicom+json"},
    }
    scoped = {**errors, 404: {"description": "no such study (or series) for you"}}

    @router.get("/studies", summary="Search for studies (QIDO-RS)", responses=errors)
    def studies(request: Request, session: DbSession, settings: AppSettings, user: Reader) -> Response:
        """Studies of your site matching the query."""
        return _search(request, session, settings, user, Level.STUDY)

    @router.get("/series", summary="Search for series (QIDO-RS)", responses=errors)
    def all_series(request: Request, session: DbSession, settings: AppSettings, user: Reader) -> Response:
        """Series of your site's studies matching the query."""
        return _search(request, session, settings, user, Level.SERIES)

    @router.get("/instances", summary="Search for instances (QIDO-RS)", responses=errors)
    def all_instances(request: Request, session: DbSession, settings: AppSettings, user: Reader) -> Response:
        """Instances of your site's studies matching the query."""
        return _search(request, session, settings, user, Level.INSTANCE)

    @router.get("/studies/{study_uid}/series", summary="Search for a study's series (QIDO-RS)", responses=scoped)
    def study_series(
        study_uid: StudyUid, request: Request, session: DbSession, settings: AppSettings, user: Reader
    ) -> Response:
        """The study's series matching the query."""
        return _search(request, session, settings, user, Level.SERIES, study_uid)

    @router.get("/studies/{study_uid}/instances", summary="Search for a study's instances (QIDO-RS)", responses=scoped)
    def study_instances(
        study_uid: StudyUid, request: Request, session: DbSession, settings: AppSettings, user: Reader
    ) -> Response:
        """The study's instances matching the query."""
        return _search(request, session, settings, user, Level.INSTANCE, study_uid)

    @router.get(
        "/studies/{study_uid}/series/{series_uid}/instances",
        summary="Search for a series' instances (QIDO-RS)",
        responses=scoped,
    )
    def series_instances(
        study_uid: StudyUid, series_uid: Uid, request: Request, session: DbSession, settings: AppSettings, user: Reader
    ) -> Response:
        """The series' instances matching the query."""
        return _search(request, session, settings, user, Level.INSTANCE, study_uid, series_uid)

    return router
