"""Claims: which radiologist is reading a study now, so two never edit the same draft.

Opening a study page with a draft to read claims the study for the radiologist (renewing their own claim);
others see who holds it and until when, and their review changes, signatures and rejections are refused
(:class:`StudyClaimed`, a 409) until the holder releases it, signs, or stays away ``claim_minutes``.  A
radiologist may take a study over explicitly (audited by the caller).  A claim is a row with an expiry, so a
closed browser or a crashed api leaves nothing locked for long.  Functions never commit.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from integration.store.reading_tables import StudyClaim
from integration.store.session import dialect_insert
from integration.store.tables import User


@dataclass(frozen=True)
class Claim:
    """A live claim on a study.

    Attributes
    ----------
    study_id : int
        The study.
    user_id : int
        Who holds it.
    username : str
        Their sign-in name.
    person_name : str or None
        Their name as reports carry it (``Doe^Jane``), when set.
    claimed_at, expires_at : datetime.datetime
        Since when, and until when unless renewed (UTC).
    """

    study_id: int
    user_id: int
    username: str
    person_name: str | None
    claimed_at: datetime
    expires_at: datetime

    def held_by(self, user_id: int) -> bool:
        """Whether ``user_id`` holds this claim."""
        return self.user_id == user_id


class StudyClaimed(RuntimeError):
    """Another radiologist holds a live claim on the study (the message names them and says until when).

    Parameters
    ----------
    claim : Claim
        The other radiologist's claim.
    zone : datetime.tzinfo or None, optional
        The zone the claim's end is said in (UTC by default; None: the server's local zone).  The pages and
        the API say it in the hospital's zone (:meth:`describe`).
    """

    def __init__(self, claim: Claim, zone: tzinfo | None = UTC) -> None:
        self.claim = claim
        super().__init__(self.describe(zone))

    def describe(self, zone: tzinfo | None) -> str:
        """The message, with the claim's end in ``zone`` (None: the server's local zone)."""
        end = self.claim.expires_at if self.claim.expires_at.tzinfo else self.claim.expires_at.replace(tzinfo=UTC)
        until = (end.astimezone(zone) if zone is not None else end.astimezone()).strftime("%H:%M %Z")
        return (
            f"{self.claim.username} is reading this study (claimed until {until} unless they continue); "
            "take it over from the study page if they have stopped"
        )


def _claims(session: Session, study_ids: Collection[int], now: datetime) -> dict[int, Claim]:
    rows = session.execute(
        select(StudyClaim, User.username, User.person_name)
        .join(User, User.id == StudyClaim.user_id)
        .where(StudyClaim.study_id.in_(list(study_ids)), StudyClaim.expires_at > now)
    ).all()
    return {
        claim.study_id: Claim(claim.study_id, claim.user_id, username, person_name, claim.claimed_at, claim.expires_at)
        for claim, username, person_name in rows
    }


def claims_of(session: Session, study_ids: Collection[int], *, now: datetime) -> dict[int, Claim]:
    """Return the live claims on these studies, by study id (expired claims are left out)."""
    return _claims(session, study_ids, now) if study_ids else {}


def current_claim(session: Session, study_id: int, *, now: datetime) -> Claim | None:
    """Return the live claim on a study, or None."""
    return _claims(session, [study_id], now).get(study_id)


def claim_study(
    session: Session, study_id: int, user_id: int, *, minutes: float, now: datetime, take_over: bool = False
) -> Claim:
    """Claim a study for a user, or renew their claim, for ``minutes`` from ``now``.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session (not committed here).
    study_id, user_id : int
        The study and the radiologist.
    minutes : float
        How long the claim lasts without activity (``claim_minutes``).
    now : datetime.datetime
        The current time (UTC).
    take_over : bool
        Take the study from another radiologist's live claim instead of refusing.

    Returns
    -------
    Claim
        The user's claim.

    Raises
    ------
    StudyClaimed
        Another radiologist holds a live claim and ``take_over`` is false.
    """
    # Two radiologists opening the same study at once: one inserts, the other waits on the row and reads it.
    session.execute(
        dialect_insert(session)(StudyClaim)
        .values(study_id=study_id, user_id=user_id, claimed_at=now, expires_at=now)  # born expired
        .on_conflict_do_nothing(index_elements=[StudyClaim.study_id])
    )
    row = session.scalars(
        select(StudyClaim)
        .where(StudyClaim.study_id == study_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if row.user_id != user_id and row.expires_at > now and not take_over:
        held = current_claim(session, study_id, now=now)
        if held is not None:
            raise StudyClaimed(held)
    if row.user_id != user_id or row.expires_at <= now:
        row.user_id, row.claimed_at = user_id, now
    row.expires_at = now + timedelta(minutes=minutes)
    session.flush()
    claim = current_claim(session, study_id, now=now)
    assert claim is not None  # just written
    return claim


def check_claim(session: Session, study_id: int, user_id: int, *, now: datetime) -> Claim | None:
    """Refuse when another radiologist holds a live claim; return the user's own live claim, or None.

    Raises
    ------
    StudyClaimed
        Another radiologist holds a live claim on the study.
    """
    claim = current_claim(session, study_id, now=now)
    if claim is not None and not claim.held_by(user_id):
        raise StudyClaimed(claim)
    return claim


def release_claim(session: Session, study_id: int, user_id: int | None = None) -> bool:
    """Release the claim on a study (only ``user_id``'s when given); return whether one was released."""
    statement = delete(StudyClaim).where(StudyClaim.study_id == study_id)
    if user_id is not None:
        statement = statement.where(StudyClaim.user_id == user_id)
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]
