"""Sign-in, sessions and site-scoped worklists on real sockets: ``pacs-vlm api`` on PostgreSQL.

Sites and users are made with the command line (``--password-stdin``), studies through the ORM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select, update

from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Report, Series, Site, Study, StudyState, User, UserSession, utcnow
from integration.store.users import hash_token
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

    assert httpx.post(api.url + "/api/logout", cookies=radiologist, timeout=10).status_code == 204
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
    assert all(source and source.startswith("127.0.0.1:") for action, _, source in events if action.startswith("auth"))
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
