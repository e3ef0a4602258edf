"""Users in the store on SQLite and PostgreSQL: person names and deactivation (throttling: test_sign_in_throttle.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from integration.store.audit import query_events
from integration.store.migrate import upgrade
from integration.store.session import session_scope
from integration.store.tables import User, UserRole, UserSession
from integration.store.users import (
    DICOMWEB_SCOPE,
    LAST_SEEN_RESOLUTION,
    UserError,
    activate_user,
    authenticate,
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


def test_a_viewer_token_is_its_own_scope_and_last_seen_is_written_once_a_minute(url: str) -> None:
    with session_scope(url) as session:
        user = create_user(session, "alice", PASSWORD, UserRole.ADMIN, None)
        cookie = create_session(session, user, timedelta(hours=1))
        viewer = create_session(session, user, timedelta(hours=1), scope=DICOMWEB_SCOPE)
    with session_scope(url) as session:
        assert user_for_token(session, viewer) is None  # a viewer token is no sign-in cookie
        assert user_for_token(session, cookie, scope=DICOMWEB_SCOPE) is None  # nor a cookie a viewer token
        found = user_for_token(session, viewer, scope=DICOMWEB_SCOPE)
        assert found is not None and found.username == "alice"

    def last_seen() -> datetime:
        with session_scope(url) as session:
            return session.scalars(select(UserSession.last_seen_at).where(UserSession.scope == DICOMWEB_SCOPE)).one()

    first = last_seen()
    with session_scope(url) as session:
        user_for_token(session, viewer, scope=DICOMWEB_SCOPE)
    assert last_seen() == first  # within the minute: no write for each of a viewer's reads
    with session_scope(url) as session:
        row = session.scalars(select(UserSession).where(UserSession.scope == DICOMWEB_SCOPE)).one()
        row.last_seen_at = first - LAST_SEEN_RESOLUTION
    with session_scope(url) as session:
        user_for_token(session, viewer, scope=DICOMWEB_SCOPE)
    assert last_seen() > first - LAST_SEEN_RESOLUTION
