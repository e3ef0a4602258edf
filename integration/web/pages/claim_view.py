"""Who is reading the study: the study page's claim banner (owned by the worklist and claims work, issue 19)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.tables import Report, Study
from integration.web.deps import CurrentUser


def claim_context(
    settings: Settings, session: Session, user: CurrentUser, study: Study, report: Report | None, editable: bool
) -> dict[str, Any]:
    """Claim the study for a radiologist opening an editable draft and return what the claim banner shows."""
    return {}
