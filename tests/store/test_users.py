"""Users in the store on SQLite and PostgreSQL: person names, deactivation, and sign-in throttling counted from the
audit trail (failures written with chosen times, so the window is tested without waiting).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from integration.store.audit import query_events
from integration.store.migrate import upgrade
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, User, UserRole, UserSession, utcnow
from integration.store.users import (
    LOGIN_WINDOW,
    MAX_FAILED_LOGINS_PER_HOST,
    MAX_FAILED_LOGINS_PER_USERNAME,
    UserError,
    activate_user,
    authenticate,
    check_login_allowed,
    create_session,
    create_user,
    deactivate_user,
    user_for_token,
    validate_person_name,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'users.sqlite'}"
        upgrade(database)
        yield database
    else:
        yield request.getfixturevalue("migrated_postgres_url")


def failures(url: str, at: datetime, count: int, *, actor: str = "alice", source: str = "10.0.0.1") -> None:
    with session_scope(url) as session:
        session.add_all(AuditEvent(at=at, actor=actor, action="auth.login_failed", source=source) for _ in range(count))


def allowed(url: str, username: str = "alice", host: str | None = "10.0.0.1") -> float | None:
    with session_scope(url) as session:
        return check_login_allowed(session, username, host)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Doe^Jane", "Doe^Jane"), ("  Doe^Jane^M^Dr^PhD ", "Doe^Jane^M^Dr^PhD"), ("Yamada^Tarou=山田^太郎", None)],
)
def test_valid_person_names(value: str, expected: str | None) -> None:
    assert validate_person_name(value) == (expected or value.strip())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "1 to 64"),
        ("x" * 65, "1 to 64"),
        ("Doe\\Jane", "backslash"),
        ("Doe^Jane\n", None),  # trailing newline is stripped: valid
        ("Doe\x1bJane", "control"),
        ("a^b^c^d^e^f", "at most 5"),
        ("a=b=c=d", "at most 3"),
        ("^^=", "needs a name"),
    ],
)
def test_invalid_person_names(value: str, message: str | None) -> None:
    if message is None:
        assert validate_person_name(value) == value.strip()
        return
    with pytest.raises(UserError, match=message):
        validate_person_name(value)


def test_deactivation_ends_every_session_and_is_audited(url: str) -> None:
    with session_scope(url) as session:
        user = create_user(session, "alice", PASSWORD, UserRole.ADMIN, None, person_name="Doe^Alice")
        tokens = [create_session(session, user, timedelta(hours=1)) for _ in range(2)]
        bob = create_user(session, "bob", PASSWORD, UserRole.ADMIN, None)
        bob_token = create_session(session, bob, timedelta(hours=1))
    with session_scope(url) as session:
        deactivate_user(session, "alice", actor="cli:root")
    with session_scope(url) as session:
        assert all(user_for_token(session, token) is None for token in tokens)
        assert user_for_token(session, bob_token) is not None
        assert authenticate(session, "alice", PASSWORD) is None
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        assert not alice.active and alice.person_name == "Doe^Alice"
        assert session.scalars(select(UserSession).where(UserSession.user_id == alice.id)).all() == []
        [event] = query_events(session, action="user.deactivated")
        assert (event.actor, event.object_type, event.object_id) == ("cli:root", "user", str(alice.id))
        assert event.detail == {"username": "alice", "sessions_ended": 2}
        with pytest.raises(UserError, match="unknown user"):
            deactivate_user(session, "nobody")
        activate_user(session, "alice")
        assert authenticate(session, "alice", PASSWORD) is not None
        assert [e.action for e in query_events(session, object_type="user")] == ["user.activated", "user.deactivated"]


def test_a_username_is_throttled_after_its_limit_of_failures_in_the_window(url: str) -> None:
    now = utcnow()
    failures(url, now - LOGIN_WINDOW - timedelta(minutes=1), 10)  # outside the window: never count
    assert allowed(url) is None
    failures(url, now - timedelta(minutes=14), 1)
    failures(url, now - timedelta(minutes=2), MAX_FAILED_LOGINS_PER_USERNAME - 2)
    assert allowed(url) is None  # one below the limit
    failures(url, now - timedelta(minutes=1), 1, source="10.9.9.9")  # the limit reached, from another host
    wait = allowed(url, host="10.0.0.2")
    # the oldest counted failure (14 minutes ago) leaves the window in about a minute
    assert wait is not None and 0 < wait <= 60
    assert allowed(url, "bob") is None  # other usernames are unaffected
    with session_scope(url) as session:  # a success after the failures clears the username's count
        session.add(AuditEvent(at=utcnow(), actor="alice", action="auth.login", source="10.0.0.3"))
    assert allowed(url) is None


def test_a_host_is_throttled_after_its_limit_of_failures_in_the_window(url: str) -> None:
    now = utcnow()
    for number in range(MAX_FAILED_LOGINS_PER_HOST):
        failures(url, now - timedelta(minutes=3), 1, actor=f"guess{number}")
    wait = allowed(url, "alice", "10.0.0.1")
    assert wait is not None and 11 * 60 < wait <= 12 * 60
    assert allowed(url, "alice", "10.0.0.2") is None
    assert allowed(url, "alice", None) is None  # no host known: only the username counts
    with session_scope(url) as session:  # a success does not clear a host's count
        session.add(AuditEvent(at=utcnow(), actor="alice", action="auth.login", source="10.0.0.1"))
    assert allowed(url, "alice", "10.0.0.1") is not None
