"""The worklist a radiologist reads from, carried through the study pages as ``?list=<the worklist's query>``.

A study opened from a filtered worklist keeps that worklist: "back to the worklist" returns to the same
filters and page, and "sign and next" opens the next study of the same list.  The value is the worklist's own
query string (only the values that differ from the defaults), parsed again with the worklist's validation; an
invalid value means the default worklist, never an error page.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from pydantic import ValidationError

from integration.web.api.studies import WorklistFilter

#: Longest ``list`` value accepted (longer ones mean the default worklist).
MAX_LIST_QUERY = 2000


def list_query(filters: WorklistFilter) -> str:
    """Return the query string of a worklist's filters (defaults left out; empty for the default worklist)."""
    values = filters.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    return urlencode(sorted(values.items()))


def filters_from(raw: str | None) -> WorklistFilter:
    """Return the worklist filters of a ``list`` value; the default worklist when it is missing or invalid."""
    if not raw or len(raw) > MAX_LIST_QUERY:
        return WorklistFilter()
    try:
        return WorklistFilter.model_validate(dict(parse_qsl(raw, keep_blank_values=False)))
    except ValidationError:
        return WorklistFilter()


def worklist_url(filters: WorklistFilter) -> str:
    """Return the worklist page's URL with these filters."""
    query = list_query(filters)
    return f"/worklist?{query}" if query else "/worklist"
