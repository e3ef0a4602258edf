"""Reading a worklist in order: ``GET /worklist/next`` opens the next study the radiologist should read.

A radiologist who reads sixty studies a day should not go back to the worklist and hunt for the next row after
each signature.  "Sign and open next" (:mod:`integration.web.pages.review_form`), the worklist's "start reading"
key and the study page's "skip" link all come here with the worklist they read from (``?list=<its query>``,
:mod:`integration.web.pages.reading_list`) and the study just left (``after``).  The next study is the first,
in that worklist's own order and filters, after the one just left (then from the top again), whose report of
record is an unsigned primary draft and that no other radiologist has claimed: the study the worklist shows as
still to read.  When there is none the radiologist lands on the same worklist with a notice that says so
(``#no-more-studies``, shown by the page's own stylesheet, so it works without JavaScript).

The worklist query itself (:func:`integration.web.api.studies.worklist`) decides order, filters and site
visibility, so "next" never shows a study the worklist would not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.store.claims import claims_of
from integration.store.tables import ROLE_CURRENT, Report, ReportPurpose, ReportStatus, Study, utcnow
from integration.web.api.studies import WORKLIST_LIMIT, WorklistFilter, worklist
from integration.web.deps import AppSettings, CurrentUser, DbSession, PageReviewer
from integration.web.pages.reading_list import MAX_LIST_QUERY, filters_from, list_query, worklist_url
from integration.web.pages.review_form import next_url as next_url
from integration.web.pages.review_form import see_other, study_url
from integration.web.pages.templating import PageRoute, display_zone

#: The worklist's notice (an element of worklist.html shown when it is the URL's fragment).
NO_MORE_ANCHOR = "no-more-studies"
#: What the notice says.
NO_MORE_NOTICE = "No more studies to read in this list"
#: Most worklist rows looked through for the next study (pages of the worklist's own limit).
MAX_SCANNED = 20 * WORKLIST_LIMIT
_UID = re.compile(r"^[0-9.]{1,64}$")


def _worklist_uids(session: Session, user: CurrentUser, filters: WorklistFilter, zone: tzinfo | None) -> list[str]:
    """Return the worklist's study UIDs in its order, from its first row (paging through when it pages)."""
    paged = "offset" in WorklistFilter.model_fields
    uids: list[str] = []
    offset = 0
    while len(uids) < MAX_SCANNED:
        update: dict[str, object] = {"limit": WORKLIST_LIMIT}
        if paged:
            update["offset"] = offset
        rows = worklist(session, user, filters.model_copy(update=update), zone=zone)
        uids.extend(row.study_uid for row in rows)
        if not paged or len(rows) < WORKLIST_LIMIT:
            break
        offset += len(rows)
    return uids


def _to_read(session: Session, user: CurrentUser, uids: Sequence[str], now: datetime) -> set[str]:
    """Return those of ``uids`` still to read: report of record an unsigned primary draft, not claimed by another.

    A study's report of record is its signed report, else its newest primary draft
    (:func:`integration.store.revisions.report_of_record`): it is an unsigned draft exactly when the study has a
    primary draft and no signed report.
    """
    ids = dict(
        session.execute(select(Study.study_uid, Study.id).where(Study.study_uid.in_(uids), Study.role == ROLE_CURRENT))
        .tuples()
        .all()
    )
    if not ids:
        return set()
    study_ids = list(ids.values())
    signed = set(
        session.scalars(
            select(Report.study_id).where(Report.study_id.in_(study_ids), Report.status == ReportStatus.SIGNED)
        )
    )
    drafted = set(
        session.scalars(
            select(Report.study_id).where(
                Report.study_id.in_(study_ids),
                Report.status == ReportStatus.DRAFT,
                Report.purpose == ReportPurpose.PRIMARY,
            )
        )
    )
    claims = claims_of(session, study_ids, now=now)
    return {
        uid
        for uid, study_id in ids.items()
        if study_id in drafted
        and study_id not in signed
        and (study_id not in claims or claims[study_id].held_by(user.id))
    }


def next_study(
    session: Session,
    user: CurrentUser,
    filters: WorklistFilter,
    after_study_uid: str | None,
    now: datetime,
    zone: tzinfo | None = UTC,
) -> str | None:
    """Return the UID of the next study to read in a worklist, or None when none is left.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session (nothing is written).
    user : CurrentUser
        The reader: the worklist shows only what they may see; their own claims do not hold them back.
    filters : WorklistFilter
        The worklist's filters and order (its paging is ignored: reading goes through the whole list).
    after_study_uid : str or None
        The study just left: the next one comes after it in the list's order, then from the top again; it is
        never the answer itself.  None (or a study no longer in the list) starts from the top.
    now : datetime.datetime
        The current time (UTC), for the claims' expiry.
    zone : datetime.tzinfo or None, optional
        The zone of the filters' received days (the hospital's; None: the server's local zone).

    Returns
    -------
    str or None
        The first study after ``after_study_uid`` whose report of record is an unsigned primary draft and that
        no other radiologist has claimed.
    """
    uids = _worklist_uids(session, user, filters, zone)
    if after_study_uid in uids:
        at = uids.index(after_study_uid)
        uids = uids[at + 1 :] + uids[:at]
    for start in range(0, len(uids), WORKLIST_LIMIT):
        chunk = uids[start : start + WORKLIST_LIMIT]
        ready = _to_read(session, user, chunk, now)
        for uid in chunk:
            if uid in ready and uid != after_study_uid:
                return uid
    return None


def reading_router() -> APIRouter:
    """Build the reading route, ``GET /worklist/next``."""
    router = APIRouter(route_class=PageRoute, tags=["review page"])

    @router.get("/worklist/next", summary="Open the next study to read in a worklist")
    def open_next(
        session: DbSession,
        settings: AppSettings,
        user: PageReviewer,
        reading_list: Annotated[str | None, Query(alias="list", max_length=MAX_LIST_QUERY)] = None,
        after: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        """303 to the next study to read of the worklist (``list``) after ``after``, or back to that worklist."""
        filters = filters_from(reading_list)
        after_uid = after if after and _UID.fullmatch(after) else None
        found = next_study(session, user, filters, after_uid, utcnow(), display_zone(settings.timezone))
        if found is None:
            return see_other(f"{worklist_url(filters)}#{NO_MORE_ANCHOR}")
        return see_other(study_url(found, reading_list=list_query(filters)))

    return router
