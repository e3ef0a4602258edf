"""Tables of single sign-on and of users in several sites.

* :class:`UserSite`: the sites a user works for (a radiologist covering two hospitals sees both worklists).
  It is the one place site membership is read; ``users.site_id`` stays as the user's first site so that
  code reading it (older tools, a downgrade) keeps a sensible value, and :func:`integration.store.sso.set_user_sites`
  keeps the two in step.
* :class:`SsoIdentity`: the provider's ``(issuer, sub)`` of a user created by single sign-on.  Such a user has
  no usable password; the identity, not the username, finds them again at the next sign-in.
* :class:`SsoSignIn`: a sign-in on its way through the provider (state, nonce, PKCE verifier), bound to the
  browser that started it and taken (deleted) by the callback, so a callback is good once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from integration.store.tables import Base, UTCDateTime, utcnow


class UserSite(Base):
    """One site of one user."""

    __tablename__ = "user_sites"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"), primary_key=True, index=True)


class SsoIdentity(Base):
    """The OpenID provider's identity of a user it created (issuer and subject identify the person)."""

    __tablename__ = "sso_identities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_sign_in_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("issuer", "subject"),)


class SsoSignIn(Base):
    """A sign-in sent to the provider and not yet back: only hashes of the state and of the browser's binding."""

    __tablename__ = "sso_sign_ins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: SHA-256 of the ``state`` parameter.
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: SHA-256 of the random value in the browser's sign-in cookie (a callback from another browser fails).
    browser_hash: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    #: Where the person wanted to go (a local path).
    next_path: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
