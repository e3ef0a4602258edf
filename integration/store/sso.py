"""Users of several sites, and the store side of single sign-on (pending sign-ins, provider identities).

``user_sites`` is where a user's sites are read (:func:`user_site_ids`); :func:`set_user_sites` replaces them
and keeps ``users.site_id`` as the first of them.  A sign-in through the provider is remembered between the
redirect and the callback as a :class:`~integration.store.sso_tables.SsoSignIn`, taken (deleted) once by the
callback; :func:`provider_user` creates or updates the user the provider vouches for.  Functions add and
flush; the caller's session scope commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from integration.store.sso_tables import SsoIdentity, SsoSignIn, UserSite
from integration.store.tables import Site, User, UserRole, utcnow
from integration.store.users import UserError, hash_token, validate_person_name

#: The password hash of a user created by single sign-on: not an argon2 hash, so no password matches it.
NO_PASSWORD = "!sso"
#: How long a sign-in may take at the provider before its callback is refused.
SIGN_IN_TTL = timedelta(minutes=10)


def user_site_ids(session: Session, user_id: int) -> frozenset[int]:
    """The ids of the user's sites."""
    return frozenset(session.scalars(select(UserSite.site_id).where(UserSite.user_id == user_id)))


def user_site_codes(session: Session, user_id: int) -> list[str]:
    """The codes of the user's sites, sorted."""
    query = select(Site.code).join(UserSite, UserSite.site_id == Site.id).where(UserSite.user_id == user_id)
    return sorted(session.scalars(query))


def site_ids_for_codes(session: Session, codes: Sequence[str]) -> list[int]:
    """The ids of these site codes, in the order given.

    Raises
    ------
    UserError
        When a code names no site.
    """
    ids = []
    for code in codes:
        site_id = session.scalar(select(Site.id).where(Site.code == code.strip().upper()))
        if site_id is None:
            raise UserError(f"unknown site {code!r}: add it with 'pacs-vlm sites add'")
        ids.append(site_id)
    return ids


def set_user_sites(session: Session, user: User, codes: Sequence[str]) -> list[str]:
    """Make these sites the user's sites (replacing the others) and return their codes, sorted.

    Raises
    ------
    UserError
        When a code names no site, or a radiologist or uploader would be left without a site.
    """
    wanted = sorted(set(site_ids_for_codes(session, codes)))
    if not wanted and user.role is not UserRole.ADMIN:
        raise UserError(f"role {user.role.value} belongs to a site: name at least one")
    session.execute(delete(UserSite).where(UserSite.user_id == user.id))
    session.add_all(UserSite(user_id=user.id, site_id=site_id) for site_id in wanted)
    user.site_id = wanted[0] if wanted else None
    session.flush()
    return user_site_codes(session, user.id)


def signed_in_by(session: Session, user_id: int, issuer: str) -> bool:
    """Whether the user is one the provider ``issuer`` created (their sessions are the provider's sign-ins)."""
    found = session.scalar(select(SsoIdentity.id).where(SsoIdentity.user_id == user_id, SsoIdentity.issuer == issuer))
    return found is not None


def begin_sign_in(session: Session, state: str, browser: str, nonce: str, code_verifier: str, next_path: str) -> None:
    """Remember a sign-in sent to the provider (only hashes of the state and the browser's binding)."""
    now = utcnow()
    session.execute(delete(SsoSignIn).where(SsoSignIn.expires_at <= now))  # abandoned ones go as new ones come
    session.add(
        SsoSignIn(
            state_hash=hash_token(state),
            browser_hash=hash_token(browser),
            nonce=nonce,
            code_verifier=code_verifier,
            next_path=next_path[:2000],
            created_at=now,
            expires_at=now + SIGN_IN_TTL,
        )
    )


@dataclass(frozen=True)
class PendingSignIn:
    """A sign-in taken back from the store by its callback.

    Attributes
    ----------
    nonce : str
        The nonce the ID token must carry.
    code_verifier : str
        The PKCE verifier the code is exchanged with.
    next_path : str
        Where the person wanted to go.
    """

    nonce: str
    code_verifier: str
    next_path: str


def take_sign_in(session: Session, state: str, browser: str) -> PendingSignIn | None:
    """Take (delete) the live sign-in of this state started by this browser; None for any other.

    A state that is unknown, used, expired or started by another browser gives None, and is gone after.
    """
    found = session.scalar(select(SsoSignIn).where(SsoSignIn.state_hash == hash_token(state)))
    if found is None:
        return None
    session.delete(found)
    if found.browser_hash != hash_token(browser) or found.expires_at <= utcnow():
        return None
    return PendingSignIn(found.nonce, found.code_verifier, found.next_path)


def provider_user(
    session: Session,
    *,
    issuer: str,
    subject: str,
    username: str,
    person_name: str | None,
    role: UserRole,
    site_codes: Sequence[str],
    now: datetime | None = None,
) -> tuple[User, bool]:
    """Create or update the user the provider vouches for; return it and whether it is new.

    The identity ``(issuer, subject)`` finds the user; its role, sites and person name follow the claims at
    every sign-in.  A new user gets no usable password.

    Raises
    ------
    UserError
        When the username belongs to a local user (single sign-on never takes over a local account), the
        user was deactivated, or a site code is unknown.
    """
    now = now or utcnow()
    person = _person_name_or_none(person_name)
    identity = session.scalar(select(SsoIdentity).where(SsoIdentity.issuer == issuer, SsoIdentity.subject == subject))
    created = identity is None
    if identity is None:
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise UserError(f"the username {username!r} belongs to a local account; ask an administrator")
        user = User(username=username, password_hash=NO_PASSWORD, role=role, active=True, person_name=person)
        session.add(user)
        session.flush()
        identity = SsoIdentity(user_id=user.id, issuer=issuer, subject=subject, created_at=now)
        session.add(identity)
    else:
        user = session.get_one(User, identity.user_id)
        if not user.active:
            raise UserError("this account is deactivated; ask an administrator")
        user.role = role
        user.person_name = person or user.person_name
    identity.last_sign_in_at = now
    set_user_sites(session, user, site_codes)
    return user, created


def _person_name_or_none(value: str | None) -> str | None:
    """The provider's display name as a DICOM person name (``Jane Doe`` becomes ``Doe^Jane``), or None."""
    if not value or not value.strip():
        return None
    name = value.strip()
    if "^" not in name and " " in name:
        given, family = name.rsplit(" ", 1)
        name = f"{family}^{given}"
    try:
        return validate_person_name(name)
    except UserError:
        return None  # the username stands in, as for a local user without a person name
