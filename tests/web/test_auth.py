"""Sign-in, sessions and site-scoped worklists on real sockets: ``pacs-vlm api`` on PostgreSQL.

Sites and users are made with the command line (``--password-stdin``), studies through the ORM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select, update

from integration.store.session import session_scope
from integration.store.sign_in_throttle import FREE_ATTEMPTS_PER_USERNAME
from integration.store.tables import (
    AuditEvent,
    Report,
    Series,
    SignInThrottle,
    Site,
    Study,
    StudyState,
    User,
    UserSession,
    utcnow,
)
from integration.store.users import hash_token
from integration.web.security.csrf import csrf_token_for_session
from tests.support.peers import wait_until
from tests.web.conftest import ApiProcess

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
COOKIE = "pacsvlm_session"


def cli(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    env["PACSVLM_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def add_user(database_url: str, username: str, role: str, site: str | None) -> None:
    args = ["users", "add", username, "--role", role, "--password-stdin"] + (["--site", site] if site else [])
    result = cli(database_url, *args, stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


def add_study(database_url: str, uid: str, site_code: str, with_report: bool) -> None:
    now = utcnow()
    with session_scope(database_url) as session:
        site_id = session.scalar(select(Site.id).where(Site.code == site_code))
        study = Study(
            study_uid=uid,
            state=StudyState.DRAFTED,
            calling_ae="CT1",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
            site_id=site_id,
        )
        session.add_all([study, Series(series_uid=uid + ".1", study=study, modality="CT")])
        session.flush()
        if with_report:
            session.add(
                Report(
                    study_id=study.id,
                    study_version=1,
                    model_id="tiny",
                    model_revision="r1",
                    model_family="llava",
                    prompt_version="ct-chest/v1",
                    structured=True,
                    findings={"impression": "Normal."},
                    text="draft",
                    raw_output="{}",
                    evidence=[],
                    timings={},
                    tokens_in=1,
                    tokens_out=1,
                )
            )


def login(api: ApiProcess, username: str, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(api.url + "/api/login", json={"username": username, "password": password}, timeout=10)


def session_cookie(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {COOKIE: response.cookies[COOKIE]}


def get(api: ApiProcess, path: str, cookies: dict[str, str] | None) -> httpx.Response:
    return httpx.get(api.url + path, cookies=cookies, timeout=10)


def test_cli_refuses_bad_input_without_traceback(migrated_postgres_url: str) -> None:
    assert cli(migrated_postgres_url, "sites", "add", "north", "North Hospital").returncode == 0
    cases = [
        (("sites", "add", "NORTH", "Again"), "", "already exists"),
        (
            ("users", "add", "x", "--role", "radiologist", "--site", "NOPE", "--password-stdin"),
            PASSWORD,
            "unknown site",
        ),
        (("users", "add", "x", "--role", "radiologist", "--site", "NORTH", "--password-stdin"), "short", "too weak"),
        (("users", "add", "x", "--role", "radiologist", "--password-stdin"), PASSWORD, "belongs to a site"),
        (("users", "add", "x", "--role", "boss", "--password-stdin"), PASSWORD, "boss"),
    ]
    for args, stdin, message in cases:
        result = cli(migrated_postgres_url, *args, stdin=stdin + "\n")
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stdout + result.stderr and "Traceback" not in result.stderr
    add_user(migrated_postgres_url, "x", "radiologist", "NORTH")
    result = cli(migrated_postgres_url, "users", "add", "x", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert result.returncode == 2 and "already exists" in result.stderr
    listing = cli(migrated_postgres_url, "users", "list")
    assert listing.returncode == 0 and "x" in listing.stdout and "NORTH" in listing.stdout
    assert cli(migrated_postgres_url, "users", "--help").returncode == 0


def test_login_sessions_and_site_scoped_worklist(
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    for code, name in (("NORTH", "North Hospital"), ("SOUTH", "South Hospital")):
        assert cli(url, "sites", "add", code, name).returncode == 0
    add_user(url, "north_rad", "radiologist", "NORTH")
    add_user(url, "upload", "uploader", "NORTH")
    add_user(url, "boss", "admin", None)
    add_study(url, "1.2.840.1", "NORTH", with_report=True)
    add_study(url, "1.2.840.2", "SOUTH", with_report=False)
    api = start_api(PACSVLM_DATABASE_URL=url)

    ok = login(api, "north_rad")
    cookie_header = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie_header and "samesite=strict" in cookie_header and "path=/" in cookie_header
    assert "secure" not in cookie_header  # plain http here; https gets Secure
    radiologist = session_cookie(ok)

    wrong, unknown = login(api, "north_rad", "wrong password!!"), login(api, "nobody", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401 and wrong.content == unknown.content
    assert COOKIE not in wrong.cookies
    assert get(api, "/api/studies", None).status_code == 401
    assert get(api, "/api/studies", {COOKIE: "forged"}).status_code == 401

    uploader = session_cookie(login(api, "upload"))
    assert get(api, "/api/studies", uploader).status_code == 403
    assert get(api, "/api/studies/1.2.840.1", uploader).status_code == 403

    rows = get(api, "/api/studies", radiologist).json()
    assert [row["study_uid"] for row in rows] == ["1.2.840.1"]
    assert rows[0]["report_status"] == "draft" and rows[0]["series_count"] == 1 and rows[0]["site"] == "NORTH"
    detail = get(api, "/api/studies/1.2.840.1", radiologist)
    assert detail.status_code == 200 and detail.json()["reports"][0]["status"] == "draft"
    other, missing = get(api, "/api/studies/1.2.840.2", radiologist), get(api, "/api/studies/9.9.9", radiologist)
    assert other.status_code == missing.status_code == 404 and other.content == missing.content

    admin = session_cookie(login(api, "boss"))
    assert {row["study_uid"] for row in get(api, "/api/studies", admin).json()} == {"1.2.840.1", "1.2.840.2"}
    assert get(api, "/api/studies/1.2.840.2", admin).status_code == 200

    logout = api.url + "/api/logout"
    assert httpx.post(logout, cookies=radiologist, timeout=10).status_code == 403  # no CSRF token
    assert get(api, "/api/studies", radiologist).status_code == 200
    token = {"X-CSRF-Token": csrf_token_for_session(radiologist[COOKIE])}
    assert httpx.post(logout, cookies=radiologist, headers=token, timeout=10).status_code == 204
    assert get(api, "/api/studies", radiologist).status_code == 401

    with session_scope(url) as session:
        session.execute(
            update(UserSession)
            .where(UserSession.token_hash == hash_token(admin[COOKIE]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert get(api, "/api/studies", admin).status_code == 401

    with session_scope(url) as session:
        users = session.scalars(select(User)).all()
        assert all(user.password_hash.startswith("$argon2id$") for user in users)
        assert all(PASSWORD not in repr(vars(user)) for user in users)
        stored_tokens = set(session.scalars(select(UserSession.token_hash)))
        assert uploader[COOKIE] not in stored_tokens and hash_token(uploader[COOKIE]) in stored_tokens
        events = session.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.source)).all()
    actions = {(action, actor) for action, actor, _ in events}
    assert {("auth.login", "north_rad"), ("auth.login_failed", "north_rad"), ("auth.login_failed", "nobody")} <= actions
    assert ("auth.logout", "north_rad") in actions
    # sign-in events carry the host alone (failures are counted per host), sign-outs host:port
    assert all(source == "127.0.0.1" for action, _, source in events if action.startswith("auth.login"))
    assert all(source and source.startswith("127.0.0.1:") for action, _, source in events if action == "auth.logout")
    log = api.log_path.read_text(errors="replace")
    assert PASSWORD not in log and "wrong password!!" not in log


def test_login_rejects_malformed_bodies(
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
) -> None:
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url)
    for body in ({"username": "a", "password": ""}, {"username": "a", "password": "x" * 2000}, {"username": "a"}):
        response = httpx.post(api.url + "/api/login", json=body, timeout=10)
        assert response.status_code == 422
        assert response.json()["detail"] and "xxxx" not in response.text  # the fields named, nothing sent echoed


def login_from(api: ApiProcess, host: str, username: str, password: str = PASSWORD) -> httpx.Response:
    """Sign in over a connection from another loopback address (Linux routes all of 127.0.0.0/8 locally)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=host), timeout=10) as client:
        return client.post(api.url + "/api/login", json={"username": username, "password": password})


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 15 * 60
    assert response.json()["detail"] == "too many failed sign-ins: try again later"
    assert COOKIE not in response.cookies


def audit_rows(url: str, action: str) -> list[tuple[str, str | None, dict[str, object] | None]]:
    with session_scope(url) as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.source, AuditEvent.detail)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        )
        return [(actor, source, detail) for actor, source, detail in rows]


def audited(url: str, action: str, count: int = 1) -> list[tuple[str, str | None, dict[str, object] | None]]:
    """Refusals are audited by a background writer: wait for them."""
    return wait_until(lambda: (rows := audit_rows(url, action)) and len(rows) >= count and rows, timeout=10)


def test_concurrent_wrong_passwords_are_evaluated_at_most_the_limit_and_never_lock_the_user_out(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str
) -> None:
    """Issue 13 item 6: 40 concurrent guesses had 34 evaluated against a limit of 5, and 5 locked the user out."""
    url = migrated_postgres_url
    assert cli(url, "sites", "add", "NORTH", "North Hospital").returncode == 0
    add_user(url, "north_rad", "radiologist", "NORTH")
    api = start_api(PACSVLM_DATABASE_URL=url)

    guesses = 40
    with ThreadPoolExecutor(guesses) as pool:
        answers = list(pool.map(lambda _: login(api, "north_rad", "wrong password!!").status_code, range(guesses)))
    evaluated = len(audit_rows(url, "auth.login_failed"))  # argon2 ran for exactly these
    assert evaluated == FREE_ATTEMPTS_PER_USERNAME, answers
    assert sorted(answers) == [401] * FREE_ATTEMPTS_PER_USERNAME + [429] * (guesses - FREE_ATTEMPTS_PER_USERNAME)

    assert_throttled(login(api, "north_rad"))  # this source waits, even with the right password
    assert login_from(api, "127.0.0.2", "north_rad").status_code == 200  # the real user elsewhere signs in
    throttled = audited(url, "auth.login_throttled")
    assert (throttled[0][0], throttled[0][1]) == ("north_rad", "127.0.0.1")  # aggregated: not one row per guess
    assert len(throttled) < guesses - FREE_ATTEMPTS_PER_USERNAME
    assert throttled[0][2] and int(str(throttled[0][2]["retry_after_seconds"])) >= 1

    with session_scope(url) as session:  # the back-off passes: one more try, then it doubles
        session.execute(update(SignInThrottle).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert login(api, "north_rad", "wrong password!!").status_code == 401
    wait = int(login(api, "north_rad").headers["retry-after"])
    assert 15 < wait <= 30
    with session_scope(url) as session:
        session.execute(update(SignInThrottle).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert login(api, "north_rad").status_code == 200  # and a success clears this source's count
    assert login(api, "north_rad", "wrong password!!").status_code == 401
    assert login(api, "north_rad").status_code == 200


def test_failed_sign_ins_throttle_a_host(start_api: Callable[..., ApiProcess], migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    assert cli(url, "sites", "add", "NORTH", "North Hospital").returncode == 0
    add_user(url, "north_rad", "radiologist", "NORTH")
    api = start_api(PACSVLM_DATABASE_URL=url)

    for attempt in range(20):  # a different guessed username each time: only the host count reaches its limit
        assert login(api, f"guess{attempt}", "wrong password!!").status_code == 401
    assert_throttled(login(api, "north_rad"))
    assert login_from(api, "127.0.0.2", "north_rad").status_code == 200
    [(actor, source, _)] = audited(url, "auth.login_throttled")
    assert (actor, source) == ("north_rad", "127.0.0.1")


def test_deactivation_ends_sessions_at_once_and_refuses_sign_in(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str
) -> None:
    url = migrated_postgres_url
    assert cli(url, "sites", "add", "NORTH", "North Hospital").returncode == 0
    base = ["users", "add", "north_rad", "--role", "radiologist", "--site", "NORTH", "--password-stdin"]
    for bad, message in (("Doe\\Jane", "backslash"), ("a^b^c^d^e^f", "at most 5"), ("^^", "needs a name")):
        bad_name = cli(url, *base, "--person-name", bad, stdin=PASSWORD + "\n")
        assert bad_name.returncode == 2 and message in bad_name.stderr and "Traceback" not in bad_name.stderr
    added = cli(url, *base, "--person-name", " Doe^Jane ", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    add_user(url, "other_rad", "radiologist", "NORTH")
    api = start_api(PACSVLM_DATABASE_URL=url)

    first, second = session_cookie(login(api, "north_rad")), session_cookie(login(api, "north_rad"))
    other = session_cookie(login(api, "other_rad"))
    assert get(api, "/api/studies", first).status_code == get(api, "/api/studies", second).status_code == 200

    deactivated = cli(url, "users", "deactivate", "north_rad")
    assert deactivated.returncode == 0, deactivated.stderr
    assert get(api, "/api/studies", first).status_code == get(api, "/api/studies", second).status_code == 401
    assert get(api, "/api/studies", other).status_code == 200  # nobody else is signed out
    refused, wrong = login(api, "north_rad"), login(api, "other_rad", "wrong password!!")
    assert refused.status_code == wrong.status_code == 401 and refused.content == wrong.content

    with session_scope(url) as session:
        user = session.scalars(select(User).where(User.username == "north_rad")).one()
        assert not user.active and user.person_name == "Doe^Jane"
        assert session.scalars(select(UserSession).where(UserSession.user_id == user.id)).all() == []
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "user.deactivated")).all()
        assert event.actor.startswith("cli") and (event.object_type, event.object_id) == ("user", str(user.id))
        assert event.detail == {"username": "north_rad", "sessions_ended": 2}
    listing = cli(url, "users", "list")
    assert listing.returncode == 0 and "Doe^Jane" in listing.stdout

    unknown = cli(url, "users", "deactivate", "nobody")
    assert unknown.returncode == 2 and "unknown user" in unknown.stderr and "Traceback" not in unknown.stderr
    assert cli(url, "users", "activate", "north_rad").returncode == 0
    assert login(api, "north_rad").status_code == 200
