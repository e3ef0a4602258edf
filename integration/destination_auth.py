"""How pacs-vlm authenticates to an HTTP, FHIR or DICOMweb destination, and where its secrets are.

A destination's ``auth`` is one of::

    {"type": "basic", "username": "pacsvlm", "password_file": "/run/secrets/ris-password"}
    {"type": "bearer", "token_env": "PACSVLM_EHR_TOKEN"}
    {"type": "oauth2", "token_url": "https://idp.example.org/oauth2/token", "client_id": "pacs-vlm",
     "client_secret_file": "/run/secrets/ehr-client-secret", "scope": "system/DiagnosticReport.write"}

Secrets are never part of the configuration itself: each is named by a file (``*_file``, its content
with surrounding whitespace removed) or an environment variable (``*_env``), exactly one of the two, and
is read when a document is sent, so a rotated secret is used without a restart and the value never sits
in the settings, their ``repr``, a log line, an exception or the audit.  :class:`SecretUnavailable` names
the file or variable, never what it holds.

OAuth2 is the client-credentials grant (RFC 6749 section 4.4): the client authenticates to the token
endpoint with HTTP Basic (``client_secret_basic``, the default) or with form fields
(``client_authentication: "post"``, ``client_secret_post``); see :mod:`integration.export.auth`.  With
``basic`` the id and secret are form-urlencoded before Base64 as RFC 6749 2.3.1 asks; a token endpoint that
does not decode them (some do not) needs ``post`` when the id or secret has characters outside
``A-Za-z0-9-._~``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SecretUnavailable(Exception):
    """A secret's file or environment variable cannot be read or is empty (the message names only where)."""


class _Secret(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @staticmethod
    def _one_source(file: Path | None, env: str | None, what: str) -> None:
        if (file is None) == (env is None):
            raise ValueError(f"give the {what} as exactly one of {what}_file or {what}_env")
        if env is not None and not _ENV_NAME.fullmatch(env):
            raise ValueError(f"{what}_env must be an environment variable name")


def read_secret(file: Path | None, env: str | None, what: str) -> str:
    """Read a secret from its file or environment variable.

    Parameters
    ----------
    file : pathlib.Path, optional
        A file holding the secret (surrounding whitespace is removed).
    env : str, optional
        An environment variable holding it.
    what : str
        What the secret is, for the error message (``password``, ``token``, ``client secret``).

    Returns
    -------
    str
        The secret.

    Raises
    ------
    SecretUnavailable
        The file cannot be read, the variable is not set, or the secret is empty.
    """
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise SecretUnavailable(f"the {what} file {file} cannot be read ({reason})") from None
        if not value:
            raise SecretUnavailable(f"the {what} file {file} is empty")
        return value
    value = os.environ.get(env or "", "").strip()
    if not value:
        raise SecretUnavailable(f"the {what} environment variable {env} is not set or empty")
    return value


class BasicAuth(_Secret):
    """HTTP Basic authentication (RFC 7617).

    Attributes
    ----------
    username : str
        The user name (not a secret).
    password_file, password_env
        Where the password is (exactly one).
    """

    type: Literal["basic"]
    username: str = Field(min_length=1, max_length=256, pattern=r"^[^:\x00-\x1f\x7f]+$")
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _source(self) -> BasicAuth:
        self._one_source(self.password_file, self.password_env, "password")
        return self

    def password(self) -> str:
        """Read the password now (see :func:`read_secret`; raises :class:`SecretUnavailable`)."""
        return read_secret(self.password_file, self.password_env, "password")


class BearerAuth(_Secret):
    """A fixed bearer token (RFC 6750), e.g. an API key issued by the receiver.

    Attributes
    ----------
    token_file, token_env
        Where the token is (exactly one).
    """

    type: Literal["bearer"]
    token_file: Path | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _source(self) -> BearerAuth:
        self._one_source(self.token_file, self.token_env, "token")
        return self

    def token(self) -> str:
        """Read the token now (see :func:`read_secret`; raises :class:`SecretUnavailable`)."""
        return read_secret(self.token_file, self.token_env, "token")


class OAuth2Auth(_Secret):
    """OAuth2 client credentials: a token from ``token_url``, cached until shortly before it expires.

    Attributes
    ----------
    token_url : str
        The authorization server's token endpoint (https, or http on the loopback interface).
    client_id : str
        Our client id (not a secret).
    client_secret_file, client_secret_env
        Where the client secret is (exactly one).
    scope : str
        Space-separated scopes to ask for (none when empty).
    client_authentication : str
        ``basic`` (``client_secret_basic``, HTTP Basic to the token endpoint) or ``post``
        (``client_secret_post``, ``client_id`` and ``client_secret`` as form fields).
    """

    type: Literal["oauth2"]
    token_url: str
    client_id: str = Field(min_length=1, max_length=256)
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    scope: str = Field(default="", max_length=1024)
    client_authentication: Literal["basic", "post"] = "basic"

    @model_validator(mode="after")
    def _source(self) -> OAuth2Auth:
        self._one_source(self.client_secret_file, self.client_secret_env, "client_secret")
        if not plain_http_allowed(self.token_url) and not self.token_url.startswith("https://"):
            raise ValueError("token_url must be an https url (http only on the loopback interface)")
        return self

    def client_secret(self) -> str:
        """Read the client secret now (see :func:`read_secret`; raises :class:`SecretUnavailable`)."""
        return read_secret(self.client_secret_file, self.client_secret_env, "client secret")


#: The ``auth`` of a destination, chosen by its ``type``.
Auth = Annotated[BasicAuth | BearerAuth | OAuth2Auth, Field(discriminator="type")]

_LOOPBACK = re.compile(r"^http://(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(:\d+)?(/|$)", re.IGNORECASE)


def plain_http_allowed(url: str) -> bool:
    """Whether credentials may travel to ``url`` unencrypted: only to the loopback interface (tests, a local proxy).

    Parameters
    ----------
    url : str
        The URL credentials would be sent to.

    Returns
    -------
    bool
        True for ``http://localhost``, ``http://127.x.x.x`` and ``http://[::1]``.
    """
    return bool(_LOOPBACK.match(url))
