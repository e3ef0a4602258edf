"""Single sign-on: OpenID Connect's authorization code flow with PKCE, state and nonce (Authlib).

``GET /login/sso`` sends the browser to the provider with a fresh ``state``, ``nonce`` and PKCE challenge
(S256); they are kept in ``sso_sign_ins`` under hashes and bound to the browser by a random value in a
cookie (SameSite=Lax: it must come back on the provider's cross-site redirect).  ``GET /login/sso/callback``
takes that sign-in once (a replayed or forged callback, or one from another browser, finds nothing),
exchanges the code with the verifier and the client secret, and checks the ID token: signature against the
provider's JWKS (from its discovery document), issuer, audience, expiry and nonce.  The provider's UserInfo
(read with the access token, same subject) adds the claims the ID token leaves out.  The claims then give the
username, the DICOM person name, the role and the sites (:class:`~integration.sso_settings.SingleSignOn`);
a person whose claims map to no role, or a radiologist or uploader to no site, is refused with a page and
audited ``auth.sso_refused``.  Success creates or updates the user and opens an ordinary session (audited
``auth.login`` with ``via: sso``).  The provider's answers are never logged (they carry personal data).
"""

from __future__ import annotations

import logging
import time
from threading import Lock
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.integrations.httpx_client import OAuth2Client  # type: ignore[import-untyped]
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from integration.config import Settings
from integration.sso_settings import SingleSignOn, claim_values
from integration.store.audit import add_event
from integration.store.session import session_scope
from integration.store.sso import begin_sign_in, provider_user, signed_in_by, take_sign_in
from integration.store.tables import UserRole
from integration.store.users import UserError
from integration.web.deps import app_settings, client_host
from integration.web.security.auth import open_session, set_session_cookie

log = logging.getLogger(__name__)

#: The cookie binding a sign-in at the provider to the browser that started it.
SSO_COOKIE = "pacsvlm_sso"
#: How long discovery and JWKS answers are reused (a key rotation is picked up after at most this long).
DISCOVERY_TTL_SECONDS = 300.0
#: Seconds allowed for each call to the provider.
PROVIDER_TIMEOUT = 10.0


class SsoRefused(Exception):
    """A sign-in through the provider that must not succeed; the message is shown to the person."""


class _Provider:
    """The provider's discovery document and key set, fetched lazily and cached for a few minutes."""

    def __init__(self) -> None:
        self._lock = Lock()
        self._cached: dict[str, tuple[float, dict[str, Any]]] = {}

    def _get(self, url: str, fresh: bool = False) -> dict[str, Any]:
        with self._lock:
            hit = self._cached.get(url)
            if hit is not None and not fresh and time.monotonic() - hit[0] < DISCOVERY_TTL_SECONDS:
                return hit[1]
        answer = httpx.get(url, timeout=PROVIDER_TIMEOUT)
        answer.raise_for_status()
        document: dict[str, Any] = answer.json()
        with self._lock:
            self._cached[url] = (time.monotonic(), document)
        return document

    def metadata(self, sso: SingleSignOn) -> dict[str, Any]:
        document = self._get(sso.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if document.get("issuer") != sso.issuer:
            raise SsoRefused("the provider's discovery document names another issuer")
        return document

    def keys(self, sso: SingleSignOn, fresh: bool = False) -> KeySet:
        return KeySet.import_key_set(self._get(str(self.metadata(sso)["jwks_uri"]), fresh))  # type: ignore[arg-type]


_PROVIDER = _Provider()


def _client(sso: SingleSignOn, redirect_uri: str) -> OAuth2Client:
    return OAuth2Client(
        client_id=sso.client_id,
        client_secret=sso.secret(),
        scope=" ".join(sso.scopes),
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
        timeout=PROVIDER_TIMEOUT,
    )


def _redirect_uri(request: Request, sso: SingleSignOn) -> str:
    return sso.redirect_uri or str(request.url_for("sso_callback"))


def start_sign_in(request: Request, sso: SingleSignOn, next_path: str) -> Response:
    """Send the browser to the provider's authorization endpoint (blocking: discovery, database)."""
    settings = app_settings(request)
    metadata = _PROVIDER.metadata(sso)
    state, nonce, verifier, browser = generate_token(32), generate_token(32), generate_token(64), generate_token(32)
    with _client(sso, _redirect_uri(request, sso)) as client:
        url, _ = client.create_authorization_url(
            metadata["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
        )
    with session_scope(settings.database_url) as session:
        begin_sign_in(session, state, browser, nonce, verifier, next_path)
    response = RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        SSO_COOKIE,
        browser,
        max_age=600,
        path="/login/sso",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


def _id_token_claims(sso: SingleSignOn, id_token: str, nonce: str) -> dict[str, Any]:
    """Check the ID token's signature, issuer, audience, expiry and nonce; return its claims.

    Raises
    ------
    SsoRefused
        When any check fails.
    """
    try:
        try:
            token = jwt.decode(id_token, _PROVIDER.keys(sso))
        except JoseError:  # the provider may have rotated its keys since they were cached: fetch them once more
            token = jwt.decode(id_token, _PROVIDER.keys(sso, fresh=True))
        registry = jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": sso.issuer},
            aud={"essential": True, "value": sso.client_id},
            exp={"essential": True},
            sub={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        registry.validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise SsoRefused(f"the provider's ID token was not accepted ({type(exc).__name__})") from None
    audience = token.claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and token.claims.get("azp") != sso.client_id:
        raise SsoRefused("the provider's ID token was issued to another client")
    return dict(token.claims)


def finish_sign_in(request: Request, sso: SingleSignOn) -> tuple[str, str, str]:
    """Check the callback and sign the person in; return the session token, the username and where to go.

    Raises
    ------
    SsoRefused
        For a callback that is forged, replayed, from another browser, refused by the provider, with a bad
        ID token, or for a person whose claims give no role or no site.
    """
    settings = app_settings(request)
    params = request.query_params
    state, code, browser = params.get("state", ""), params.get("code", ""), request.cookies.get(SSO_COOKIE, "")
    with session_scope(settings.database_url) as session:
        pending = take_sign_in(session, state, browser) if state and browser else None
    if pending is None:
        raise SsoRefused("this sign-in is unknown, expired or was already used: start again")
    if params.get("error") or not code:
        raise SsoRefused("the provider did not sign you in")
    metadata = _PROVIDER.metadata(sso)
    try:
        with _client(sso, _redirect_uri(request, sso)) as client:
            tokens = client.fetch_token(
                metadata["token_endpoint"], code=code, code_verifier=pending.code_verifier, state=state
            )
    except Exception as exc:
        raise SsoRefused(f"the provider refused the code ({type(exc).__name__})") from None
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise SsoRefused("the provider sent no ID token")
    claims = _id_token_claims(sso, id_token, pending.nonce)
    claims = _with_userinfo(claims, metadata, tokens.get("access_token"))
    return (*_sign_in_user(request, settings, sso, claims), pending.next_path)


def _with_userinfo(claims: dict[str, Any], metadata: dict[str, Any], access_token: object) -> dict[str, Any]:
    """Add the claims of the provider's UserInfo endpoint to the ID token's (those of the ID token win).

    Many providers put only ``sub`` in the ID token and the profile and group claims in UserInfo
    (OpenID Connect Core 5.4).  UserInfo is read with the access token when the provider offers both; its
    ``sub`` must be the ID token's (Core 5.3.2), or the sign-in is refused.  A UserInfo endpoint that cannot be
    read (or answers a signed JWT, not JSON) leaves the ID token's claims alone: the role and site mapping then
    refuses a person whose ID token says too little, with its own message.

    Raises
    ------
    SsoRefused
        UserInfo names another subject.
    """
    endpoint = metadata.get("userinfo_endpoint")
    if not isinstance(endpoint, str) or not isinstance(access_token, str) or not access_token:
        return claims
    try:
        answer = httpx.get(
            endpoint, headers={"Authorization": f"Bearer {access_token}"}, timeout=PROVIDER_TIMEOUT
        )  # fmt: skip
        answer.raise_for_status()
        info = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("single sign-on: the provider's UserInfo could not be read (%s)", type(exc).__name__)
        return claims
    if not isinstance(info, dict):
        return claims
    if str(info.get("sub")) != str(claims["sub"]):
        raise SsoRefused("the provider's UserInfo names another person than its ID token")
    return {**info, **claims}


def _sign_in_user(request: Request, settings: Settings, sso: SingleSignOn, claims: dict[str, Any]) -> tuple[str, str]:
    """Map the claims to a user, create or update it and open its session; return the token and username."""
    usernames = claim_values(claims, sso.username_claim)
    username = usernames[0].strip()[:64] if usernames else ""
    if not username:
        raise SsoRefused(f"the provider sent no {sso.username_claim}")
    role = sso.role_for(claim_values(claims, sso.role_claim))
    sites = sso.sites_for(claim_values(claims, sso.site_claim))
    refusal = None
    if role is None:
        refusal = "your account has no role in pacs-vlm: ask an administrator to grant you one"
    elif role != "admin" and not sites:
        refusal = "your account has no site in pacs-vlm: ask an administrator to grant you one"
    names = claim_values(claims, sso.person_name_claim)
    with session_scope(settings.database_url) as session:
        if refusal is None and role is not None:
            try:
                user, created = provider_user(
                    session,
                    issuer=sso.issuer,
                    subject=str(claims["sub"]),
                    username=username,
                    person_name=names[0] if names else None,
                    role=UserRole(role),
                    site_codes=sites,
                )
            except UserError as exc:  # e.g. a mapped site code that names no site: nothing of it is kept
                session.rollback()
                refusal = str(exc)
            else:
                detail = {"via": "sso", "role": role, "sites": sites, "created": created}
                return open_session(session, request, user, detail), user.username
    with session_scope(settings.database_url) as session:  # the refusal commits even though the above rolled back
        add_event(
            session,
            actor=username,
            action="auth.sso_refused",
            source=client_host(request),
            detail={"reason": refusal, "role": role, "sites": sites},
        )
    raise SsoRefused(refusal or "refused")


def provider_sign_out_url(request: Request, user_id: int) -> str | None:
    """The provider's end-session URL for a user it signed in (RP-initiated logout), else None.

    None when single sign-on or its ``provider_sign_out`` is off, for a local account, when the provider offers
    no ``end_session_endpoint``, or when it cannot be reached (the sign-out here goes on regardless).  The URL
    names our client and where to come back (``post_sign_out_uri``, else our sign-in page).
    """
    settings = app_settings(request)
    sso = settings.sso
    if sso is None or not sso.provider_sign_out:
        return None
    with session_scope(settings.database_url) as session:
        if not signed_in_by(session, user_id, sso.issuer):
            return None
    try:
        endpoint = _PROVIDER.metadata(sso).get("end_session_endpoint")
    except (httpx.HTTPError, ValueError, SsoRefused):
        log.warning("single sign-on: the provider could not be reached to end its session")
        return None
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        return None
    back = sso.post_sign_out_uri or str(request.url_for("login_form"))
    query = urlencode({"client_id": sso.client_id, "post_logout_redirect_uri": back})
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


def provider_sign_out_page(url: str) -> HTMLResponse:
    """A page that takes the browser on to the provider's sign-out.

    A page, not a redirect: the sign-out is a form's POST, and the pages' ``form-action 'self'`` forbids a form's
    redirect to another site.
    """
    return HTMLResponse(
        f'<!doctype html><meta http-equiv="refresh" content="0;url={_attribute(url)}"><title>Signed out</title>'
        f'<p id="signed-out">Signed out of pacs-vlm. <a href="{_attribute(url)}">Sign out at the provider too</a>.</p>',
        headers={"Cache-Control": "no-store"},
    )


def _refused_page(request: Request, message: str) -> HTMLResponse:
    from integration.web.pages.templating import render  # the pages import this module for the sign-in form

    page = render(request, "sso_refused.html", {"message": message}, status_code=status.HTTP_403_FORBIDDEN)
    page.delete_cookie(SSO_COOKIE, path="/login/sso")
    return page


def _configured(request: Request) -> SingleSignOn:
    sso = app_settings(request).sso
    if sso is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "single sign-on is not configured")
    return sso


def sso_router() -> APIRouter:
    """Build the single sign-on routes: ``GET /login/sso`` and ``GET /login/sso/callback``.

    Returns
    -------
    fastapi.APIRouter
        The routes (404 when no provider is configured).
    """
    router = APIRouter(tags=["authentication"])

    @router.get("/login/sso", summary="Sign in through the OpenID provider", include_in_schema=True)
    def sso_start(request: Request, next: str | None = None) -> Response:
        """Redirect to the provider with state, nonce and a PKCE challenge."""
        from integration.web.pages.templating import local_path

        sso = _configured(request)
        try:
            return start_sign_in(request, sso, local_path(next, ""))
        except (httpx.HTTPError, KeyError, ValueError, SsoRefused):
            log.error("single sign-on: the provider's discovery document could not be read")
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, "the sign-in provider cannot be reached now") from None

    @router.get("/login/sso/callback", name="sso_callback", summary="The OpenID provider's answer")
    def sso_callback(request: Request) -> Response:
        """Check the answer, sign in and go on (a page of refusal for anything wrong)."""
        sso = _configured(request)
        try:
            token, _, next_path = finish_sign_in(request, sso)
        except SsoRefused as exc:
            return _refused_page(request, str(exc))
        except (httpx.HTTPError, KeyError):
            log.error("single sign-on: the provider could not be reached for the callback")
            return _refused_page(request, "the sign-in provider cannot be reached now: try again")
        # a page, not a redirect: the session cookie is SameSite=Strict, and the browser would not send it on a
        # redirect chain that began at the provider's site; this page's own navigation is same-site
        target = next_path or "/"
        page = HTMLResponse(
            f'<!doctype html><meta http-equiv="refresh" content="0;url={_attribute(target)}">'
            f'<title>Signed in</title><a href="{_attribute(target)}">Continue</a>',
            headers={"Cache-Control": "no-store"},
        )
        set_session_cookie(page, request, token)
        page.delete_cookie(SSO_COOKIE, path="/login/sso")
        return page

    return router


def _attribute(value: str) -> str:
    """Escape a local path for an HTML attribute."""
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
