"""The web routes in process (FastAPI's ``TestClient``) on SQLite: a fast layer beside the real-process tests.

Sign-in, the worklist and study JSON, the review actions through the JSON API and through the study page's
forms (the one set of actions both call), the error answers (404 for an unknown or another site's study,
422 for a malformed UID) and the OpenAPI document's response schemas.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from integration.config import Settings
from integration.store.migrate import upgrade
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, ReportRevision, SignInThrottle, Site, Study, UserRole
from integration.store.users import create_site, create_user
from integration.web.app import create_app
from integration.web.security.csrf import csrf_token_for_session
from tests.web.test_auth import COOKIE, PASSWORD
from tests.web.test_review_api import draft_of_site

UNKNOWN_UID = "1.2.826.0.1.3680043.2.1125.999"


@dataclass
class World:
    settings: Settings
    north_uid: str
    north_report: int
    south_uid: str
    south_report: int


@pytest.fixture
def world(tmp_path: Path) -> World:
    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'pacs-vlm.sqlite'}"
    upgrade(url)
    settings = Settings(data_dir=data_dir, database_url=url, min_free_bytes=0)
    with session_scope(url) as session:
        create_site(session, "NORTH", "North Hospital")
        create_site(session, "SOUTH", "South Hospital")
        create_user(session, "north_rad", PASSWORD, UserRole.RADIOLOGIST, "NORTH")
        create_user(session, "boss", PASSWORD, UserRole.ADMIN, None)
        create_user(session, "upload", PASSWORD, UserRole.UPLOADER, "NORTH")
    north_report = draft_of_site(settings, tmp_path / "north", "NORTH")
    south_report = draft_of_site(settings, tmp_path / "south", "SOUTH")
    with session_scope(url) as session:
        uids = dict(session.execute(select(Site.code, Study.study_uid).join(Site, Study.site_id == Site.id)).all())
    return World(settings, uids["NORTH"], north_report, uids["SOUTH"], south_report)


@pytest.fixture
def app(world: World) -> Iterator[Any]:
    with TestClient(create_app(world.settings)) as client:
        yield client


def signed_in(world: World, username: str) -> TestClient:
    """A client of its own, signed in, that sends the session's CSRF token with every request."""
    client = TestClient(create_app(world.settings), follow_redirects=False)
    answer = client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["X-CSRF-Token"] = csrf_token_for_session(client.cookies[COOKIE])
    return client


def test_sign_in_worklist_and_study_json(world: World, app: TestClient) -> None:
    wrong = app.post("/api/login", json={"username": "north_rad", "password": "nope"})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid username or password"}
    with session_scope(world.settings.database_url) as session:  # the failure is audited, its attempt counted
        failed = session.scalars(select(AuditEvent.actor).where(AuditEvent.action == "auth.login_failed")).all()
        counted = session.scalars(select(SignInThrottle.username)).all()
    assert failed == ["north_rad"] and "north_rad" in counted
    assert app.get("/api/studies").status_code == 401
    answer = app.post("/api/login", json={"username": "north_rad", "password": PASSWORD})
    assert answer.status_code == 200 and answer.json() == {"username": "north_rad", "role": "radiologist"}
    assert COOKIE in answer.cookies

    rows = app.get("/api/studies").json()
    assert [row["study_uid"] for row in rows] == [world.north_uid]
    assert list(rows[0]) == [
        *("study_uid", "state", "priority", "source", "version", "site", "patient_id", "patient_name"),
        *("patient_birth_date", "patient_sex", "accession_number", "study_date", "study_description"),
        *("order", "order_problem", "critical_reason"),
        *("modalities", "series_count", "last_received_at", "report_id", "report_status"),
        *("claimed_by", "claimed_by_name", "claim_expires_at", "state_reason", "modality_count"),
    ]
    assert (rows[0]["site"], rows[0]["report_id"], rows[0]["report_status"]) == ("NORTH", world.north_report, "draft")
    assert rows[0]["modalities"] == ["CT"] and rows[0]["modality_count"] == 1 and rows[0]["series_count"] == 1
    assert rows[0]["state_reason"] is None  # only a skipped study says why it is in its state

    study = app.get(f"/api/studies/{world.north_uid}")
    assert study.status_code == 200
    detail = study.json()
    assert detail["study_uid"] == world.north_uid and detail["site"] == "NORTH"
    assert [s["instances"] for s in detail["series"]] == [3]
    assert [(r["id"], r["status"]) for r in detail["reports"]] == [(world.north_report, "draft")]
    assert detail["reports"][0]["findings"]["findings"][0]["images"] == [1, 2]  # the stored JSON as it is
    with session_scope(world.settings.database_url) as session:
        viewed = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "study.view")).all()
    assert viewed == [{"via": "api"}]

    # Another site's study and a study that does not exist: the same 404; a malformed UID: 422 naming it.
    other, missing = app.get(f"/api/studies/{world.south_uid}"), app.get(f"/api/studies/{UNKNOWN_UID}")
    assert other.status_code == missing.status_code == 404 and other.content == missing.content
    for bad in ("1.2.x", "1..2", "' OR 1=1 --", "9" * 65):
        refused = app.get(f"/api/studies/{bad}")
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["detail"][0]["loc"] == ["path", "study_uid"]
    assert app.get("/api/studies/1.2.x/opinions").status_code == 422
    page = app.get("/studies/1.2.x")
    assert page.status_code == 422 and "study_uid" in page.text and page.headers["content-type"].startswith("text/html")

    admin = signed_in(world, "boss")
    assert {row["study_uid"] for row in admin.get("/api/studies").json()} == {world.north_uid, world.south_uid}
    assert admin.get(f"/api/studies/{world.south_uid}").status_code == 200
    uploader = signed_in(world, "upload")
    assert uploader.get("/api/studies").status_code == 403
    assert uploader.get(f"/api/studies/{world.north_uid}").status_code == 403


def test_review_actions_through_the_json_api_and_the_forms(world: World) -> None:
    rad, admin = signed_in(world, "north_rad"), signed_in(world, "boss")
    api, form = f"/api/reports/{world.north_report}", f"/studies/{world.north_uid}/reports/{world.north_report}"

    # JSON: one change answers the new working copy.
    copy = rad.post(api + "/changes", json={"action": "accept", "finding": 0, "expected_seq": 0})
    assert copy.status_code == 200, copy.text
    body = copy.json()
    assert (body["seq"], body["findings"][0]["decision"], body["findings"][0]["images"]) == (1, "accepted", [1, 2])
    assert list(body) == [
        *("report_id", "status", "seq", "findings", "impression", "limitations"),
        *("draft_impression", "draft_limitations", "comparison", "draft_comparison", "prior_note", "checks"),
    ]
    stale = rad.post(api + "/changes", json={"action": "accept", "finding": 1, "expected_seq": 0})
    assert stale.status_code == 409
    compared = rad.post(api + "/changes", json={"action": "comparison", "text": "Stable.", "expected_seq": 1})
    assert compared.status_code == 200, compared.text
    assert (compared.json()["seq"], compared.json()["comparison"], compared.json()["draft_comparison"]) == (
        2,
        "Stable.",
        "",
    )
    too_long = rad.post(api + "/changes", json={"action": "comparison", "text": "x" * 5000, "finding": None})
    assert too_long.status_code == 422 and "comparison" in too_long.text
    assert rad.post(api + "/changes", json={"action": "edit", "finding": 9, "text": "x"}).status_code == 422
    assert (
        rad.post(api + "/changes", json={"action": "accept", "finding": 1}, headers={"X-CSRF-Token": ""}).status_code
        == 403
    )

    # The page's one form: typed text saved first, then the button; the same actions, recorded the same way.
    comparison = "Compared with CT of 2024-01-01: <b>nodule</b> unchanged."
    fields = {"do": "accept:1", "expected_seq": "2", "impression": "Nodule; CT in 3 months.", "comparison": comparison}
    accepted = rad.post(form + "/review", data=fields)
    assert accepted.status_code == 303, accepted.text
    assert (
        accepted.headers["location"] == f"/studies/{world.north_uid}?report={world.north_report}&done=accept#finding-1"
    )
    changes = rad.get(api + "/changes").json()
    assert [(c["seq"], c["action"], c["finding"]) for c in changes] == [
        (1, "accept", 0),
        (2, "comparison", None),
        (3, "impression", None),
        (4, "comparison", None),
        (5, "accept", 1),
    ]
    page = rad.get(f"/studies/{world.north_uid}?report={world.north_report}").text
    assert 'id="comparison-text"' in page and "&lt;b&gt;nodule&lt;/b&gt; unchanged" in page  # escaped
    conflict = rad.post(form + "/changes", data={"action": "edit", "finding": 0, "text": "Mine", "expected_seq": 1})
    assert (
        conflict.status_code == 409 and "Someone else changed this draft" in conflict.text and "Mine" in conflict.text
    )

    # Signing: an administrator may not (403 through either path); the radiologist signs through the form.
    assert admin.post(api + "/sign", json={"expected_seq": 3}).status_code == 403
    assert admin.post(form + "/sign", data={"expected_seq": "3"}).status_code == 403
    signed = rad.post(form + "/review", data={"do": "sign", "expected_seq": "5"})
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"].endswith("done=sign#report")
    view = rad.get(api).json()
    assert [(r["version"], r["status"]) for r in view["revisions"]] == [(2, "signed")]
    assert view["report"]["status"] == "signed" and view["working_copy"]["impression"] == "Nodule; CT in 3 months."
    with session_scope(world.settings.database_url) as session:
        revision = session.scalars(select(ReportRevision).where(ReportRevision.report_id == world.north_report)).one()
    assert revision.findings["comparison"] == comparison and f"COMPARISON: {comparison}\n" in revision.text
    again = rad.post(api + "/sign", json={"expected_seq": 3})
    assert again.status_code == 409, again.text

    # Rejecting the other site's draft: the radiologist cannot reach it; the administrator needs a reason.
    south_api = f"/api/reports/{world.south_report}"
    south_form = f"/studies/{world.south_uid}/reports/{world.south_report}"
    assert rad.post(south_api + "/reject", json={"reason": "x"}).status_code == 404
    assert admin.post(south_api + "/reject", json={"reason": ""}).status_code == 422
    elsewhere = f"/studies/{world.north_uid}/reports/{world.south_report}/reject"
    assert admin.post(elsewhere, data={"expected_seq": "0", "reason": "x"}).status_code == 404
    no_reason = admin.post(south_form + "/reject", data={"expected_seq": "0"})
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    rejected = admin.post(south_form + "/reject", data={"expected_seq": "0", "reason": "Wrong patient"})
    assert rejected.status_code == 303 and rejected.headers["location"].endswith("done=reject-draft#report")
    closed = admin.post(south_api + "/reject", json={"reason": "again"})
    assert closed.status_code == 409
    with session_scope(world.settings.database_url) as session:
        versions = session.execute(select(ReportRevision.report_id, ReportRevision.status)).all()
    assert sorted((report, status.value) for report, status in versions) == sorted(
        [(world.north_report, "signed"), (world.south_report, "rejected")]
    )


def test_openapi_lists_a_response_schema_for_every_json_route(world: World) -> None:
    answer = signed_in(world, "boss").get("/openapi.json")  # operators only
    assert answer.status_code == 200
    document = answer.json()
    json_routes = {
        (path, method)
        for path, operations in document["paths"].items()
        for method in operations
        if path.startswith("/api/") or path == "/health"
    }
    assert ("/api/reports/{report_id}/sign", "post") in json_routes and ("/health", "get") in json_routes
    undescribed = []
    for path, method in sorted(json_routes):
        answers = document["paths"][path][method]["responses"]
        success = [code for code in answers if code.startswith("2")]
        if success == ["204"]:
            continue  # no content
        schema = answers[success[0]].get("content", {}).get("application/json", {}).get("schema", {})
        if not schema or schema == {"type": "object"} or schema.get("additionalProperties") is True:
            undescribed.append((path, method, schema))
    assert undescribed == []
    schemas = document["components"]["schemas"]
    assert {"WorkingCopy", "ReportView", "StudyDetail", "WorklistRow", "Signed", "Comparison", "AuditPage"} <= set(
        schemas
    )
    study_uid = next(
        p for p in document["paths"]["/api/studies/{study_uid}"]["get"]["parameters"] if p["name"] == "study_uid"
    )
    assert study_uid["schema"]["maxLength"] == 64
