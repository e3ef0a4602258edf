"""The review API on real sockets: ``pacs-vlm api`` on PostgreSQL with Redis as the broker.

A radiologist changes a draft's findings, signs it (a verified SR on disk, the outcome, the audit, the
deliveries to a folder destination queued in Redis) or rejects it; other roles, other sites, missing
CSRF tokens and stale or closed reports are refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
from sqlalchemy import select, update

from integration.config import Settings
from integration.reports.sr import read_sr
from integration.samples import write_ct_series
from integration.store.session import session_scope
from integration.store.tables import (
    AuditEvent,
    Delivery,
    Report,
    ReportRevision,
    ReviewChange,
    ReviewOutcome,
    Site,
    Study,
    StudyState,
)
from integration.web.security.csrf import csrf_token_for_session
from tests.reports.test_signing import DRAFT_FINDINGS, add_report, evidence_of, store_study
from tests.support.records import queued_messages
from tests.support.sr_tools import check_with_tools
from tests.web.conftest import ApiProcess
from tests.web.test_auth import COOKIE, add_user, cli, login, session_cookie

NODULE, EFFUSION = (f["text"] for f in DRAFT_FINDINGS["findings"])
HOSTILE = "<script>alert('pwned')</script> Small left effusion."


class Client:
    """A signed-in browser: the session cookie and, unless told otherwise, the CSRF header."""

    def __init__(self, api: ApiProcess, username: str) -> None:
        self.api = api
        self.cookies = session_cookie(login(api, username))
        self.csrf = {"X-CSRF-Token": csrf_token_for_session(self.cookies[COOKIE])}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.api.url + path, cookies=self.cookies, timeout=30)

    def post(self, path: str, body: Any, *, csrf: bool = True) -> httpx.Response:
        headers = self.csrf if csrf else {}
        return httpx.post(self.api.url + path, json=body, cookies=self.cookies, headers=headers, timeout=60)


def draft_of_site(settings: Settings, folder: Path, site: str) -> int:
    """A stored CT study of the site (instance files in the API's instance store) with a draft."""
    study_id, headers = store_study(settings, write_ct_series(folder, 3, rows=16, columns=16))
    with session_scope(settings.database_url) as session:
        site_id = session.scalar(select(Site.id).where(Site.code == site))
        session.execute(update(Study).where(Study.id == study_id).values(site_id=site_id))
    return add_report(settings, study_id, evidence_of(headers))


def setup_sites(url: str) -> None:
    for code, name in (("NORTH", "North Hospital"), ("SOUTH", "South Hospital")):
        assert cli(url, "sites", "add", code, name).returncode == 0
    add_user(url, "north_rad", "radiologist", "NORTH")
    add_user(url, "south_rad", "radiologist", "SOUTH")
    add_user(url, "upload", "uploader", "NORTH")


def start(start_api: Callable[..., ApiProcess], url: str, redis_url: str, destination: dict[str, str]) -> ApiProcess:
    return start_api(
        PACSVLM_DATABASE_URL=url, PACSVLM_BROKER_URL=redis_url, PACSVLM_DESTINATIONS=json.dumps([destination])
    )


def audit(url: str, action: str) -> list[AuditEvent]:
    with session_scope(url) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_review_changes_and_sign_over_http(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    url = migrated_postgres_url
    setup_sites(url)
    destinations = [{"name": "ehr-drop", "kind": "folder", "folder": str(tmp_path / "drop")}]
    api = start_api(
        PACSVLM_DATABASE_URL=url, PACSVLM_BROKER_URL=redis_url, PACSVLM_DESTINATIONS=json.dumps(destinations)
    )
    settings = Settings(data_dir=api.data_dir, database_url=url)
    report_id = draft_of_site(settings, tmp_path / "north", "NORTH")
    south_id = draft_of_site(settings, tmp_path / "south", "SOUTH")
    rad, south, uploader = Client(api, "north_rad"), Client(api, "south_rad"), Client(api, "upload")
    base = f"/api/reports/{report_id}"

    opened = rad.get(base)
    assert opened.status_code == 200, opened.text
    view = opened.json()
    copy = view["working_copy"]
    assert (copy["report_id"], copy["status"], copy["seq"]) == (report_id, "draft", 0)
    assert [(f["index"], f["text"], f["images"], f["decision"]) for f in copy["findings"]] == [
        (0, NODULE, [1, 2], "pending"),
        (1, EFFUSION, [2], "pending"),
    ]
    assert view["report"]["model_id"] == "smoke/llava" and view["report"]["prompt_version"] == "ct-chest/v1"
    assert [e["image"] for e in view["report"]["evidence"]] == [1, 2, 3]
    assert view["changes"] == 0 and view["revisions"] == []

    assert rad.post(base + "/changes", {"action": "accept", "finding": 0}, csrf=False).status_code == 403
    assert uploader.get(base).status_code == 403
    assert uploader.post(base + "/changes", {"action": "accept", "finding": 0}).status_code == 403
    for response in (
        south.get(base),
        south.post(base + "/changes", {"action": "accept", "finding": 0}),
        south.post(base + "/sign", {}),
        rad.get(f"/api/reports/{south_id}"),
        rad.get("/api/reports/999999"),
    ):
        assert response.status_code == 404 and response.json() == {"detail": "no such report"}

    accepted = rad.post(base + "/changes", {"action": "accept", "finding": 0, "expected_seq": 0})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["seq"] == 1 and accepted.json()["findings"][0]["decision"] == "accepted"
    edited = rad.post(base + "/changes", {"action": "edit", "finding": 1, "text": HOSTILE, "expected_seq": 1})
    assert edited.status_code == 200 and edited.json()["findings"][1]["text"] == HOSTILE
    stale = rad.post(base + "/changes", {"action": "reject", "finding": 1, "expected_seq": 1})
    assert stale.status_code == 409 and "changed meanwhile" in stale.json()["detail"]
    for body, message in (
        ({"action": "edit", "finding": 1, "text": " "}, "must not be empty"),
        ({"action": "accept", "finding": 7}, "finding 7 does not exist"),
        ({"action": "add", "text": "x" * 2001}, "at most 2000"),
    ):
        refused = rad.post(base + "/changes", body)
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.text
    for body in ({"action": "approve"}, {"action": "accept", "finding": -1}, {"action": "add", "text": "x", "x": 1}):
        assert rad.post(base + "/changes", body).status_code == 422
    added = rad.post(base + "/changes", {"action": "add", "text": "Old rib fracture.", "expected_seq": 2})
    assert added.status_code == 200 and added.json()["findings"][2]["decision"] == "added"

    changes = rad.get(base + "/changes").json()
    assert [(c["seq"], c["action"], c["finding"], c["actor"]) for c in changes] == [
        (1, "accept", 0, "north_rad"),
        (2, "edit", 1, "north_rad"),
        (3, "add", None, "north_rad"),
    ]
    assert changes[1]["before"] == EFFUSION and changes[1]["after"] == HOSTILE

    assert rad.post(base + "/sign", {"expected_seq": 2}).status_code == 409
    assert rad.post(base + "/sign", {}, csrf=False).status_code == 403
    signed = rad.post(base + "/sign", {"expected_seq": 3})
    assert signed.status_code == 200, signed.text
    revision_id, version = signed.json()["revision_id"], signed.json()["version"]
    assert version == 2
    for path, body in (("/changes", {"action": "accept", "finding": 1}), ("/sign", {}), ("/reject", {"reason": "x"})):
        closed = rad.post(base + path, body)
        assert closed.status_code == 409 and "not a draft" in closed.json()["detail"], closed.text
    assert rad.get(base).json()["revisions"][0] | {"created_at": None} == {
        "id": revision_id,
        "version": 2,
        "status": "signed",
        "author": "north_rad^",
        "organization": "North Hospital",
        "created_at": None,
    }

    with session_scope(url) as session:
        revision = session.get(ReportRevision, revision_id)
        report = session.get(Report, report_id)
        study = session.get(Study, report.study_id) if report else None
        outcome = session.scalars(select(ReviewOutcome).where(ReviewOutcome.report_id == report_id)).one()
        north_site = session.scalar(select(Site.id).where(Site.code == "NORTH"))
        deliveries = session.scalars(select(Delivery).where(Delivery.report_id == report_id)).all()
        south_changes = session.scalars(select(ReviewChange).where(ReviewChange.report_id == south_id)).all()
    assert revision is not None and report is not None and report.status.value == "signed"
    assert study is not None and study.state == StudyState.SIGNED
    signed_texts = [NODULE, HOSTILE, "Old rib fracture."]
    assert [f["text"] for f in revision.findings["findings"]] == signed_texts
    sr_path = settings.data_dir / str(revision.sr_path)
    check_with_tools(sr_path)
    reading = read_sr(pydicom.dcmread(sr_path))
    assert (reading.completion_flag, reading.verification_flag) == ("COMPLETE", "VERIFIED")
    assert [f.text for f in reading.findings] == signed_texts
    assert [(o.name, o.organization) for o in reading.verifying_observers] == [("north_rad^", "North Hospital")]
    assert (outcome.outcome, outcome.revision_id, outcome.site_id) == ("signed", revision_id, north_site)
    assert (outcome.draft_findings, outcome.accepted, outcome.edited, outcome.rejected, outcome.added) == (
        2,
        1,
        1,
        0,
        1,
    )
    assert {(d.destination, d.document, d.revision_id) for d in deliveries} == {
        ("ehr-drop", "fhir", revision_id),
        ("ehr-drop", "hl7", revision_id),
    }
    messages = queued_messages(redis_url, "delivery")
    assert sorted(m["args"][0] for m in messages) == sorted(d.id for d in deliveries)
    assert south_changes == []

    [sign_event] = audit(url, "report.sign")
    assert (sign_event.actor, sign_event.object_type, sign_event.object_id) == ("north_rad", "report", str(report_id))
    assert sign_event.source and sign_event.source.startswith("127.0.0.1:")
    change_events = audit(url, "review.change")
    assert [e.detail for e in change_events] == [
        {"action": "accept", "finding": 0, "seq": 1},
        {"action": "edit", "finding": 1, "seq": 2},
        {"action": "add", "finding": None, "seq": 3},
    ]
    everything = repr([(e.detail, e.actor) for e in audit(url, "review.change") + audit(url, "report.sign")])
    assert "pwned" not in everything and "rib" not in everything
    log = api.log_path.read_text(errors="replace")
    assert "pwned" not in log and "rib fracture" not in log


def test_reject_a_draft_with_a_reason_over_http(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    url = migrated_postgres_url
    setup_sites(url)
    destinations = [{"name": "ehr-drop", "kind": "folder", "folder": str(tmp_path / "drop"), "reports": "both"}]
    api = start_api(
        PACSVLM_DATABASE_URL=url, PACSVLM_BROKER_URL=redis_url, PACSVLM_DESTINATIONS=json.dumps(destinations)
    )
    settings = Settings(data_dir=api.data_dir, database_url=url)
    report_id = draft_of_site(settings, tmp_path / "north", "NORTH")
    rad = Client(api, "north_rad")
    base = f"/api/reports/{report_id}"
    reason = "Images belong to another patient (Jane Roe); recall."

    assert rad.post(base + "/changes", {"action": "reject", "finding": 0}).status_code == 200
    assert rad.post(base + "/reject", {"reason": reason}, csrf=False).status_code == 403
    assert rad.post(base + "/reject", {}).status_code == 422
    assert rad.post(base + "/reject", {"reason": ""}).status_code == 422
    blank = rad.post(base + "/reject", {"reason": " \x00 "})
    assert blank.status_code == 422 and "must not be empty" in blank.json()["detail"]
    assert rad.post(base + "/reject", {"reason": reason, "expected_seq": 0}).status_code == 409
    rejected = rad.post(base + "/reject", {"reason": reason, "expected_seq": 1})
    assert rejected.status_code == 200, rejected.text
    revision_id = rejected.json()["revision_id"]
    assert rad.post(base + "/changes", {"action": "accept", "finding": 1}).status_code == 409
    assert rad.post(base + "/sign", {}).status_code == 409
    assert rad.get(base).json()["working_copy"]["status"] == "rejected"

    with session_scope(url) as session:
        revision = session.get(ReportRevision, revision_id)
        report = session.get(Report, report_id)
        outcome = session.scalars(select(ReviewOutcome)).one()
        deliveries = session.scalars(select(Delivery)).all()
    assert revision is not None and report is not None and report.status.value == "rejected"
    assert (revision.status.value, revision.version, revision.text, revision.author) == (
        "rejected",
        2,
        reason,
        "north_rad",
    )
    assert revision.sr_path is None and deliveries == [] and queued_messages(redis_url, "delivery") == []
    assert (outcome.outcome, outcome.rejected, outcome.accepted, outcome.draft_findings) == ("rejected", 2, 0, 2)
    [event] = audit(url, "report.reject")
    assert event.actor == "north_rad" and event.object_id == str(report_id)
    assert event.detail == {"revision_id": revision_id, "version": 2, "seq": 1, "reason_length": len(reason)}
    assert "Jane Roe" not in api.log_path.read_text(errors="replace")
