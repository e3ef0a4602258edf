"""Sign-in throttling on SQLite and PostgreSQL: exact counts under concurrency, back-off per username and source."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from threading import Barrier

import pytest
from sqlalchemy import select, update

from integration.store.migrate import upgrade
from integration.store.session import session_scope
from integration.store.sign_in_throttle import (
    FIRST_DELAY,
    FREE_ATTEMPTS_PER_SOURCE,
    FREE_ATTEMPTS_PER_USERNAME,
    MAX_DELAY,
    QUIET_RESET,
    attempt_succeeded,
    delay_after,
    reserve_attempt,
)
from integration.store.tables import SignInThrottle, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'throttle.sqlite'}"
        upgrade(database)
        yield database
    else:
        yield request.getfixturevalue("migrated_postgres_url")


def reserve(url: str, username: str = "alice", source: str | None = "10.0.0.1") -> float | None:
    with session_scope(url) as session:
        return reserve_attempt(session, username, source)


def succeed(url: str, username: str = "alice", source: str | None = "10.0.0.1") -> None:
    with session_scope(url) as session:
        attempt_succeeded(session, username, source)


def test_the_delay_doubles_after_the_free_attempts_up_to_the_maximum() -> None:
    assert delay_after(4, 5) == timedelta(0)
    assert [delay_after(n, 5) for n in (5, 6, 7)] == [FIRST_DELAY, FIRST_DELAY * 2, FIRST_DELAY * 4]
    assert delay_after(10_000, 5) == MAX_DELAY


def test_concurrent_attempts_are_counted_exactly(url: str) -> None:
    attempts = 24
    barrier = Barrier(attempts)

    def attempt(_: int) -> float | None:
        barrier.wait()
        return reserve(url)

    with ThreadPoolExecutor(attempts) as pool:
        waits = list(pool.map(attempt, range(attempts)))
    assert sum(wait is None for wait in waits) == FREE_ATTEMPTS_PER_USERNAME
    assert all(wait is None or 0 < wait <= FIRST_DELAY.total_seconds() for wait in waits)


def test_the_back_off_is_per_username_and_source_and_a_success_clears_it(url: str) -> None:
    for _ in range(FREE_ATTEMPTS_PER_USERNAME):
        assert reserve(url) is None
    wait = reserve(url)
    assert wait is not None and 0 < wait <= FIRST_DELAY.total_seconds()
    assert reserve(url, source="10.0.0.2") is None  # the same user elsewhere: no lock-out by strangers
    assert reserve(url, "bob") is None  # another user from the same source
    assert reserve(url, source=None) is None
    succeed(url, source="10.0.0.2")
    with session_scope(url) as session:  # the wait has passed: the next failure waits twice as long
        session.execute(update(SignInThrottle).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert reserve(url) is None
    wait = reserve(url)
    assert wait is not None and FIRST_DELAY.total_seconds() < wait <= 2 * FIRST_DELAY.total_seconds()
    succeed(url)  # the right password (once allowed) clears this source's count for the user
    assert reserve(url) is None


def test_a_quiet_row_starts_again_and_a_source_has_its_own_limit(url: str) -> None:
    for _ in range(FREE_ATTEMPTS_PER_USERNAME):
        assert reserve(url) is None
    with session_scope(url) as session:
        before = utcnow() - QUIET_RESET - timedelta(seconds=1)
        session.execute(update(SignInThrottle).values(last_attempt_at=before, next_attempt_at=before))
    for _ in range(FREE_ATTEMPTS_PER_USERNAME):
        assert reserve(url) is None
    assert reserve(url) is not None

    for number in range(FREE_ATTEMPTS_PER_SOURCE):  # spraying other usernames from one source
        assert reserve(url, f"guess{number}", "10.0.0.9") is None
    assert reserve(url, "dave", "10.0.0.9") is not None  # the source's own limit
    assert reserve(url, "dave", "10.0.0.8") is None

    assert reserve(url, "erin", "10.0.0.7") is None
    succeed(url, "erin", "10.0.0.7")  # a success gives its reservation back to the source
    with session_scope(url) as session:
        rows = session.execute(
            select(SignInThrottle.username, SignInThrottle.failures).where(SignInThrottle.source == "10.0.0.7")
        ).all()
    assert [tuple(row) for row in rows] == [("", 0)]
