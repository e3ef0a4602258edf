"""Claims on PostgreSQL: who reads a study, renewal, refusal, take-over, expiry and release.

The functions of :mod:`integration.store.claims` against a migrated PostgreSQL database (the row lock of
``claim_study`` and the expiry comparisons are PostgreSQL's), with two radiologists and a study as rows.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest

from integration.store.claims import StudyClaimed, check_claim, claim_study, claims_of, current_claim, release_claim
from integration.store.session import session_scope
from integration.store.tables import Study, StudyState, User, UserRole, utcnow


def _rows(url: str) -> tuple[int, int, int, int]:
    now = utcnow()
    with session_scope(url) as session:
        users = [
            User(username=name, password_hash="x", role=UserRole.RADIOLOGIST, person_name=person)
            for name, person in (("ann", "Lee^Ann"), ("bob", None))
        ]
        studies = [
            Study(
                study_uid=f"1.2.3.{number}",
                state=StudyState.DRAFTED,
                calling_ae="CT1",
                first_received_at=now,
                last_received_at=now,
                stable_after=now,
            )
            for number in (1, 2)
        ]
        session.add_all([*users, *studies])
        session.flush()
        return users[0].id, users[1].id, studies[0].id, studies[1].id


def test_claims_renew_refuse_take_over_expire_and_release(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    ann, bob, study, other_study = _rows(url)
    now = utcnow()
    with session_scope(url) as session:
        claim = claim_study(session, study, ann, minutes=20, now=now)
        assert (claim.username, claim.person_name, claim.claimed_at) == ("ann", "Lee^Ann", now)
        assert claim.expires_at == now + timedelta(minutes=20) and claim.held_by(ann)
    later = now + timedelta(minutes=5)
    with session_scope(url) as session:
        renewed = claim_study(session, study, ann, minutes=20, now=later)
        assert renewed.claimed_at == now and renewed.expires_at == later + timedelta(minutes=20)
        with pytest.raises(StudyClaimed, match="ann is reading this study") as refused:
            claim_study(session, study, bob, minutes=20, now=later)
        assert refused.value.claim.user_id == ann
        until = renewed.expires_at.replace(tzinfo=UTC) if renewed.expires_at.tzinfo is None else renewed.expires_at
        assert f"claimed until {until:%H:%M} UTC" in str(refused.value)  # the store says UTC ...
        berlin = until.astimezone(ZoneInfo("Europe/Berlin"))  # ... the pages and API the hospital's zone
        assert f"claimed until {berlin:%H:%M %Z}" in refused.value.describe(ZoneInfo("Europe/Berlin"))
        with pytest.raises(StudyClaimed):
            check_claim(session, study, bob, now=later)
        assert check_claim(session, study, ann, now=later) == renewed
        assert check_claim(session, other_study, bob, now=later) is None
        assert set(claims_of(session, [study, other_study], now=later)) == {study}
        assert claims_of(session, [], now=later) == {}
    with session_scope(url) as session:
        taken = claim_study(session, study, bob, minutes=20, now=later, take_over=True)
        assert taken.username == "bob" and taken.claimed_at == later
        assert release_claim(session, study, ann) is False  # not ann's any more
        assert current_claim(session, study, now=later) == taken
    # After its expiry the claim is gone for everyone, and anyone may claim the study.
    expired = later + timedelta(minutes=21)
    with session_scope(url) as session:
        assert current_claim(session, study, now=expired) is None
        assert check_claim(session, study, ann, now=expired) is None
        again = claim_study(session, study, ann, minutes=20, now=expired)
        assert again.username == "ann" and again.claimed_at == expired
    with session_scope(url) as session:
        assert release_claim(session, study, ann) is True
        assert release_claim(session, study) is False
        assert current_claim(session, study, now=expired) is None
        claim_study(session, other_study, bob, minutes=1, now=expired)
        assert release_claim(session, other_study) is True  # without a user: whoever holds it (signing)


def test_two_radiologists_opening_an_unclaimed_study_at_once_get_one_claim_and_one_refusal(
    migrated_postgres_url: str,
) -> None:
    """Both insert the claim row at the same moment: the second waits on the first's row and is refused by name."""
    url = migrated_postgres_url
    ann, bob, study, _ = _rows(url)
    now = utcnow()
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def open_study(user_id: int, name: str) -> None:
        barrier.wait()
        try:
            with session_scope(url) as session:
                claim_study(session, study, user_id, minutes=20, now=now)
                time.sleep(0.3)  # hold the row while the other transaction arrives
            outcomes[name] = "claimed"
        except StudyClaimed as refused:
            outcomes[name] = f"refused: {refused.claim.username}"

    threads = [
        threading.Thread(target=open_study, args=(ann, "ann")),
        threading.Thread(target=open_study, args=(bob, "bob")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes.values()) in (["claimed", "refused: ann"], ["claimed", "refused: bob"]), outcomes
    with session_scope(url) as session:
        holder = current_claim(session, study, now=now)
    assert holder is not None and outcomes[holder.username] == "claimed"
