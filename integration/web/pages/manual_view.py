"""Reports written by hand and failed studies on the study page (owned by the manual report work, issue 19)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.tables import Report, Study
from integration.web.deps import CurrentUser


def manual_context(
    settings: Settings, session: Session, user: CurrentUser, study: Study, reports: list[Report]
) -> dict[str, Any]:
    """Return what the study page shows of a failed analysis and of writing the report by hand."""
    return {}
