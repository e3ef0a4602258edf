"""Single sign-on against a real OpenID Connect provider, idle sessions, break-glass local sign-in.

The provider is panva's ``oidc-provider`` (OpenID Certified) under Node, started by the test
(:mod:`tests.support.oidc_provider`): no mock, no network.  Chromium signs in through the provider's own
login and consent pages; the api is the real ``pacs-vlm api`` on PostgreSQL.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pydicom
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.samples import pydicom_test_file
from integration.sso_settings import SingleSignOn
from integration.store.reading_tables import UploadCase
from integration.store.session import session_scope
from integration.store.sso_tables import SsoIdentity
from integration.store.tables import AuditEvent, Site, Study, User, UserRole, utcnow
from integration.store.users import authenticate
from integration.web.security.csrf import csrf_token_for_session
from integration.web.security.sso import SsoRefused, _id_token_claims, _with_userinfo
from tests.support.instances import ingest
from tests.support.oidc_provider import OidcProvider
from tests.support.review_app import copy_with_new_uids, sign_in, sites_and_users
from tests.support.stow import CONTENT_TYPE, dicom, multipart
from tests.web.conftest import ApiProcess
from tests.web.test_auth import COOKIE, PASSWORD, cli
from tests.web.test_photo_upload import FORM, image_bytes, photo_pixels, upload

ALICE = {"name": "Alice Smith", "groups": ["rad", "site-north", "site-south"]}


@dataclass
class World:
    settings: Settings
    provider: OidcProvider
    api: ApiProcess
    studies: dict[str, str]  # site code -> study UID


@pytest.fixture
def world(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[World]:
    yield from _world(migrated_postgres_url, redis_url, tmp_path)


@pytest.fixture
def userinfo_world(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[World]:
    """The world with a provider whose ID tokens carry only ``sub``: names and groups come from UserInfo."""
    yield from _world(migrated_postgres_url, redis_url, tmp_path, claims_in_userinfo_only=True)


def _world(url: str, redis_url: str, tmp_path: Path, claims_in_userinfo_only: bool = False) -> Iterator[World]:
    sites_and_users(url)
    assert cli(url, "sites", "add", "EAST", "East Hospital").returncode == 0
    settings = Settings(
        database_url=url,
        broker_url=redis_url,
        data_dir=tmp_path / "ingest",
        stable_seconds=1,
        fsync=False,
        calling_aes={"CT1": {"site": "NORTH"}, "SOUTH1": {"site": "SOUTH"}, "EAST1": {"site": "EAST"}},
    )
    now = utcnow()
    studies = {}
    for age, (code, ae) in enumerate((("NORTH", "CT1"), ("SOUTH", "SOUTH1"), ("EAST", "EAST1"))):
        path = copy_with_new_uids(pydicom_test_file("CT_small.dcm"), tmp_path / "files" / f"{code}.dcm")
        studies[code] = str(ingest(settings, path, now - timedelta(seconds=300 - age), ae).StudyInstanceUID)
    assert StudyAssembler(settings).run_once().jobs_created == 3
    api_port = _free_port()
    provider = OidcProvider(
        tmp_path / "oidc",
        f"http://127.0.0.1:{api_port}/login/sso/callback",
        claims_in_userinfo_only=claims_in_userinfo_only,
    ).start()
    provider.set_accounts({"alice": ALICE, "bob": {"name": "Bob Jones", "groups": ["visitors", "site-north"]}})
    env = {
        "PACSVLM_MIN_FREE_BYTES": "0",
        "PACSVLM_DATABASE_URL": url,
        "PACSVLM_BROKER_URL": redis_url,
        "PACSVLM_STORAGE_DIR": str(settings.instance_root),
        "PACSVLM_SSO": provider.settings_json(),
    }
    api = ApiProcess(tmp_path / "api", env, port=api_port).start()
    yield World(settings, provider, api, studies)
    api.stop()
    provider.stop()


def _free_port() -> int:
    from tests.support.services import free_port

    return free_port()


def provider_sign_in(page: Any, api: ApiProcess, login: str) -> None:
    """From our sign-in page through the provider's login and consent pages (whatever lands after)."""
    page.goto(api.url + "/login")
    assert "Sign in with Test Hospital Login" in page.inner_text("#sso-sign-in")
    page.click("#sso-sign-in")
    page.wait_for_selector('input[name="login"]')
    page.fill('input[name="login"]', login)
    page.fill('input[name="password"]', "anything")
    page.click('button[type="submit"]')
    page.wait_for_selector('button[type="submit"]:has-text("Continue")')  # the provider's consent page
    page.click('button[type="submit"]:has-text("Continue")')
    page.wait_for_load_state("networkidle")


def shown_studies(page: Any) -> set[str]:
    """The study UIDs the worklist in the browser links to (the DOM as Chromium serializes it)."""
    return set(re.findall(r'class="open-study"[^>]*href="/studies/([0-9.]+)', page.content()))


def events(settings: Settings, action: str) -> list[AuditEvent]:
    with session_scope(settings.database_url) as session:
        found = list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))
        session.expunge_all()
        return found


def test_provider_sign_in_maps_role_and_sites_and_updates_them(world: World, chromium: Any) -> None:
    page = chromium.new_context().new_page()
    callbacks: list[str] = []
    page.on("request", lambda request: callbacks.append(request.url) if "/login/sso/callback" in request.url else None)
    provider_sign_in(page, world.api, "alice")
    page.wait_for_url("**/worklist**")
    shown = shown_studies(page)
    assert {world.studies["NORTH"], world.studies["SOUTH"]} <= shown
    assert world.studies["EAST"] not in shown  # a third site's study stays out of sight
    east = page.goto(f"{world.api.url}/studies/{world.studies['EAST']}")
    assert east is not None and east.status == 404
    with session_scope(world.settings.database_url) as session:
        user = session.scalars(select(User).where(User.username == "alice")).one()
        assert user.role is UserRole.RADIOLOGIST and user.person_name == "Smith^Alice"
        identity = session.scalars(select(SsoIdentity).where(SsoIdentity.user_id == user.id)).one()
        assert (identity.issuer, identity.subject) == (world.provider.issuer, "sub-alice")
        assert authenticate(session, "alice", "anything") is None  # no usable password
    logins = [event for event in events(world.settings, "auth.login") if event.actor == "alice"]
    assert logins and logins[-1].detail == {
        "via": "sso",
        "role": "radiologist",
        "sites": ["NORTH", "SOUTH"],
        "created": True,
    }

    # a replayed callback (the same code and state, the same browser) is refused: the state was used
    assert callbacks
    replay = page.goto(callbacks[0])
    assert replay is not None and replay.status == 403
    assert "already used" in page.inner_text("#sso-refusal")

    # the next sign-in takes role and sites from the claims again
    world.provider.set_accounts({"alice": {"name": "Alice Smith", "groups": ["rad", "site-east"]}})
    again = chromium.new_context().new_page()
    provider_sign_in(again, world.api, "alice")
    again.wait_for_url("**/worklist**")
    shown = shown_studies(again)
    assert world.studies["EAST"] in shown and world.studies["NORTH"] not in shown
    assert [
        (event.detail or {}).get("created") for event in events(world.settings, "auth.login") if event.actor == "alice"
    ] == [
        True,
        False,
    ]


def test_role_sites_and_name_come_from_userinfo_when_the_id_token_carries_only_the_subject(
    userinfo_world: World, chromium: Any
) -> None:
    world = userinfo_world
    page = chromium.new_context().new_page()
    provider_sign_in(page, world.api, "alice")
    page.wait_for_url("**/worklist**")
    assert {world.studies["NORTH"], world.studies["SOUTH"]} <= shown_studies(page)
    with session_scope(world.settings.database_url) as session:
        user = session.scalars(select(User).where(User.username == "alice")).one()
        assert user.role is UserRole.RADIOLOGIST and user.person_name == "Smith^Alice"
    logins = [event.detail for event in events(world.settings, "auth.login") if event.actor == "alice"]
    assert logins == [{"via": "sso", "role": "radiologist", "sites": ["NORTH", "SOUTH"], "created": True}]


def test_userinfo_of_another_subject_refuses_and_an_unreadable_one_leaves_the_id_token_alone() -> None:
    """A stand-in UserInfo endpoint (a stdlib HTTP server on a real socket) plays a provider that misbehaves."""
    answers = {"/mismatch": {"sub": "sub-mallory", "groups": ["admins"]}, "/same": {"sub": "sub-alice", "x": 1}}

    class UserInfo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            body = json.dumps(answers.get(self.path, {})).encode()
            self.send_response(200 if self.path in answers else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), UserInfo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    claims = {"sub": "sub-alice", "iss": "https://idp", "groups": ["rad"]}
    try:
        with pytest.raises(SsoRefused, match="another person"):
            _with_userinfo(claims, {"userinfo_endpoint": base + "/mismatch"}, "token-1")
        assert _with_userinfo(claims, {"userinfo_endpoint": base + "/same"}, "token-2") == {**claims, "x": 1}
        assert _with_userinfo(claims, {"userinfo_endpoint": base + "/gone"}, "token-3") == claims  # 401
        assert (
            _with_userinfo(claims, {}, "token-4") == claims
            and _with_userinfo(claims, {"userinfo_endpoint": base}, None) == claims
        )
    finally:
        server.shutdown()
    assert seen == ["Bearer token-1", "Bearer token-2", "Bearer token-3"]


def test_signing_out_ends_the_session_at_the_provider_so_the_next_person_signs_in_afresh(
    world: World, chromium: Any
) -> None:
    page = chromium.new_context().new_page()
    provider_sign_in(page, world.api, "alice")
    page.wait_for_url("**/worklist**")
    page.click('form[action="/logout"] button[type="submit"]')
    page.wait_for_selector('button[name="logout"][value="yes"]')  # the provider's own sign-out page
    assert page.url.startswith(world.provider.issuer)
    page.click('button[name="logout"][value="yes"]')
    page.wait_for_url(f"{world.api.url}/login**")
    assert page.goto(world.api.url + "/worklist") is not None and "/login" in page.url  # signed out here ...
    page.click("#sso-sign-in")
    page.wait_for_selector('input[name="login"]')  # ... and there: the provider asks who it is again
    assert [event.actor for event in events(world.settings, "auth.logout")] == ["alice"]

    # a local (break-glass) account signs out here only: the provider is not involved
    local = sign_in(world.api, "boss")
    token = csrf_token_for_session(local.cookies[COOKIE])
    answer = local.post("/logout", data={"csrf_token": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/login"


def test_person_without_a_mapped_role_is_refused_and_audited(world: World, chromium: Any) -> None:
    page = chromium.new_context().new_page()
    provider_sign_in(page, world.api, "bob")
    assert "/login/sso/callback" in page.url
    assert "no role" in page.inner_text("#sso-refusal")
    with session_scope(world.settings.database_url) as session:
        assert session.scalars(select(User).where(User.username == "bob")).first() is None
    refused = events(world.settings, "auth.sso_refused")
    assert [event.actor for event in refused] == ["bob"] and (refused[0].detail or {}).get("role", "absent") is None
    assert page.goto(world.api.url + "/worklist") is not None and "/login" in page.url  # not signed in


def test_forged_state_and_nonce_are_refused(world: World, chromium: Any) -> None:
    forged = httpx.get(f"{world.api.url}/login/sso/callback?code=abc&state=forged", timeout=30)
    assert forged.status_code == 403 and "start again" in forged.text

    # a nonce changed on the way to the provider: the code, state and PKCE verifier are right, the ID token's
    # nonce is not the one this sign-in was started with
    client = httpx.Client(base_url=world.api.url, timeout=30)
    start = client.get("/login/sso")
    assert start.status_code == 303
    parts = urlsplit(start.headers["location"])
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert query["code_challenge_method"] == "S256" and query["state"] and query["nonce"]
    query["nonce"] = "a-nonce-the-attacker-chose"
    context = chromium.new_context()
    context.add_cookies(
        [{"name": "pacsvlm_sso", "value": client.cookies["pacsvlm_sso"], "url": world.api.url + "/login/sso"}]
    )
    page = context.new_page()
    page.goto(urlunsplit(parts._replace(query=urlencode(query))))
    page.fill('input[name="login"]', "alice")
    page.fill('input[name="password"]', "anything")
    page.click('button[type="submit"]')
    page.click('button[type="submit"]:has-text("Continue")')
    page.wait_for_selector("#sso-refusal")
    assert "ID token was not accepted" in page.inner_text("#sso-refusal")
    with session_scope(world.settings.database_url) as session:
        assert session.scalars(select(User).where(User.username == "alice")).first() is None


def test_break_glass_local_admin_is_audited_and_others_use_sso(world: World) -> None:
    boss = sign_in(world.api, "boss")  # the local administrator still signs in with a password
    assert boss.get("/api/studies").status_code == 200
    glass = events(world.settings, "auth.break_glass")
    assert [event.actor for event in glass] == ["boss"] and glass[0].detail == {"role": "admin"}
    answer = httpx.post(world.api.url + "/api/login", json={"username": "north_rad", "password": PASSWORD})
    assert answer.status_code == 403 and "administrators" in answer.json()["detail"]
    assert [event.actor for event in events(world.settings, "auth.local_refused")] == ["north_rad"]


def test_idle_session_ends(world: World, tmp_path: Path) -> None:
    env = dict(world.api.env, PACSVLM_SESSION_IDLE_MINUTES="0.05", PACSVLM_LOCAL_SIGN_IN="all")
    api = ApiProcess(tmp_path / "idle", env).start()
    try:
        client = sign_in(api, "north_rad")
        for _ in range(3):  # activity keeps it alive past the idle limit (last seen is renewed)
            assert client.get("/api/studies").status_code == 200
            time.sleep(1.2)
        time.sleep(4)  # idle past 3 seconds
        page = client.get("/worklist")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert client.get("/api/studies").status_code == 401
    finally:
        api.stop()


def test_user_of_two_sites_from_the_command_line_names_the_site_of_a_stow(world: World) -> None:
    url = world.settings.database_url
    added = cli(
        url,
        "users",
        "add",
        "two",
        "--role",
        "uploader",
        "--site",
        "NORTH",
        "--site",
        "south",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    listing = cli(url, "users", "list")
    assert "NORTH, SOUTH" in listing.stdout
    unknown = cli(url, "users", "sites", "two", "--site", "NOPE")
    assert unknown.returncode == 2 and "unknown site 'NOPE'" in unknown.stderr + unknown.stdout
    assert "Traceback" not in unknown.stderr
    changed = cli(url, "users", "sites", "two", "--site", "EAST", "--site", "NORTH")
    assert changed.returncode == 0 and "EAST, NORTH" in changed.stderr
    assert [event.detail for event in events(world.settings, "user.sites_changed")] == [
        {"username": "two", "sites": ["EAST", "NORTH"]}
    ]

    body = multipart(dicom("MR_small.dcm"))
    headers = {"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"}
    post = world.api.url + "/dicomweb/studies"
    ambiguous = httpx.post(post, content=body, headers=headers, auth=("two", PASSWORD), timeout=60)
    assert ambiguous.status_code == 422 and "several sites" in ambiguous.text
    foreign = httpx.post(post + "?site=SOUTH", content=body, headers=headers, auth=("two", PASSWORD), timeout=60)
    assert foreign.status_code == 422 and "not one of your sites" in foreign.text
    stored = httpx.post(post + "?site=east", content=body, headers=headers, auth=("two", PASSWORD), timeout=60)
    assert stored.status_code == 200, stored.text
    with session_scope(url) as session:
        uid = str(pydicom.dcmread(pydicom_test_file("MR_small.dcm")).StudyInstanceUID)
        site = session.scalar(select(Site.code).join(Study, Study.site_id == Site.id).where(Study.study_uid == uid))
    assert site == "EAST"


def test_uploader_of_two_sites_chooses_the_site_of_a_photo_case(world: World, chromium: Any) -> None:
    world.provider.set_accounts({"carol": {"name": "Carol King", "groups": ["uploaders", "site-north", "site-south"]}})
    context = chromium.new_context()
    page = context.new_page()
    provider_sign_in(page, world.api, "carol")
    page.wait_for_url("**/upload**")
    options = page.eval_on_selector_all("#site option", "options => options.map(option => option.value)")
    assert options == ["", "NORTH", "SOUTH"]
    token = next(cookie["value"] for cookie in context.cookies() if cookie["name"] == COOKIE)
    cookies, csrf = {COOKIE: token}, {"X-CSRF-Token": csrf_token_for_session(token)}
    png = image_bytes(photo_pixels(), "PNG")
    ambiguous = upload(world.api, cookies, csrf, png)
    assert ambiguous.status_code == 422 and "several sites" in ambiguous.text
    stored = upload(world.api, cookies, csrf, png, {**FORM, "site": "SOUTH"})
    assert stored.status_code == 201, stored.text
    with session_scope(world.settings.database_url) as session:
        case = session.get(UploadCase, stored.json()["case_id"])
        assert case is not None and case.site_id is not None
        assert session.get_one(Site, case.site_id).code == "SOUTH"


def test_an_id_token_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    """The signature check against the provider's JWKS, in process: the token carries the provider's key id,
    issuer, audience and nonce, but is signed by a key the provider never published."""
    provider = OidcProvider(tmp_path / "oidc", "http://127.0.0.1:9/login/sso/callback").start()
    try:
        sso = SingleSignOn.model_validate_json(provider.settings_json())
        jwks = httpx.get(provider.issuer + "/jwks", timeout=10).json()
        published = next(key for key in jwks["keys"] if key["kty"] == "RSA")
        forger = RSAKey.generate_key(2048, parameters={"kid": published["kid"]})
        now = int(time.time())
        claims = {"iss": provider.issuer, "aud": provider.client_id, "sub": "sub-alice", "nonce": "n1"}
        token = jwt.encode({"alg": "RS256", "kid": published["kid"]}, {**claims, "iat": now, "exp": now + 300}, forger)
        with pytest.raises(SsoRefused, match="ID token was not accepted"):
            _id_token_claims(sso, token, "n1")
    finally:
        provider.stop()
