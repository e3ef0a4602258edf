"""Sign-in throttling: a back-off per username and source, counted atomically before the password is checked.

Why this shape: counting failures from the audit trail *before* argon2 ran let 34 of 40 concurrent wrong
passwords be evaluated against a limit of 5, and a limit per username let anyone lock any radiologist out
with five requests.  Here every attempt is *reserved* first, by a compare-and-swap ``UPDATE`` of the row of
its (username, source) and of the row of its source for all usernames (``username=''``), in one
transaction: concurrent attempts are counted one by one on SQLite (one writer) and PostgreSQL (row locks,
re-checked ``WHERE``) alike.  The first :data:`FREE_ATTEMPTS_PER_USERNAME` failures of a username from a
source (:data:`FREE_ATTEMPTS_PER_SOURCE` of any usernames) go unhindered; each further attempt must wait a
delay that doubles from :data:`FIRST_DELAY` up to :data:`MAX_DELAY`.  A success clears its (username,
source) row and gives its reservation back to the source.  Nothing is counted per username alone, so
failures from one source never stop the same person signing in from another: strangers cannot lock
anyone out.  A row left alone for :data:`QUIET_RESET` starts again from zero.

The source is the client address the API process sees (a reverse proxy's own address unless
``PACSVLM_FORWARDED_ALLOW_IPS`` names it).  A reservation must be visible to every other API process
before the password is checked, and must outlive the 401 that follows: :func:`reserve_attempt` still
commits itself until its caller reserves in a session scope of its own (issue 14);
:func:`attempt_succeeded` leaves the commit to the caller's scope.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from integration.store.tables import SignInThrottle, utcnow

#: Failed sign-ins of one username from one source before each further attempt has to wait.
FREE_ATTEMPTS_PER_USERNAME = 5
#: Failed sign-ins from one source, whatever the usernames, before each further attempt has to wait.
FREE_ATTEMPTS_PER_SOURCE = 20
#: The wait after the last free attempt; it doubles with each further failure.
FIRST_DELAY = timedelta(seconds=15)
#: The longest wait.
MAX_DELAY = timedelta(minutes=15)
#: A row untouched this long (and not waiting) is counted from zero again.
QUIET_RESET = timedelta(minutes=15)
#: The username of a source's row for all usernames.
ANY_USERNAME = ""
#: Compare-and-swap rounds before an attempt is simply asked to come back in a second.
_MAX_ROUNDS = 64
#: Longest username and source kept (the columns' width).
_KEY_LENGTH = 128


def delay_after(failures: int, free: int) -> timedelta:
    """Return how long the next attempt must wait after ``failures`` counted failures (this attempt included).

    Zero below ``free`` (failures allowed without a wait); :data:`FIRST_DELAY` at ``free``, doubling
    with each further one up to :data:`MAX_DELAY`.
    """
    if failures < free:
        return timedelta(0)
    doublings = min(failures - free, 16)
    delay: timedelta = FIRST_DELAY * (2**doublings)
    return min(delay, MAX_DELAY)


def _ensure_row(session: Session, username: str, source: str, now: datetime) -> None:
    values = {"username": username, "source": source, "failures": 0, "last_attempt_at": now, "next_attempt_at": now}
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(SignInThrottle).values(**values).on_conflict_do_nothing(index_elements=["username", "source"])
    )


def _reserve(session: Session, username: str, source: str, free: int, now: datetime) -> float | None:
    """Count one attempt on a row by compare-and-swap; the seconds to wait instead when it must wait."""
    _ensure_row(session, username, source, now)
    for _ in range(_MAX_ROUNDS):
        row = session.execute(
            select(
                SignInThrottle.id,
                SignInThrottle.failures,
                SignInThrottle.last_attempt_at,
                SignInThrottle.next_attempt_at,
            )
            .where(SignInThrottle.username == username, SignInThrottle.source == source)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if row is None:  # cleared by a success meanwhile
            _ensure_row(session, username, source, now)
            continue
        row_id, failures, last_attempt_at, next_attempt_at = row
        now = max(now, utcnow())  # this round's time (another attempt may have waited for a lock)
        if failures >= free and now < next_attempt_at:  # below the free attempts nobody waits
            return (next_attempt_at - now).total_seconds()
        counted = 1 if now - last_attempt_at >= QUIET_RESET else failures + 1
        swapped = session.execute(
            update(SignInThrottle)
            .where(
                SignInThrottle.id == row_id,
                SignInThrottle.failures == failures,
                SignInThrottle.last_attempt_at == last_attempt_at,
            )
            .values(failures=counted, last_attempt_at=now, next_attempt_at=now + delay_after(counted, free))
            .execution_options(synchronize_session=False)
        )
        if swapped.rowcount == 1:  # type: ignore[attr-defined]
            return None
    return 1.0


def reserve_attempt(session: Session, username: str, source: str | None) -> float | None:
    """Count a sign-in attempt as a failure before its password is checked, unless it must wait.

    Call it first in a fresh session scope of its own (a session already in a transaction is refused): its
    reads then see the latest committed rows, as the compare-and-swap needs, and the scope commits the count
    before the password is checked.  When the attempt must wait the caller raises inside that scope, so
    nothing is counted.
    ``source`` is the client's address (None when unknown). Returns None when the attempt may go ahead (and
    is counted); otherwise the seconds to wait (nothing counted).
    """
    if session.in_transaction():
        raise RuntimeError("reserve_attempt must start its session's transaction: call it first in a fresh scope")
    now = utcnow()
    user, where = username[:_KEY_LENGTH], (source or "")[:_KEY_LENGTH]
    wait = _reserve(session, ANY_USERNAME, where, FREE_ATTEMPTS_PER_SOURCE, now)
    if wait is None and user != ANY_USERNAME:
        wait = _reserve(session, user, where, FREE_ATTEMPTS_PER_USERNAME, now)
    return wait


def attempt_succeeded(session: Session, username: str, source: str | None) -> None:
    """Clear the (username, source) row and give the reservation back to the source (the caller's scope commits)."""
    user, where = username[:_KEY_LENGTH], (source or "")[:_KEY_LENGTH]
    session.execute(delete(SignInThrottle).where(SignInThrottle.username == user, SignInThrottle.source == where))
    session.execute(
        update(SignInThrottle)
        .where(
            SignInThrottle.username == ANY_USERNAME,
            SignInThrottle.source == where,
            SignInThrottle.failures > 0,
        )
        .values(failures=SignInThrottle.failures - 1)
        .execution_options(synchronize_session=False)
    )
