"""The worklist page: ``GET /worklist``, the studies of the user's site with filters and sort orders.

The filters are the JSON worklist's (:class:`~integration.web.api.studies.WorklistFilter`): invalid values answer
a 422 page that names the parameter.  Stat studies come first by default, then the newest.  Each row links
to the study page and, for each configured viewer (``viewers``), to the study in that viewer (a new tab).

Every filter, the search and the page live in the URL (the form is a GET form), so a reload, a bookmark or
the study page's "Back to the worklist" link (each row's link carries the worklist as ``?list=``,
:mod:`integration.web.pages.reading_list`) shows the same list.  A page holds 100 studies unless ``limit``
says otherwise (at most 500); the page says which rows of how many it shows and links to the pages beside it.
Each row says who is reading the study now and until when.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from integration.store.tables import ROLE_CURRENT, Series, Site, Study, UserRole
from integration.web.api.studies import (
    ClaimFilter,
    ReportFilter,
    WorklistFilter,
    WorklistSort,
    worklist,
    worklist_total,
)
from integration.web.deps import AppSettings, DbSession, PageReviewer, site_codes_of
from integration.web.pages.reading_list import list_query, worklist_url
from integration.web.pages.study_view import viewer_links
from integration.web.pages.templating import PageRoute, display_zone, render
from integration.web.security.access import visible

#: Labels of the sort orders, as the page shows them.
SORT_LABELS = {
    WorklistSort.PRIORITY: "Priority (stat first), newest",
    WorklistSort.RECEIVED: "Newest received",
    WorklistSort.OLDEST: "Oldest received",
    WorklistSort.STATUS: "Report status (drafts first)",
}
#: Labels of the claim filter.
CLAIM_LABELS = {ClaimFilter.AVAILABLE: "unclaimed or mine", ClaimFilter.MINE: "mine"}


def paging(filters: WorklistFilter, shown: int, total: int) -> dict[str, object]:
    """Return what the page says of its place in the list: first and last row shown, the total, page links."""
    previous = max(filters.offset - filters.limit, 0)
    following = filters.offset + filters.limit
    return {
        "first": filters.offset + 1 if shown else 0,
        "last": filters.offset + shown,
        "total": total,
        "previous_url": worklist_url(filters.model_copy(update={"offset": previous})) if filters.offset else None,
        "next_url": worklist_url(filters.model_copy(update={"offset": following})) if following < total else None,
    }


def worklist_page_router() -> APIRouter:
    """Build the worklist page router: ``GET /worklist``."""
    router = APIRouter(route_class=PageRoute, tags=["review page"])

    @router.get("/worklist", response_class=HTMLResponse, summary="Worklist page")
    def worklist_page(
        request: Request,
        settings: AppSettings,
        session: DbSession,
        user: PageReviewer,
        filters: Annotated[WorklistFilter, Query()],
    ) -> HTMLResponse:
        """The studies the user may review, filtered and sorted; each row links to its study page."""
        zone = display_zone(settings.timezone)
        rows = worklist(session, user, filters, zone=zone)
        total = worklist_total(session, user, filters, zone)
        modalities = sorted(
            m
            for m in session.scalars(
                visible(
                    select(Series.modality)
                    .distinct()
                    .join(Study, Series.study_id == Study.id)
                    .where(Study.role == ROLE_CURRENT),
                    user,
                )
            )
            if m
        )
        if user.role is UserRole.ADMIN:
            sites = list(session.scalars(select(Site.code).order_by(Site.code)))
        else:  # a user of several sites may narrow the list to one of them
            sites = site_codes_of(session, user) if len(user.site_ids) > 1 else []
        return render(
            request,
            "worklist.html",
            {
                "rows": rows,
                "filters": filters,
                "modalities": modalities,
                "sites": sites,
                "statuses": [status.value for status in ReportFilter],
                "sorts": SORT_LABELS,
                "claims": CLAIM_LABELS,
                "paging": paging(filters, len(rows), total),
                "list_query": list_query(filters),
                "links": {
                    row.study_uid: viewer_links(settings, row.study_uid, row.accession_number, row.patient_id)
                    for row in rows
                },
            },
        )

    return router
