"""Who is reading the study: the study page's claim banner (owned by the worklist and claims work, issue 19).

A radiologist who opens the page of a draft they may edit claims the study (renewing their own claim, or taking
an expired one), so two radiologists never edit the same draft unknowingly.  When another radiologist holds a
live claim nothing is claimed: the banner names them, since when and until when, and offers "Take over"
(:mod:`integration.web.api.claims`).  Administrators never claim; they see who is reading.  Claims are rows
with an expiry (:mod:`integration.store.claims`), so this only writes in the page's own transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from integration.config import Settings
from integration.store.claims import Claim, StudyClaimed, claim_study, current_claim
from integration.store.tables import Report, Study, UserRole, utcnow
from integration.web.deps import CurrentUser


def claim_context(
    settings: Settings, session: Session, user: CurrentUser, study: Study, report: Report | None, editable: bool
) -> dict[str, Any]:
    """Claim the study for a radiologist opening an editable draft and return what the claim banner shows.

    Parameters
    ----------
    settings : Settings
        ``claim_minutes``: how long the claim lasts.
    session : sqlalchemy.orm.Session
        The page's session (the claim commits with the page's audit record).
    user : CurrentUser
        Who opens the page.
    study : Study
        The study (already authorized).
    report : Report or None
        The report shown.
    editable : bool
        Whether the report shown is the study's draft of record.

    Returns
    -------
    dict
        ``claim`` (the live claim, or None), ``claim_mine`` (the user holds it), ``claim_other`` (someone else
        does) and ``can_take_over`` (the user is a radiologist who could take it).
    """
    now = utcnow()
    claim: Claim | None
    if editable and user.role is UserRole.RADIOLOGIST:
        try:
            claim = claim_study(session, study.id, user.id, minutes=settings.claim_minutes, now=now)
        except StudyClaimed as held:
            claim = held.claim
    else:
        claim = current_claim(session, study.id, now=now)
    mine = claim is not None and claim.held_by(user.id)
    return {
        "claim": claim,
        "claim_mine": mine,
        "claim_other": claim is not None and not mine,
        "can_take_over": claim is not None and not mine and user.role is UserRole.RADIOLOGIST,
    }
