"""Sites, users and sign-in sessions of the review app.

Passwords are stored only as argon2id hashes; a session's random token lives only in the browser's
cookie, the database keeps its SHA-256.  Functions that write add and flush; the caller's session scope
commits (one transaction per use case).

Sign-in throttling lives in :mod:`integration.store.sign_in_throttle`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from collections.abc import Sequence
from datetime import timedelta
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.sso_tables import UserSite
from integration.store.tables import Site, User, UserRole, UserSession, utcnow

#: Shortest password accepted.
MIN_PASSWORD_LENGTH = 12
#: Longest password accepted (hashing is deliberately slow; do not let anyone hash megabytes).
MAX_PASSWORD_LENGTH = 1024
#: Random bytes in a session token.
TOKEN_BYTES = 32
#: Longest DICOM person name (PN) value stored (the column's width; the standard allows 64 per component group).
MAX_PERSON_NAME_LENGTH = 64
#: Characters a person name may not hold: backslash (the DICOM value separator) and control characters.
_PN_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")


class UserError(ValueError):
    """A site or user cannot be created as asked (the message says why)."""


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's current recommended parameters


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so both cases cost the same."""
    return _hasher().hash(secrets.token_hex(16))


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest (64 hex digits) under which a session token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_password_strength(password: str) -> None:
    """Refuse passwords that are too short (or absurdly long).

    Raises
    ------
    UserError
        When it is shorter than :data:`MIN_PASSWORD_LENGTH` or longer than :data:`MAX_PASSWORD_LENGTH`.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password is too weak: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"the password is too long: at most {MAX_PASSWORD_LENGTH} characters")


def create_site(session: Session, code: str, name: str) -> Site:
    """Add a site (flushed, so its id is known); the caller's scope commits.

    Parameters
    ----------
    code : str
        Short unique code (1 to 16 characters, stored upper case, e.g. ``NORTH``).
    name : str
        Human-readable name.

    Raises
    ------
    UserError
        When the code is empty, too long or taken.
    """
    code = code.strip().upper()
    if not code or len(code) > 16:
        raise UserError("a site code has 1 to 16 characters")
    if session.scalar(select(Site.id).where(Site.code == code)) is not None:
        raise UserError(f"site {code!r} already exists")
    site = Site(code=code, name=name.strip()[:128])
    session.add(site)
    try:
        session.flush()
    except IntegrityError:  # taken meanwhile, past the check above: the caller's scope rolls back
        raise UserError(f"site {code!r} already exists") from None
    return site


def validate_person_name(value: str) -> str:
    """Check a DICOM person name (PN) such as ``Doe^Jane`` and return it trimmed.

    Up to three component groups separated by ``=`` (alphabetic, ideographic, phonetic), each of up to
    five components separated by ``^`` (family, given, middle, prefix, suffix); no backslash or control
    characters; at most :data:`MAX_PERSON_NAME_LENGTH` characters in all; some name in it.

    Raises
    ------
    UserError
        When it is not a valid person name.
    """
    name = value.strip()
    if not name or len(name) > MAX_PERSON_NAME_LENGTH:
        raise UserError(f"a person name has 1 to {MAX_PERSON_NAME_LENGTH} characters, e.g. Doe^Jane")
    if _PN_FORBIDDEN.search(name):
        raise UserError("a person name may not contain a backslash or control characters")
    groups = name.split("=")
    if len(groups) > 3:
        raise UserError("a person name has at most 3 component groups separated by '='")
    if any(group.count("^") > 4 for group in groups):
        raise UserError("a person name has at most 5 components separated by '^' (family^given^middle^prefix^suffix)")
    if not name.replace("^", "").replace("=", "").strip():
        raise UserError("a person name needs a name, e.g. Doe^Jane")
    return name


def create_user(
    session: Session,
    username: str,
    password: str,
    role: UserRole,
    site_code: str | Sequence[str] | None,
    person_name: str | None = None,
) -> User:
    """Add a user with an argon2id password hash (flushed, so its id is known); the caller's scope commits.

    Parameters
    ----------
    username : str
        Unique sign-in name.
    password : str
        The password (only its hash is stored).
    site_code : str or sequence of str, optional
        The user's site, or sites (``user_sites``; ``users.site_id`` is the first); required for radiologists
        and uploaders, optional for administrators.
    person_name : str, optional
        The name signed reports carry, as a DICOM person name (``Doe^Jane``).

    Raises
    ------
    UserError
        On a weak password, an invalid person name, an unknown or missing site, or a taken username.
    """
    username = username.strip()
    if not username or len(username) > 64:
        raise UserError("a username has 1 to 64 characters")
    check_password_strength(password)
    if person_name is not None:
        person_name = validate_person_name(person_name)
    codes = [site_code] if isinstance(site_code, str) else list(site_code or [])
    site_ids: list[int] = []
    for code in codes:
        found = session.scalar(select(Site.id).where(Site.code == code.strip().upper()))
        if found is None:
            raise UserError(f"unknown site {code!r}: add it with 'pacs-vlm sites add'")
        site_ids.append(found)
    if not site_ids and role is not UserRole.ADMIN:
        raise UserError(f"role {role.value} belongs to a site: name it with --site")
    site_ids = sorted(set(site_ids))
    site_id = site_ids[0] if site_ids else None
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UserError(f"user {username!r} already exists")
    user = User(
        username=username,
        password_hash=_hasher().hash(password),
        role=role,
        site_id=site_id,
        active=True,
        person_name=person_name,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # taken meanwhile, past the check above: the caller's scope rolls back
        raise UserError(f"user {username!r} already exists") from None
    session.add_all(UserSite(user_id=user.id, site_id=one) for one in site_ids)
    session.flush()
    return user


def list_users(session: Session) -> list[tuple[User, list[str]]]:
    """Return every user with their sites' codes (``user_sites``, sorted), by username."""
    codes: dict[int, list[str]] = {}
    for user_id, code in session.execute(
        select(UserSite.user_id, Site.code).join(Site, UserSite.site_id == Site.id).order_by(Site.code)
    ):
        codes.setdefault(user_id, []).append(code)
    return [(user, codes.get(user.id, [])) for user in session.scalars(select(User).order_by(User.username))]


def authenticate(session: Session, username: str, password: str) -> User | None:
    """Return the active user for these credentials, or None; rehash the password when the hash parameters are outdated.

    An unknown username costs one hash verification too, so timing does not tell which usernames exist.
    """
    user = session.scalar(select(User).where(User.username == username)) if len(username) <= 64 else None
    if user is None or len(password) > MAX_PASSWORD_LENGTH:
        with contextlib.suppress(VerificationError):
            _hasher().verify(_dummy_hash(), password[:MAX_PASSWORD_LENGTH])
        return None
    try:
        _hasher().verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if not user.active:
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = _hasher().hash(password)  # committed by the caller's scope
    return user


#: How stale ``user_sessions.last_seen_at`` may be: it is written at most once a minute per session.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)
#: A browser's sign-in session (the cookie).
SESSION_SCOPE = "session"
#: A viewer's bearer token: DICOMweb reads only, never a cookie.
DICOMWEB_SCOPE = "dicomweb"


def create_session(session: Session, user: User, ttl: timedelta, *, scope: str = SESSION_SCOPE) -> str:
    """Open a session of ``scope`` lasting ``ttl`` and return the raw token (only its hash is stored)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    session.add(
        UserSession(
            token_hash=hash_token(token),
            user_id=user.id,
            created_at=now,
            expires_at=now + ttl,
            last_seen_at=now,
            scope=scope,
        )
    )
    return token


def user_for_token(
    session: Session, token: str, *, scope: str = SESSION_SCOPE, idle: timedelta | None = None
) -> User | None:
    """Return the user of a live session of ``scope`` and note that it was seen (to the minute; the caller commits).

    None when the token is unknown or of another scope, the session expired, it was idle longer than
    ``idle`` (then it is ended) or the user is inactive.  ``last_seen_at`` is written at most once per
    :data:`LAST_SEEN_RESOLUTION` (or per half the idle limit, when that is shorter), not per request.
    """
    now = utcnow()
    found = session.execute(
        select(UserSession, User)
        .join(User, UserSession.user_id == User.id)
        .where(UserSession.token_hash == hash_token(token), UserSession.scope == scope)
    ).first()
    if found is None:
        return None
    user_session, user = found
    if user_session.expires_at <= now or not user.active:
        return None
    if idle is not None and now - user_session.last_seen_at > idle:
        session.delete(user_session)  # idle too long: the session is over for good
        return None
    resolution = min(LAST_SEEN_RESOLUTION, idle / 2) if idle is not None else LAST_SEEN_RESOLUTION
    if now - user_session.last_seen_at >= resolution:  # a viewer's 300 reads are not 300 writes
        user_session.last_seen_at = now
    return user


def end_session(session: Session, token: str) -> bool:
    """End a sign-in session and return whether one was ended."""
    result = session.execute(delete(UserSession).where(UserSession.token_hash == hash_token(token)))
    return bool(getattr(result, "rowcount", 0))


def _set_active(session: Session, username: str, active: bool, actor: str) -> int:
    """Mark a user active or not, end their sessions when deactivating, audit; return sessions ended."""
    user = session.scalar(select(User).where(User.username == username.strip()))
    if user is None:
        raise UserError(f"unknown user {username!r}: see 'pacs-vlm users list'")
    user.active = active
    ended = 0
    if not active:
        result = session.execute(delete(UserSession).where(UserSession.user_id == user.id))
        ended = int(getattr(result, "rowcount", 0) or 0)
    add_event(  # the change and its audit row commit together, in the caller's scope
        session,
        actor=actor,
        action="user.deactivated" if not active else "user.activated",
        object_type="user",
        object_id=str(user.id),
        detail={"username": user.username, "sessions_ended": ended},
    )
    return ended


def deactivate_user(session: Session, username: str, *, actor: str = "cli") -> None:
    """Stop a user from signing in and end all their sessions at once; audit ``user.deactivated``.

    ``actor`` is who deactivates (recorded in the audit trail).

    Raises
    ------
    UserError
        When there is no such user.
    """
    _set_active(session, username, False, actor)


def activate_user(session: Session, username: str, *, actor: str = "cli") -> None:
    """Let a deactivated user sign in again; audit ``user.activated`` (by ``actor``).

    Raises
    ------
    UserError
        When there is no such user.
    """
    _set_active(session, username, True, actor)
