"""The audit log for administrators on real sockets: ``GET /api/audit`` of ``pacs-vlm api`` on PostgreSQL, and
``pacs-vlm audit list``.  Events are written through the ORM with chosen times, plus real sign-ins.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
import pytest

from integration.store.session import session_scope
from integration.store.tables import AuditEvent, utcnow
from tests.support.peers import wait_until
from tests.web.conftest import ApiProcess
from tests.web.test_auth import add_user, cli, login, session_cookie

FORMULA_ACTOR = '=HYPERLINK("http://attacker.example/","x")'


def add_events(url: str, now: datetime) -> list[int]:
    """Five events, oldest first; returns their ids."""
    rows = [
        AuditEvent(at=now - timedelta(days=3), actor="ae:CT1", action="dicom.association", source="10.0.0.5:104"),
        AuditEvent(at=now - timedelta(days=2), actor="jdoe", action="report.sign", object_type="report", object_id="7"),
        AuditEvent(
            at=now - timedelta(days=1), actor="jdoe", action="report.reject", object_type="report", object_id="8"
        ),
        AuditEvent(
            at=now - timedelta(hours=1), actor="jdoe", action="study.view", object_type="study", object_id="1.2.840.1"
        ),
        AuditEvent(
            at=now - timedelta(minutes=30),
            actor="system",
            action="export.delivered",
            object_type="delivery",
            object_id="3",
            detail={"destination": "pacs", "document": "sr", "attempt": 1},
        ),
    ]
    with session_scope(url) as session:
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


@pytest.fixture
def audited(start_api: Callable[..., ApiProcess], migrated_postgres_url: str) -> tuple[ApiProcess, dict[str, str]]:
    url = migrated_postgres_url
    assert cli(url, "sites", "add", "NORTH", "North Hospital").returncode == 0
    add_user(url, "boss", "admin", None)
    add_user(url, "north_rad", "radiologist", "NORTH")
    add_events(url, utcnow())
    api = start_api(PACSVLM_DATABASE_URL=url)
    assert login(api, FORMULA_ACTOR, "wrong password!!").status_code == 401  # a typed username is untrusted text
    return api, session_cookie(login(api, "boss"))


def audit(api: ApiProcess, cookies: dict[str, str] | None, **params: object) -> httpx.Response:
    return httpx.get(api.url + "/api/audit", params=params, cookies=cookies, timeout=10)  # type: ignore[arg-type]


def actions(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [event["action"] for event in response.json()["events"]]


def test_admin_filters_the_audit_log(audited: tuple[ApiProcess, dict[str, str]]) -> None:
    api, admin = audited
    everything = audit(api, admin)
    assert everything.headers["cache-control"] == "no-store"
    body = everything.json()
    ids = [event["id"] for event in body["events"]]
    assert ids == sorted(ids, reverse=True) and body["next_before_id"] is None  # newest first, one page
    assert [event["action"] for event in body["events"]][:2] == ["auth.login", "auth.login_failed"]
    assert len(ids) == 7

    assert actions(audit(api, admin, actor="jdoe")) == ["study.view", "report.reject", "report.sign"]
    assert actions(audit(api, admin, action="report.sign")) == ["report.sign"]
    assert actions(audit(api, admin, action="report.")) == ["report.reject", "report.sign"]
    assert actions(audit(api, admin, action="auth.")) == ["auth.login", "auth.login_failed"]
    assert actions(audit(api, admin, object_type="report")) == ["report.reject", "report.sign"]
    study = audit(api, admin, object_type="study", object_id="1.2.840.1")
    assert actions(study) == ["study.view"] and study.json()["events"][0]["actor"] == "jdoe"
    exported = audit(api, admin, object_type="delivery").json()["events"][0]
    assert exported["detail"] == {"destination": "pacs", "document": "sr", "attempt": 1}
    assert exported["object_id"] == "3" and exported["at"].endswith("+00:00")

    now = utcnow()
    window = {"since": (now - timedelta(hours=25)).isoformat(), "until": (now - timedelta(minutes=45)).isoformat()}
    assert actions(audit(api, admin, **window)) == ["study.view", "report.reject"]
    naive = (now - timedelta(hours=2)).replace(tzinfo=None).isoformat()  # no zone: read as UTC
    assert actions(audit(api, admin, since=naive, action="study.view")) == ["study.view"]
    assert actions(audit(api, admin, until=(now - timedelta(days=2, hours=12)).isoformat())) == ["dicom.association"]
    assert audit(api, admin, actor="x' OR '1'='1").json() == {"events": [], "next_before_id": None}

    pages, before = [], None
    while True:
        page = audit(api, admin, limit=3, **({"before_id": before} if before else {})).json()
        pages.append([event["id"] for event in page["events"]])
        before = page["next_before_id"]
        if before is None:
            break
        assert before == pages[-1][-1]
    assert pages == [ids[0:3], ids[3:6], ids[6:]]


def test_only_admins_read_the_audit_log_and_bad_filters_are_refused(
    audited: tuple[ApiProcess, dict[str, str]],
) -> None:
    api, admin = audited
    radiologist = session_cookie(login(api, "north_rad"))
    refused = audit(api, radiologist)
    assert refused.status_code == 403 and "events" not in refused.text
    assert audit(api, None).status_code == 401
    now = utcnow()
    bad: list[dict[str, object]] = [
        {"since": "yesterday"},
        {"until": "2025-13-01"},
        {"limit": 0},
        {"limit": 1001},
        {"limit": "ten"},
        {"before_id": 0},
        {"action": "report.%"},
        {"action": "report'; DROP TABLE audit_events; --"},
        {"format": "xml"},
        {"actor": "x" * 129},
        {"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()},
    ]
    for params in bad:
        response = audit(api, admin, **params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["detail"]
    events = wait_until(lambda: (found := audit(api, admin).json()["events"]) and len(found) == 9 and found)
    # nothing was dropped; the role refusal is one aggregated event, the bad filters (422) none
    [refusal] = [event for event in events if event["action"] == "access.forbidden"]
    assert refusal["actor"] == "north_rad" and refusal["source"] == "127.0.0.1"
    assert refusal["detail"] == {"path": "/api/audit", "count": 1, "reason": "not allowed for your role"}


def test_csv_export_cannot_start_a_formula(audited: tuple[ApiProcess, dict[str, str]]) -> None:
    api, admin = audited
    response = audit(api, admin, format="csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == 'attachment; filename="audit.csv"'
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == ["id", "at", "actor", "action", "object_type", "object_id", "source", "detail"]
    assert len(rows) == 7 and "X-Next-Before-Id" not in response.headers
    [failed] = [row for row in rows if row["action"] == "auth.login_failed"]
    assert failed["actor"] == "'" + FORMULA_ACTOR and failed["source"] == "127.0.0.1"
    assert not any(value.startswith(("=", "+", "-", "@")) for row in rows for value in row.values())
    [delivered] = [row for row in rows if row["action"] == "export.delivered"]
    assert json.loads(delivered["detail"]) == {"attempt": 1, "destination": "pacs", "document": "sr"}
    paged = audit(api, admin, format="csv", limit=2)
    assert len(list(csv.DictReader(io.StringIO(paged.text)))) == 2
    assert paged.headers["x-next-before-id"] == rows[1]["id"]


def test_audit_list_command(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    ids = add_events(url, utcnow())
    assert cli(url, "audit", "--help").returncode == 0
    listed = cli(url, "audit", "list", "--action", "report.", "--json")
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(row["action"], row["object_id"]) for row in lines] == [("report.reject", "8"), ("report.sign", "7")]

    recent = cli(url, "audit", "list", "--since", "2h", "--json")
    assert [json.loads(line)["action"] for line in recent.stdout.splitlines()] == ["export.delivered", "study.view"]
    study = cli(url, "audit", "list", "--object", "study:1.2.840.1", "--actor", "jdoe", "--json")
    assert [json.loads(line)["id"] for line in study.stdout.splitlines()] == [ids[3]]
    paged = cli(url, "audit", "list", "--limit", "2", "--before-id", str(ids[3]), "--json")
    assert [json.loads(line)["id"] for line in paged.stdout.splitlines()] == [ids[2], ids[1]]

    table = cli(url, "audit", "list", "--limit", "2")
    assert table.returncode == 0 and "export.delivered" in table.stdout and "jdoe" in table.stdout
    assert f"--before-id {ids[3]}" in table.stderr  # the next page, told on stderr

    for args, message in (
        (("--since", "last tuesday"), "cannot read 'last tuesday' as a time"),
        (("--since", "1h", "--until", "2h"), "--since must be before --until"),
        (("--object", ":7"), "use TYPE or TYPE:ID"),
        (("--limit", "0"), "--limit"),
    ):
        result = cli(url, "audit", "list", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
