"""Authentication and TLS of the HTTP calls to a destination: httpx auth flows, client certificates, tokens.

Every HTTP call of a delivery (POST, ``PUT`` to a FHIR server, STOW-RS) is made through :func:`http_client`,
so each gets the destination's TLS context (its CA file, our client certificate) and its ``auth``:

- ``basic``: HTTP Basic with the password read now from its file or variable;
- ``bearer``: ``Authorization: Bearer <token>`` read now;
- ``oauth2``: the client-credentials grant.  The token is fetched from ``token_url`` by a form POST
  (``grant_type=client_credentials`` and ``scope``), the client authenticating with HTTP Basic
  (``client_secret_basic``, RFC 6749 section 2.3.1: id and secret form-urlencoded first) or with the
  form fields ``client_id``/``client_secret`` (``client_secret_post``).  It is cached per process and
  destination until :data:`REFRESH_MARGIN_SECONDS` (or a tenth of its lifetime, if shorter) before its
  ``expires_in``; :data:`DEFAULT_LIFETIME_SECONDS` when the server gives none.  A 401 from the destination
  drops the cached token and the call is made once more with a fresh one (a token revoked early); a second
  401 is the destination's answer.

The secrets never leave these flows: errors name the destination, the token endpoint and the HTTP status
(and the OAuth2 ``error`` code), never a secret, a token or a response body; nothing here logs.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

import httpx

from integration.destination_auth import BasicAuth, BearerAuth, OAuth2Auth, SecretUnavailable
from integration.destinations import Destination
from integration.dicom.tls import TlsConfigError, client_context

#: A cached token is refreshed this many seconds before it expires (or at 90 % of a shorter lifetime).
REFRESH_MARGIN_SECONDS = 30.0
#: How long a token without ``expires_in`` is used before another is fetched.
DEFAULT_LIFETIME_SECONDS = 300.0
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")  # RFC 6749 5.2: error is NQSCHAR


class AuthUnavailable(Exception):
    """The destination's credentials or TLS settings cannot be used (the message holds no secret)."""


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # time.monotonic() after which a new one is fetched


class TokenCache:
    """OAuth2 access tokens per destination, shared by the threads of a worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}
        #: How many tokens were fetched (for tests and the log).
        self.fetches = 0

    @staticmethod
    def _key(destination: Destination, auth: OAuth2Auth) -> tuple[str, str, str, str]:
        return destination.name, auth.token_url, auth.client_id, auth.scope

    def token(self, destination: Destination, auth: OAuth2Auth, verify: ssl.SSLContext | bool) -> str:
        """Return a valid access token for the destination, fetching one when none is cached or it is due.

        Raises
        ------
        AuthUnavailable
            The client secret cannot be read, or the token endpoint did not issue a token.
        """
        key = self._key(destination, auth)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and time.monotonic() < cached.refresh_at:
                return cached.value
            token = _fetch_token(destination, auth, verify)
            self.fetches += 1
            self._tokens[key] = token
            return token.value

    def drop(self, destination: Destination, auth: OAuth2Auth, value: str) -> None:
        """Forget the cached token if it is still ``value`` (the destination refused it)."""
        key = self._key(destination, auth)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.value == value:
                del self._tokens[key]

    def clear(self) -> None:
        """Forget every token (and the count of fetches)."""
        with self._lock:
            self._tokens.clear()
            self.fetches = 0


#: The process's token cache.
TOKENS = TokenCache()


def _fetch_token(destination: Destination, auth: OAuth2Auth, verify: ssl.SSLContext | bool) -> _Token:
    try:
        secret = auth.client_secret()
    except SecretUnavailable as exc:
        raise AuthUnavailable(f"OAuth2 for destination {destination.name}: {exc}") from None
    form = {"grant_type": "client_credentials"}
    if auth.scope:
        form["scope"] = auth.scope
    basic: httpx.BasicAuth | None = None
    if auth.client_authentication == "basic":
        from urllib.parse import quote_plus

        basic = httpx.BasicAuth(quote_plus(auth.client_id), quote_plus(secret))
    else:
        form |= {"client_id": auth.client_id, "client_secret": secret}
    where = f"OAuth2 token endpoint {auth.token_url} (destination {destination.name})"
    started = time.monotonic()
    try:
        response = httpx.post(
            auth.token_url,
            data=form,
            auth=basic,
            headers={"Accept": "application/json"},
            timeout=destination.timeout,
            verify=verify,
        )
    except httpx.HTTPError as exc:
        raise AuthUnavailable(f"{where}: {http_failure(exc)}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    if response.status_code != 200:
        code = answer.get("error")
        said = f" ({code})" if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""
        raise AuthUnavailable(f"{where} answered HTTP {response.status_code}{said}")
    value = answer.get("access_token")
    kind = answer.get("token_type", "")
    if not isinstance(value, str) or not value or not isinstance(kind, str) or kind.lower() != "bearer":
        raise AuthUnavailable(f"{where} issued no bearer access token")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise AuthUnavailable(f"{where} issued an access token that cannot be sent in a header")
    lifetime = answer.get("expires_in")
    seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else DEFAULT_LIFETIME_SECONDS
    margin = min(REFRESH_MARGIN_SECONDS, seconds / 10)
    return _Token(value, started + seconds - margin)


class _BearerFlow(httpx.Auth):
    """``Authorization: Bearer`` with a fixed token, read when the flow starts."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class _OAuth2Flow(httpx.Auth):
    """The cached client-credentials token; a 401 drops it and the request is sent once more with a new one."""

    requires_request_body = True  # the request is sent again after a 401: its body must be kept

    def __init__(self, destination: Destination, auth: OAuth2Auth, verify: ssl.SSLContext | bool) -> None:
        self._destination, self._auth, self._verify = destination, auth, verify

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = TOKENS.token(self._destination, self._auth, self._verify)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            TOKENS.drop(self._destination, self._auth, token)
            request.headers["Authorization"] = f"Bearer {TOKENS.token(self._destination, self._auth, self._verify)}"
            yield request


def http_failure(exc: httpx.HTTPError) -> str:
    """Describe a failed HTTP call in a few words: its kind, and the TLS reason when TLS refused it.

    Parameters
    ----------
    exc : httpx.HTTPError
        What httpx raised.

    Returns
    -------
    str
        E.g. ``ConnectError (TLS: CERTIFICATE_VERIFY_FAILED)`` or ``ReadTimeout``.
    """
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 8:
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return f"{type(exc).__name__} (TLS: {cause.reason})"
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return type(exc).__name__


def tls_verify(destination: Destination) -> ssl.SSLContext | bool:
    """Return httpx's ``verify`` for a destination: our client context when it has TLS settings, else True.

    Raises
    ------
    AuthUnavailable
        A TLS file cannot be used.
    """
    if destination.ca_file is None and destination.certificate is None and destination.verify_hostname:
        return True
    try:
        return client_context(
            ca_file=destination.ca_file,
            certificate=destination.certificate,
            private_key=destination.private_key,
            verify_hostname=destination.verify_hostname,
        )
    except TlsConfigError as exc:
        raise AuthUnavailable(f"TLS settings of destination {destination.name}: {exc}") from None


def http_auth(destination: Destination, verify: ssl.SSLContext | bool = True) -> httpx.Auth | None:
    """Return the httpx auth flow of a destination (None when it has no ``auth``), reading its secret now.

    Parameters
    ----------
    destination : Destination
        An http, fhir or dicomweb destination.
    verify : ssl.SSLContext or bool
        TLS verification for the OAuth2 token endpoint (the destination's own context: its CA file, and our
        client certificate for token endpoints that require one).

    Returns
    -------
    httpx.Auth or None
        The flow to pass to httpx.

    Raises
    ------
    AuthUnavailable
        The password or token cannot be read.
    """
    auth = destination.auth
    try:
        if isinstance(auth, BasicAuth):
            return httpx.BasicAuth(auth.username, auth.password())
        if isinstance(auth, BearerAuth):
            return _BearerFlow(auth.token())
    except SecretUnavailable as exc:
        raise AuthUnavailable(f"credentials of destination {destination.name}: {exc}") from None
    if isinstance(auth, OAuth2Auth):
        return _OAuth2Flow(destination, auth, verify)
    return None


def http_client(destination: Destination) -> httpx.Client:
    """Return an httpx client for one attempt at a destination: its TLS context, its auth and its timeout.

    Parameters
    ----------
    destination : Destination
        An http, fhir or dicomweb destination.

    Returns
    -------
    httpx.Client
        Use it as a context manager.

    Raises
    ------
    AuthUnavailable
        A TLS file or a secret cannot be used.
    """
    verify = tls_verify(destination)
    return httpx.Client(auth=http_auth(destination, verify), verify=verify, timeout=destination.timeout)
