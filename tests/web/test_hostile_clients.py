"""Issue 13 item 9 against the real ``pacs-vlm api`` process: refusals in the audit (aggregated), ``no-store`` on
JSON, operations endpoints for operators only, ``/health`` near a full disk, a database outage at sign-in, and
a listener start that must leave the API's spare temporary files alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from integration.store.session import session_scope
from integration.store.tables import AuditEvent
from integration.web.security.csrf import csrf_token_for_session
from tests.support.peers import ListenerProcess, wait_until
from tests.support.proxy import CuttableProxy
from tests.support.stow import PASSWORD, dicom, multipart, referenced, stow
from tests.web.conftest import ApiProcess, sign_in_form_token
from tests.web.test_auth import add_study
from tests.web.test_photo_upload import FORM, upload
from tests.web.test_stow import CT, MR, users  # noqa: F401 (the fixture)

COOKIE = "pacsvlm_session"
SOUTH_STUDY = "1.2.826.0.1.3680043.8.498.99"


def signed_in(api: ApiProcess, username: str) -> tuple[dict[str, str], dict[str, str]]:
    response = httpx.post(api.url + "/api/login", json={"username": username, "password": PASSWORD}, timeout=10)
    assert response.status_code == 200, response.text
    token = response.cookies[COOKIE]
    return {COOKIE: token}, {"X-CSRF-Token": csrf_token_for_session(token)}


def events(url: str, action: str) -> list[tuple[str, str | None, str | None, dict[str, Any] | None]]:
    with session_scope(url) as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.source, AuditEvent.object_id, AuditEvent.detail)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        )
        return [(actor, source, object_id, detail) for actor, source, object_id, detail in rows]


def test_refusals_are_audited_without_flooding_and_json_answers_are_not_cached(
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
    users: dict[str, int],  # noqa: F811
) -> None:
    url = migrated_postgres_url
    add_study(url, SOUTH_STUDY, "SOUTH", with_report=False)
    api = start_api(PACSVLM_DATABASE_URL=url)
    radiologist, _ = signed_in(api, "rad_north")  # its CSRF token is left out on purpose
    uploader, upload_csrf = signed_in(api, "up_north")

    studies = httpx.get(api.url + "/api/studies", cookies=radiologist, timeout=10)
    assert studies.status_code == 200 and studies.headers["cache-control"] == "no-store"  # patient data

    for _ in range(50):  # a flood of refusals: the audit gets one event per kind, not 50
        assert httpx.get(f"{api.url}/api/studies/{SOUTH_STUDY}", cookies=radiologist, timeout=10).status_code == 404
        assert httpx.post(api.url + "/api/logout", cookies=radiologist, timeout=10).status_code == 403
    assert httpx.get(api.url + "/api/audit", cookies=uploader, timeout=10).status_code == 403
    assert stow(api, b"not multipart", content_type="application/dicom").status_code == 415
    assert (
        stow(api, b"--b\r\n\r\nx", content_type='multipart/related; type="application/dicom"; boundary=b').status_code
        == 400
    )
    assert upload(api, uploader, upload_csrf, b"", form={**FORM, "birth_date": "1999-99-99"}).status_code == 422
    assert httpx.get(api.url + "/api/studies/1.2.3.4", cookies=radiologist, timeout=10).status_code == 404  # absent

    cross_site = wait_until(lambda: events(url, "access.cross_site"), timeout=10)
    assert [(actor, source, object_id) for actor, source, object_id, _ in cross_site] == [
        ("rad_north", "127.0.0.1", SOUTH_STUDY)
    ]
    csrf_refused = wait_until(lambda: events(url, "access.csrf_refused"), timeout=10)
    assert len(csrf_refused) == 1 and csrf_refused[0][:2] == ("anonymous", "127.0.0.1")  # checked before sign-in
    forbidden = wait_until(lambda: events(url, "access.forbidden"), timeout=10)
    assert [(actor, detail and detail["reason"]) for actor, _, _, detail in forbidden] == [
        ("up_north", "not allowed for your role")
    ]
    refused = wait_until(lambda: (found := events(url, "upload.refused")) and len(found) == 3 and found, timeout=10)
    reasons = sorted(str(detail and detail["reason"]) for _, _, _, detail in refused)
    assert reasons[0] == "invalid photo upload: birth_date"
    assert "malformed multipart body" in reasons[1] and "multipart/related" in reasons[2]
    assert "1999" not in str(refused)  # field names only, never what was typed


def test_operations_endpoints_answer_operators_only(
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
    users: dict[str, int],  # noqa: F811
) -> None:
    api = start_api(
        PACSVLM_DATABASE_URL=migrated_postgres_url,
        PACSVLM_FORWARDED_ALLOW_IPS="127.0.0.1",  # a reverse proxy on this host forwards remote clients
        PACSVLM_OPERATIONS_TOKEN="scrape-token-of-the-monitoring",
    )
    remote = {"X-Forwarded-For": "10.1.2.3"}
    for path in ("/metrics", "/openapi.json"):
        assert httpx.get(api.url + path, timeout=10).status_code == 200  # a loopback client
        assert httpx.get(api.url + path, headers=remote, timeout=10).status_code == 404
        token = {**remote, "Authorization": "Bearer scrape-token-of-the-monitoring"}
        assert httpx.get(api.url + path, headers=token, timeout=10).status_code == 200
        wrong = {**remote, "Authorization": "Bearer guess"}
        assert httpx.get(api.url + path, headers=wrong, timeout=10).status_code == 404
    admin, _ = signed_in(api, "boss")
    radiologist, _ = signed_in(api, "rad_north")
    assert httpx.get(api.url + "/metrics", headers=remote, cookies=admin, timeout=10).status_code == 200
    assert httpx.get(api.url + "/metrics", headers=remote, cookies=radiologist, timeout=10).status_code == 404
    assert httpx.get(api.url + "/health", headers=remote, timeout=10).status_code == 200  # load balancers

    untrusted = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url)  # a proxy it was not told about
    assert httpx.get(untrusted.url + "/metrics", headers=remote, timeout=10).status_code == 404
    public = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_OPERATIONS_PUBLIC="true")
    assert httpx.get(public.url + "/metrics", headers=remote, timeout=10).status_code == 200


def test_health_fails_when_free_space_is_within_the_margin_of_the_minimum(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, tmp_path: Path
) -> None:
    free = shutil.disk_usage(tmp_path).free
    # 100 MB above the minimum: C-STOREs of instances above that are refused, so the API must not say 200
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_MIN_FREE_BYTES=str(free - 100_000_000))
    health = httpx.get(api.url + "/health", timeout=10)
    assert health.status_code == 503, health.text
    body = health.json()
    assert body["failing"] == ["disk"]
    assert "instances above" in body["checks"]["disk"]["detail"]
    assert body["checks"]["disk"]["required_free_bytes"] == free - 100_000_000 + 256 * 1024**2


def test_sign_in_during_a_database_outage_answers_503_with_a_message(
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
    users: dict[str, int],  # noqa: F811
) -> None:
    host_port = migrated_postgres_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = CuttableProxy(host, int(port))
    try:
        api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url.replace(host_port, f"127.0.0.1:{proxy.port}"))
        browser = httpx.Client(base_url=api.url, timeout=30)
        token = sign_in_form_token(browser)
        proxy.cut()
        answer = httpx.post(api.url + "/api/login", json={"username": "rad_north", "password": PASSWORD}, timeout=30)
        assert answer.status_code == 503, answer.text
        assert "the database cannot be reached" in answer.json()["detail"] and answer.headers["retry-after"]
        fields = {"username": "rad_north", "password": PASSWORD, "csrf_token": token}
        page = browser.post("/login", data=fields, headers={"Accept": "text/html"})
        assert page.status_code == 503 and "the database cannot be reached" in page.text
        proxy.restore()
        assert browser.post("/login", data=fields).status_code == 303
    finally:
        proxy.close()


def test_a_listener_start_leaves_the_api_spare_files_alone(
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
    redis_url: str,
    users: dict[str, int],  # noqa: F811
) -> None:
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_BROKER_URL=redis_url)
    first = stow(api, multipart(dicom(CT)))
    assert first.status_code == 200, first.text  # the API's store now keeps spare temporary files
    spares = wait_until(lambda: list((api.data_dir / "instances" / ".incoming").glob("*.part")), timeout=10)
    listener = ListenerProcess(api.data_dir, migrated_postgres_url, redis_url).start()  # sweeps .incoming
    try:
        assert all(path.exists() for path in spares)
        second = stow(api, multipart(dicom(MR)))  # was 0xA700: the spare it took had been deleted
        assert second.status_code == 200, second.text
        assert len(referenced(second.json())) == 1
    finally:
        listener.stop()
