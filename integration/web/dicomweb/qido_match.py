"""QIDO-RS query parameters (PS3.18 10.6.1, PS3.4 C.2.2.2): parsed, checked, and turned into matching.

A viewer's search names attributes by keyword (``PatientName``) or tag (``00100010``).  Study-level keys are
matched in SQL on the study columns the worklist already keeps (so a search over many studies never opens
a file): single values, ``*``/``?`` wildcards (person names case-insensitively), UID lists (comma or
backslash), date ranges and ``ModalitiesInStudy``.  Series and instance keys are matched on a study's
catalog (:func:`integration.store.catalog.objects_of`), which also lists our own SR, TID 1500 and KOS
objects, which have no rows in ``series``/``instances``.  An attribute we cannot match on, or a value
that is not valid for it, answers 400 naming it, rather than silently matching everything.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fastapi import HTTPException, status
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, and_, exists, false, func, or_, true

from integration.store.catalog import StoredObject
from integration.store.tables import Instance, Report, ReportRevision, ReportStatus, Series, Study
from integration.store.viewer_tables import ReportObject, ReportObjectKind
from integration.uids import is_valid_uid


class Level(enum.StrEnum):
    """The level a query returns."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


#: Results returned when the query names no ``limit``, and the most returned whatever it asks, per level.
DEFAULT_LIMIT = {Level.STUDY: 100, Level.SERIES: 1000, Level.INSTANCE: 5000}
MAX_LIMIT = {Level.STUDY: 1000, Level.SERIES: 5000, Level.INSTANCE: 20000}

#: Study-level keys matched in SQL, by keyword: the column and how.
_STUDY_TEXT = {
    "PatientID": Study.patient_id,
    "AccessionNumber": Study.accession_number,
    "StudyDescription": Study.study_description,
}
STUDY_KEYS = frozenset({"StudyInstanceUID", "PatientName", "StudyDate", "ModalitiesInStudy", *_STUDY_TEXT})
SERIES_KEYS = frozenset({"SeriesInstanceUID", "Modality", "SeriesNumber"})
INSTANCE_KEYS = frozenset({"SOPInstanceUID", "SOPClassUID", "InstanceNumber"})
#: Query parameters that are not attributes.
_CONTROLS = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_DATE = re.compile(r"^\d{8}$")


def bad_request(message: str) -> HTTPException:
    """A 400 answer with ``message`` (never echoing more than a short piece of what was sent)."""
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


def keyword_of(name: str) -> str:
    """The DICOM keyword a query parameter names (``PatientName`` or ``00100010``).

    Raises
    ------
    fastapi.HTTPException
        400 for a name that is neither a keyword nor a public tag of the data dictionary.
    """
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
    elif tag_for_keyword(name) is not None:
        return name
    raise bad_request(f"unknown attribute {name[:64]!r}: name it by DICOM keyword or tag (e.g. PatientName, 00100010)")


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in re.split(r"[,\\]", value) if item.strip()]


def _uids(keyword: str, value: str) -> list[str]:
    uids = _split_list(value)
    if not uids or not all(is_valid_uid(uid) for uid in uids):
        raise bad_request(f"{keyword} takes DICOM UIDs (a list separated by commas or backslashes)")
    return uids


def _integer(keyword: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise bad_request(f"{keyword} takes an integer") from None


def _date(keyword: str, value: str) -> str:
    if not _DATE.match(value):
        raise bad_request(f"{keyword} takes dates as YYYYMMDD, or a range YYYYMMDD-YYYYMMDD with either end open")
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise bad_request(f"{keyword}: {value} is not a calendar date") from None
    return value


def _like_pattern(value: str) -> str:
    """A SQL LIKE pattern (backslash escapes) for a DICOM wildcard value."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _text_match(column: Any, value: str, *, fold_case: bool) -> ColumnElement[bool]:
    if fold_case:
        column, value = func.lower(column), value.lower()
    if "*" in value or "?" in value:
        if value.strip("*") == "":
            return true()  # "*" matches everything, empty or not
        return column.like(_like_pattern(value), escape="\\")  # type: ignore[no-any-return]
    return column == value  # type: ignore[no-any-return]


def _date_range(keyword: str, column: Any, value: str) -> ColumnElement[bool]:
    if "-" not in value:
        return column == _date(keyword, value)  # type: ignore[no-any-return]
    start, _, end = value.partition("-")
    if not start and not end:
        raise bad_request(f"{keyword}: a range needs at least one end")
    clauses = []
    if start:
        clauses.append(column >= _date(keyword, start))
    if end:
        clauses.append(column <= _date(keyword, end))
    return and_(*clauses)


#: A received series' study has a draft or signed SR of ours (Modality SR).
_SHOWN = (ReportStatus.DRAFT, ReportStatus.SIGNED)


def _modalities(values: list[str]) -> ColumnElement[bool]:
    """Studies with a series of one of these modalities, ours included (SR: a live draft's SR; KO: a KOS)."""
    received = exists().where(Series.study_id == Study.id, Series.modality.in_(values))
    clauses: list[ColumnElement[bool]] = [received]
    if "SR" in values:
        clauses.append(
            exists().where(Report.study_id == Study.id, Report.status.in_(_SHOWN), Report.sr_path.is_not(None))
        )
    if "KO" in values:
        clauses.append(
            exists().where(
                ReportObject.study_uid == Study.study_uid,
                ReportObject.kind == ReportObjectKind.KEY_IMAGES,
                ReportObject.path.is_not(None),
            )
        )
    return or_(*clauses)


def study_clause(keyword: str, value: str) -> ColumnElement[bool]:
    """The SQL condition on :class:`Study` for one study-level matching key.

    Raises
    ------
    fastapi.HTTPException
        400 when the value is not valid for the attribute.
    """
    if keyword == "StudyInstanceUID":
        return Study.study_uid.in_(_uids(keyword, value))
    if keyword == "PatientName":
        return _text_match(Study.patient_name, value, fold_case=True)
    if keyword == "StudyDate":
        return _date_range(keyword, Study.study_date, value.strip())
    if keyword == "ModalitiesInStudy":
        values = _split_list(value)
        return _modalities(values) if values else false()
    return _text_match(_STUDY_TEXT[keyword], value, fold_case=False)


Predicate = Callable[[StoredObject], bool]


def object_predicate(keyword: str, value: str) -> Predicate:
    """A test of one catalog object for one series- or instance-level matching key.

    Raises
    ------
    fastapi.HTTPException
        400 when the value is not valid for the attribute.
    """
    if keyword in ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        wanted = frozenset(_uids(keyword, value))
        attribute = {"SeriesInstanceUID": "series_uid", "SOPInstanceUID": "sop_instance_uid"}.get(
            keyword, "sop_class_uid"
        )
        return lambda item: getattr(item, attribute) in wanted
    if keyword == "Modality":
        modalities = frozenset(_split_list(value))
        return lambda item: item.modality in modalities
    number = _integer(keyword, value)
    if keyword == "SeriesNumber":
        return lambda item: item.series_number == number
    return lambda item: item.instance_number == number


@dataclass
class QidoQuery:
    """A checked QIDO-RS query.

    Attributes
    ----------
    level : Level
        What is returned.
    study : list of ColumnElement
        SQL conditions on the study.
    objects : list of Predicate
        Tests of each catalog object (series and instance keys).
    series_uids, sop_instance_uids, modalities : list of str
        UIDs and modalities named by the query (to narrow the studies searched before their catalogs are read).
    includefields : list of str
        Keywords asked for beyond the default attributes; ``include_all`` for ``includefield=all``.
    limit, offset : int
        The page asked for (``limit`` already capped).
    capped : bool
        The limit asked for was above the maximum.
    fuzzy_asked : bool
        ``fuzzymatching=true`` was asked (not supported: literal matching is done, and the answer says so).
    """

    level: Level
    study: list[ColumnElement[bool]] = field(default_factory=list)
    objects: list[Predicate] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    sop_instance_uids: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    includefields: list[str] = field(default_factory=list)
    include_all: bool = False
    limit: int = 0
    offset: int = 0
    capped: bool = False
    fuzzy_asked: bool = False

    def matches(self, item: StoredObject) -> bool:
        """Whether a catalog object passes every series and instance key."""
        return all(test(item) for test in self.objects)

    def candidate_studies(self) -> list[ColumnElement[bool]]:
        """SQL conditions narrowing the studies to search by the UIDs and modalities named (received or ours)."""
        clauses = list(self.study)
        if self.series_uids:
            uids = self.series_uids
            clauses.append(
                or_(
                    exists().where(Series.study_id == Study.id, Series.series_uid.in_(uids)),
                    exists().where(Report.study_id == Study.id, Report.sr_series_uid.in_(uids)),
                    exists().where(ReportObject.study_uid == Study.study_uid, ReportObject.series_uid.in_(uids)),
                    exists().where(
                        Report.study_id == Study.id,
                        ReportRevision.report_id == Report.id,
                        ReportRevision.sr_series_uid.in_(uids),
                    ),
                )
            )
        if self.sop_instance_uids:
            uids = self.sop_instance_uids
            clauses.append(
                or_(
                    exists().where(
                        Series.study_id == Study.id,
                        Instance.series_id == Series.id,
                        Instance.sop_instance_uid.in_(uids),
                    ),
                    exists().where(Report.study_id == Study.id, Report.sr_sop_instance_uid.in_(uids)),
                    exists().where(ReportObject.study_uid == Study.study_uid, ReportObject.sop_instance_uid.in_(uids)),
                    exists().where(
                        Report.study_id == Study.id,
                        ReportRevision.report_id == Report.id,
                        ReportRevision.sr_sop_instance_uid.in_(uids),
                    ),
                )
            )
        if self.modalities:
            clauses.append(_modalities(self.modalities))
        return clauses


def _keys_for(level: Level) -> frozenset[str]:
    if level is Level.STUDY:
        return STUDY_KEYS
    return STUDY_KEYS | SERIES_KEYS | (INSTANCE_KEYS if level is Level.INSTANCE else frozenset())


def _page_number(name: str, values: Sequence[str], minimum: int) -> int | None:
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"{name} is given more than once")
    try:
        number = int(values[0])
    except ValueError:
        raise bad_request(f"{name} takes an integer") from None
    if number < minimum:
        raise bad_request(f"{name} is at least {minimum}")
    return number


def _includefields(values: Iterable[str]) -> tuple[list[str], bool]:
    keywords: list[str] = []
    include_all = False
    for value in values:
        for name in _split_list(value):
            if name.lower() == "all":
                include_all = True
            elif (keyword := keyword_of(name)) not in keywords:
                keywords.append(keyword)
    return keywords, include_all


def parse_query(params: Sequence[tuple[str, str]], level: Level) -> QidoQuery:
    """Check a QIDO-RS query string and build its matching.

    Parameters
    ----------
    params : sequence of (str, str)
        The query parameters in order (repeated ones repeated).
    level : Level
        What the route returns.

    Returns
    -------
    QidoQuery
        The conditions, fields and page.

    Raises
    ------
    fastapi.HTTPException
        400 for an unknown attribute, one we cannot match on at this level, a key given twice, or a value
        that is not valid for its attribute (a UID, a date or range, an integer).
    """
    controls: dict[str, list[str]] = {name: [] for name in _CONTROLS}
    query = QidoQuery(level)
    allowed = _keys_for(level)
    seen: set[str] = set()
    for name, value in params:
        if name in _CONTROLS:
            controls[name].append(value)
            continue
        keyword = keyword_of(name)
        if keyword not in allowed:
            raise bad_request(
                f"{keyword} is not a matching key for {level.value} queries here; use {', '.join(sorted(allowed))}"
            )
        if keyword in seen:
            raise bad_request(f"{keyword} is given more than once")
        seen.add(keyword)
        if not value.strip():
            continue  # an empty value matches everything (universal matching)
        if keyword in STUDY_KEYS:
            query.study.append(study_clause(keyword, value))
        else:
            query.objects.append(object_predicate(keyword, value))
            if keyword == "SeriesInstanceUID":
                query.series_uids = _uids(keyword, value)
            elif keyword == "SOPInstanceUID":
                query.sop_instance_uids = _uids(keyword, value)
            elif keyword == "Modality":
                query.modalities = _split_list(value)
    query.includefields, query.include_all = _includefields(controls["includefield"])
    asked = _page_number("limit", controls["limit"], 1)
    query.limit = min(asked or DEFAULT_LIMIT[level], MAX_LIMIT[level])
    query.capped = asked is not None and asked > MAX_LIMIT[level]
    query.offset = _page_number("offset", controls["offset"], 0) or 0
    if len(controls["fuzzymatching"]) > 1 or any(v.lower() not in ("true", "false") for v in controls["fuzzymatching"]):
        raise bad_request("fuzzymatching takes true or false")
    query.fuzzy_asked = controls["fuzzymatching"] == ["true"]
    return query
