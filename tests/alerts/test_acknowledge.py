"""Acknowledging critical alerts: the API and the study page's banner in process (FastAPI's ``TestClient``) on
PostgreSQL, the worklist's reason beside STAT, the metrics, and ``pacs-vlm alerts`` as a real process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from integration.alerts.raise_alerts import open_critical_alerts
from integration.config import Settings
from integration.store.alert_tables import AlertNotification, NotificationState
from integration.store.session import engine_for, session_scope
from integration.store.tables import AuditEvent, Report, Study, UserRole
from integration.store.users import create_user
from integration.web.app import create_app
from integration.web.ops.alert_metrics import alert_metrics
from integration.web.ops.stage_metrics import stage_histograms
from integration.web.security.csrf import csrf_token_for_session
from tests.alerts.conftest import add_sites, critical_draft
from tests.web.test_auth import COOKIE, PASSWORD, cli

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class World:
    settings: Settings
    north: int
    south: int
    north_uid: str
    south_uid: str


@pytest.fixture
def world(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> World:
    url = migrated_postgres_url
    add_sites(url)
    with session_scope(url) as session:
        create_user(session, "north_rad", PASSWORD, UserRole.RADIOLOGIST, "NORTH")
        create_user(session, "south_rad", PASSWORD, UserRole.RADIOLOGIST, "SOUTH")
        create_user(session, "boss", PASSWORD, UserRole.ADMIN, None)
        create_user(session, "upload", PASSWORD, UserRole.UPLOADER, "NORTH")
    contact = {"name": "on-call", "channel": "email", "address": "oncall@hospital.example"}
    settings = Settings.model_validate(
        {"data_dir": tmp_path / "data", "database_url": url, "broker_url": redis_url, "alert_contacts": [contact]}
    )
    alerts: list[int] = []
    uids: list[str] = []
    for site in ("NORTH", "SOUTH"):
        report_id = critical_draft(settings, tmp_path / site.lower(), site)
        alert_id = open_critical_alerts(settings, report_id)
        assert alert_id is not None
        alerts.append(alert_id)
        with session_scope(url) as session:
            uids.append(session.scalars(select(Study.study_uid).join(Report).where(Report.id == report_id)).one())
    return World(settings, alerts[0], alerts[1], uids[0], uids[1])


def signed_in(world: World, username: str) -> TestClient:
    client = TestClient(create_app(world.settings), follow_redirects=False)
    answer = client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["X-CSRF-Token"] = csrf_token_for_session(client.cookies[COOKIE])
    return client


def acknowledged_events(world: World) -> list[AuditEvent]:
    with session_scope(world.settings.database_url) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "alert.acknowledged")))


def test_acknowledge_through_the_api_records_who_and_when_once(world: World) -> None:
    rad, south, admin = signed_in(world, "north_rad"), signed_in(world, "south_rad"), signed_in(world, "boss")
    assert [a["id"] for a in rad.get("/api/alerts").json()] == [world.north]
    assert [a["id"] for a in admin.get("/api/alerts").json()] == [world.south, world.north]
    [listed] = rad.get("/api/alerts").json()
    assert (listed["labels"], listed["state"], listed["site"], listed["study_uid"]) == (
        ["Pneumothorax"],
        "open",
        "NORTH",
        world.north_uid,
    )
    assert [(n["contact"], n["state"]) for n in listed["notifications"]] == [("on-call", "pending")]
    assert "Doe" not in rad.get("/api/alerts").text
    assert signed_in(world, "upload").get("/api/alerts").status_code == 403
    assert TestClient(create_app(world.settings)).get("/api/alerts").status_code == 401

    path = f"/api/alerts/{world.north}/acknowledge"
    other, missing = south.post(path), south.post("/api/alerts/99999/acknowledge")
    assert other.status_code == missing.status_code == 404 and other.content == missing.content
    no_token = TestClient(create_app(world.settings), cookies=rad.cookies).post(path)
    assert no_token.status_code == 403
    assert acknowledged_events(world) == []

    done = rad.post(path)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["state"], body["acknowledged_by"]) == ("acknowledged", "north_rad") and body["acknowledged_at"]
    assert body["due_at"] is None and [n["state"] for n in body["notifications"]] == ["cancelled"]
    again = rad.post(path)
    assert again.status_code == 200 and again.json()["acknowledged_at"] == body["acknowledged_at"]
    [event] = acknowledged_events(world)
    assert (event.actor, event.object_type, event.object_id) == ("north_rad", "alert", str(world.north))
    assert event.detail is not None and event.detail["via"] == "api" and event.detail["codes"] == ["pneumothorax"]
    assert rad.get("/api/alerts").json() == []
    assert [a["id"] for a in rad.get("/api/alerts?state=acknowledged").json()] == [world.north]
    assert rad.get("/api/alerts?state=bogus").status_code == 422
    with session_scope(world.settings.database_url) as session:
        states = session.scalars(select(AlertNotification.state).order_by(AlertNotification.id)).all()
    assert states == [NotificationState.CANCELLED, NotificationState.PENDING]  # the south alert still waits

    with engine_for(world.settings.database_url).connect() as connection:
        metrics = {m.name: m for m in alert_metrics(connection)}
        stages = {m.name: m for m in stage_histograms(connection)}
    counts = {s.labels["state"]: s.value for s in metrics["pacsvlm_critical_alerts"].samples}
    assert counts == {"open": 1, "acknowledged": 1, "closed": 0}
    latency = stages["pacsvlm_stage_raised_to_acknowledged_seconds"].samples
    assert sum(s.value for s in latency if s.name.endswith("_count")) == 1  # the acknowledged alert, by its model


def test_the_study_page_banner_acknowledges_and_the_worklist_shows_the_reason(world: World) -> None:
    admin, rad = signed_in(world, "boss"), signed_in(world, "north_rad")
    page = admin.get(f"/studies/{world.south_uid}")
    assert page.status_code == 200, page.text
    assert 'id="critical-alerts"' in page.text and "Pneumothorax" in page.text and "Acknowledge</button>" in page.text
    form = f"/studies/{world.south_uid}/alerts/{world.south}/acknowledge"
    assert 'action="' + form + '"' in page.text
    token = admin.headers["X-CSRF-Token"]
    page_client = TestClient(create_app(world.settings), cookies=admin.cookies, follow_redirects=False)
    assert page_client.post(form, content="csrf_token=wrong", headers=FORM).status_code == 403
    # another study's page cannot acknowledge this alert, and a radiologist of another site gets the 404
    assert (
        page_client.post(
            f"/studies/{world.north_uid}/alerts/{world.south}/acknowledge", content=f"csrf_token={token}", headers=FORM
        ).status_code
        == 404
    )
    assert rad.post(form).status_code == 404
    answer = page_client.post(form, content=f"csrf_token={token}", headers=FORM)
    assert answer.status_code == 303 and answer.headers["location"] == f"/studies/{world.south_uid}#critical-alerts"
    after = admin.get(f"/studies/{world.south_uid}").text
    assert "acknowledged by <strong>boss</strong>" in after and "Acknowledge</button>" not in after
    [event] = acknowledged_events(world)
    assert event.actor == "boss" and event.detail is not None and event.detail["via"] == "page"

    worklist = rad.get("/worklist")
    assert worklist.status_code == 200
    assert (
        '<span class="badge stat">STAT</span> <span class="critical-reason">Critical: Pneumothorax</span>'
        in worklist.text
    )
    [row] = rad.get("/api/studies").json()
    assert (row["priority"], row["critical_reason"]) == ("stat", "Critical: Pneumothorax")


def test_the_command_line_lists_and_acknowledges(world: World) -> None:
    url = world.settings.database_url
    listed = cli(url, "alerts", "list", "--open")
    assert listed.returncode == 0, listed.stderr
    assert "Pneumothorax" in listed.stderr + listed.stdout and "Doe" not in listed.stderr + listed.stdout
    unknown = cli(url, "alerts", "ack", "99999", "--by", "Dr Who")
    assert unknown.returncode == 1 and "no alert 99999" in unknown.stderr and "Traceback" not in unknown.stderr
    assert cli(url, "alerts", "ack", str(world.north)).returncode == 2  # --by is required
    done = cli(url, "alerts", "ack", str(world.north), "--by", "Dr  Who")
    assert done.returncode == 0, done.stderr
    assert f"alert {world.north} acknowledged by Dr Who" in done.stderr
    again = cli(url, "alerts", "ack", str(world.north), "--by", "Someone Else")
    assert again.returncode == 0 and "acknowledged already, by Dr Who" in again.stderr
    [event] = acknowledged_events(world)
    assert (event.actor, event.source) == ("Dr Who", "cli")
    for command in (["alerts"], ["alerts", "list"], ["alerts", "ack"]):
        helped = cli(url, *command, "--help")
        assert helped.returncode == 0 and "Usage" in helped.stdout and "Traceback" not in helped.stderr
