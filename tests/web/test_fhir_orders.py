"""``/fhir/ServiceRequest`` in process (FastAPI's ``TestClient``, SQLite): auth, create, change, cancel, repeats.

The EHR side is a plain HTTP client sending R4 ServiceRequests (fhir.resources validates what we answer);
the order store, the studies it links and the worklist are the real ones.  The withdrawal sender
(:mod:`integration.export.corrections`) runs for real behind a recorder (the report went nowhere, so it sends
nothing): what it sends to receivers is its own tests'.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from sqlalchemy import select, update
from typer.testing import CliRunner, Result

from integration.config import Settings
from integration.export.corrections import withdraw_reports
from integration.samples import write_ct_series
from integration.store.migrate import upgrade
from integration.store.order_tables import Order, OrderEvent
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Report, ReportStatus, Site, Study, StudyState, UserRole
from integration.store.users import create_site, create_user
from integration.web.app import create_app
from integration.web.security.csrf import csrf_token_for_session
from tests.orders.test_fhir_in import PATIENT, service_request
from tests.reports.test_signing import add_report, evidence_of, store_study
from tests.web.conftest import ApiProcess
from tests.web.test_auth import COOKIE, PASSWORD
from worker.cli import app as root

FHIR = "application/fhir+json"


@dataclass
class World:
    settings: Settings
    study_id: int
    report_id: int
    withdrawn: list[tuple[list[int], str]]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with the sites and users, made once per module (migrations and argon2 are slow)."""
    path = tmp_path_factory.mktemp("template") / "pacs-vlm.sqlite"
    url = f"sqlite:///{path}"
    upgrade(url)
    with session_scope(url) as session:
        create_site(session, "NORTH", "North Hospital")
        create_site(session, "SOUTH", "South Hospital")
        create_user(session, "north_ehr", PASSWORD, UserRole.UPLOADER, "NORTH")
        create_user(session, "south_ehr", PASSWORD, UserRole.UPLOADER, "SOUTH")
        create_user(session, "north_rad", PASSWORD, UserRole.RADIOLOGIST, "NORTH")
        create_user(session, "boss", PASSWORD, UserRole.ADMIN, None)
    return path


@pytest.fixture
def world(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(template) as source, sqlite3.connect(data_dir / "pacs-vlm.sqlite") as target:
        source.backup(target)  # a consistent copy, WAL included
    url = f"sqlite:///{data_dir / 'pacs-vlm.sqlite'}"
    settings = Settings(data_dir=data_dir, database_url=url, min_free_bytes=0)
    # A drafted CT study of NORTH whose header names the order's accession number and patient.
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 2, rows=16, columns=16))
    with session_scope(url) as session:
        north = session.scalar(select(Site.id).where(Site.code == "NORTH"))
        session.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(site_id=north, accession_number="ACC-1001", patient_id=PATIENT, issuer_of_patient_id=None)
        )
    report_id = add_report(settings, study_id, evidence_of(headers))
    withdrawn: list[tuple[list[int], str]] = []

    def recorded(settings: Settings, report_ids: list[int], reason: str) -> list[int]:
        withdrawn.append((list(report_ids), reason))
        return withdraw_reports(settings, report_ids, reason)  # the real one (no deliveries here: nothing to send)

    monkeypatch.setattr("integration.web.api.orders.withdraw_reports", recorded)
    return World(settings, study_id, report_id, withdrawn)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings)) as test_client:
        yield test_client


def basic(username: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": FHIR}


def signed(world: World, username: str, client: TestClient | None = None) -> TestClient:
    """A client signed in once (a session, not argon2 on every request) that sends the CSRF token and FHIR JSON."""
    client = client or TestClient(create_app(world.settings))
    assert client.post("/api/login", json={"username": username, "password": PASSWORD}).status_code == 200
    client.headers.update({"X-CSRF-Token": csrf_token_for_session(client.cookies[COOKIE]), "Content-Type": FHIR})
    return client


def outcome(answer: Any, status: int) -> str:
    """Check an OperationOutcome answer and return its message."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(FHIR)
    return str(OperationOutcome.model_validate(answer.json()).issue[0].diagnostics)


def body(**changes: Any) -> bytes:
    return json.dumps(service_request(**changes)).encode()


def order_row(world: World) -> Order:
    with session_scope(world.settings.database_url) as session:
        order = session.scalars(select(Order)).one()
        session.expunge(order)
        return order


def events(world: World) -> list[dict[str, Any]]:
    with session_scope(world.settings.database_url) as session:
        return [
            {"control": e.control, **(e.detail or {})}
            for e in session.scalars(select(OrderEvent).order_by(OrderEvent.id))
        ]


def test_authentication_and_roles(world: World, client: TestClient) -> None:
    assert "sign in" in outcome(
        client.post("/fhir/ServiceRequest", content=body(), headers={"Content-Type": FHIR}), 401
    )
    with TestClient(create_app(world.settings)) as own:  # its refusal audit is written when it closes
        wrong = own.post("/fhir/ServiceRequest", content=body(), headers=basic("north_rad"))
        assert outcome(wrong, 403) == "not allowed for your role"
    bad_password = basic("north_ehr") | {"Authorization": "Basic " + base64.b64encode(b"north_ehr:nope").decode()}
    outcome(client.post("/fhir/ServiceRequest", content=body(), headers=bad_password), 401)
    # A session cookie needs the CSRF token, as every other change does.
    signed = TestClient(create_app(world.settings))
    assert signed.post("/api/login", json={"username": "north_ehr", "password": PASSWORD}).status_code == 200
    outcome(signed.post("/fhir/ServiceRequest", content=body(), headers={"Content-Type": FHIR}), 403)
    token = csrf_token_for_session(signed.cookies[COOKIE])
    created = signed.post("/fhir/ServiceRequest", content=body(), headers={"Content-Type": FHIR, "X-CSRF-Token": token})
    assert created.status_code == 201, created.text
    with session_scope(world.settings.database_url) as session:
        refused = session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("access.%"))).all()
    assert "access.forbidden" in refused


def test_create_change_repeat_and_cancel_over_put(world: World, client: TestClient) -> None:
    ehr = signed(world, "north_ehr")
    created = ehr.put("/fhir/ServiceRequest/sr-1", content=body(priority="stat"))
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith(FHIR) and created.headers["cache-control"] == "no-store"
    assert created.headers["location"] == "/fhir/ServiceRequest/sr-1"
    resource = ServiceRequest.model_validate(created.json())
    assert (resource.id, resource.status, resource.priority) == ("sr-1", "active", "stat")
    order = order_row(world)
    assert (order.fhir_id, order.source, order.sender, order.indication) == (
        "sr-1",
        "fhir",
        "api:north_ehr",
        "Persistent cough, rule out mass; Weight loss",
    )
    with session_scope(world.settings.database_url) as session:
        study = session.get(Study, world.study_id)
        assert study is not None and (study.order_id, study.priority) == (order.id, "stat")
        north = session.scalar(select(Site.id).where(Site.code == "NORTH"))
    assert order.site_id == north

    # The same content again changes nothing: 200, same fields, same update time.
    again = ehr.put("/fhir/ServiceRequest/sr-1", content=body(priority="stat"))
    assert again.status_code == 200 and again.json() == created.json()
    assert order_row(world).updated_at == order.updated_at
    # A change (XO): the indication.
    changed = ehr.put("/fhir/ServiceRequest/sr-1", content=body(priority="stat", reasonCode=[{"text": "Haemoptysis"}]))
    assert changed.status_code == 200 and changed.json()["reasonCode"] == [{"text": "Haemoptysis"}]
    assert ehr.get("/fhir/ServiceRequest/sr-1").json() == changed.json()
    # Not another patient under the same id.
    moved = body(subject={"identifier": {"value": "SOMEONE-ELSE"}}, contained=[])
    assert "cannot change its accession number or patient" in outcome(
        ehr.put("/fhir/ServiceRequest/sr-1", content=moved), 409
    )

    # Revoked after the draft: the order is cancelled, the draft withdrawn and its withdrawal sent.
    cancelled = ehr.put("/fhir/ServiceRequest/sr-1", content=body(status="revoked"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "revoked"
    assert world.withdrawn == [([world.report_id], "order cancelled over FHIR")]
    with session_scope(world.settings.database_url) as session:
        report, study = session.get(Report, world.report_id), session.get(Study, world.study_id)
        assert report is not None and report.status is ReportStatus.WITHDRAWN
        assert study is not None and study.state is StudyState.CANCELLED
        study_uid = study.study_uid
    reader = TestClient(create_app(world.settings))  # the radiologist sees why the draft is gone
    assert reader.post("/api/login", json={"username": "north_rad", "password": PASSWORD}).status_code == 200
    listed = reader.get("/api/studies", params={"status": "withdrawn"}).json()
    assert [row["study_uid"] for row in listed] == [study_uid]
    assert "This draft was withdrawn: its order was cancelled." in reader.get(f"/studies/{study_uid}").text
    # Revoked again: nothing more is withdrawn; active again is refused (a cancelled order stays cancelled).
    assert ehr.put("/fhir/ServiceRequest/sr-1", content=body(status="revoked")).status_code == 200
    assert len(world.withdrawn) == 1
    assert "cancelled" in outcome(ehr.put("/fhir/ServiceRequest/sr-1", content=body()), 409)
    # Completed changes nothing and answers the order as it is.
    done = ehr.put("/fhir/ServiceRequest/sr-1", content=body(status="completed"))
    assert done.status_code == 200 and done.json()["status"] == "revoked"
    assert [(e["control"], e["outcome"]) for e in events(world)] == [
        ("NW", "created"),
        ("XO", "unchanged"),
        ("XO", "changed"),
        ("CA", "cancelled"),
        ("CA", "unchanged"),
    ]
    with session_scope(world.settings.database_url) as session:
        audited = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "order.fhir")).all()
    assert len(audited) == 5 and all(PATIENT not in json.dumps(detail) for detail in audited)


def test_post_assigns_an_id_and_a_repeat_finds_the_same_order(world: World, client: TestClient) -> None:
    ehr = signed(world, "north_ehr")
    created = ehr.post("/fhir/ServiceRequest", content=body())
    assert created.status_code == 201, created.text
    resource_id = created.json()["id"]
    assert resource_id != "sr-1" and created.headers["location"] == f"/fhir/ServiceRequest/{resource_id}"
    again = ehr.post("/fhir/ServiceRequest", content=body())
    assert again.status_code == 200 and again.json()["id"] == resource_id
    # PUT under another id of the same order: refused, naming where it is.
    elsewhere = ehr.put("/fhir/ServiceRequest/sr-9", content=body(id="sr-9"))
    assert f"ServiceRequest/{resource_id}" in outcome(elsewhere, 409)
    assert "completed ServiceRequest creates no order" in outcome(
        ehr.post("/fhir/ServiceRequest", content=body(status="completed")), 422
    )


def test_sites_keep_their_orders(world: World, client: TestClient) -> None:
    assert client.put("/fhir/ServiceRequest/sr-1", content=body(), headers=basic("north_ehr")).status_code == 201
    with TestClient(create_app(world.settings)) as audited:  # its refusal audit is written when it closes
        south = signed(world, "south_ehr", audited)
        assert outcome(south.get("/fhir/ServiceRequest/sr-1"), 404) == "no ServiceRequest sr-1"
        assert outcome(south.put("/fhir/ServiceRequest/sr-1", content=body(status="revoked")), 404)
        assert "another site" in outcome(south.post("/fhir/ServiceRequest", content=body()), 409)
    with session_scope(world.settings.database_url) as session:
        cross = session.execute(
            select(AuditEvent.actor, AuditEvent.object_type, AuditEvent.object_id).where(
                AuditEvent.action == "access.cross_site"
            )
        ).all()
    assert set(cross) == {("south_ehr", "order", "sr-1")}
    assert order_row(world).status == "scheduled"
    # The site's radiologist and the administrator may read it.
    for reader in ("north_rad", "boss"):
        assert client.get("/fhir/ServiceRequest/sr-1", headers=basic(reader)).json()["id"] == "sr-1"
    assert outcome(client.get("/fhir/ServiceRequest/nope", headers=basic("boss")), 404)


def test_bad_input_answers_an_operation_outcome(world: World, client: TestClient) -> None:
    ehr = signed(world, "north_ehr")
    assert "not JSON" in outcome(ehr.post("/fhir/ServiceRequest", content=b"{oops"), 400)
    assert "resourceType" in outcome(ehr.post("/fhir/ServiceRequest", content=b'{"resourceType": "Patient"}'), 400)
    invalid = ehr.post("/fhir/ServiceRequest", content=body(priority=7))
    assert "priority" in outcome(invalid, 422)
    bare = ehr.post("/fhir/ServiceRequest", content=body(subject={"reference": "Patient/1"}))
    assert "subject is a reference without an identifier" in outcome(bare, 422)
    assert "on-hold" in outcome(ehr.post("/fhir/ServiceRequest", content=body(status="on-hold")), 422)
    assert "id must equal" in outcome(ehr.put("/fhir/ServiceRequest/sr-2", content=body()), 400)
    assert "not a FHIR id" in outcome(ehr.put("/fhir/ServiceRequest/a%20b", content=body()), 400)
    plain = {"Content-Type": "text/plain"}
    assert "application/fhir+json" in outcome(ehr.post("/fhir/ServiceRequest", content=body(), headers=plain), 415)
    revoked = ehr.post("/fhir/ServiceRequest", content=body(status="revoked"))
    assert "CA for an order we do not hold" in outcome(revoked, 409)
    with session_scope(world.settings.database_url) as session:
        assert session.scalars(select(Order)).all() == []


def test_worklist_shows_the_order_and_flags_another_patients_order(
    world: World, client: TestClient, tmp_path: Path
) -> None:
    # A second study of NORTH whose accession number the RIS gives to another patient's order.
    other_id, _ = store_study(world.settings, write_ct_series(tmp_path / "other", 1, rows=16, columns=16))
    with session_scope(world.settings.database_url) as session:
        north = session.scalar(select(Site.id).where(Site.code == "NORTH"))
        session.execute(
            update(Study)
            .where(Study.id == other_id)
            .values(site_id=north, accession_number="ACC-2002", patient_id="SOMEONE-ELSE")
        )
        other_uid = session.scalars(select(Study.study_uid).where(Study.id == other_id)).one()
    indication = [{"text": "<script>alert(1)</script> chest pain"}]
    ehr = signed(world, "north_ehr")
    linked = body(priority="stat", reasonCode=indication)
    assert ehr.put("/fhir/ServiceRequest/sr-1", content=linked).status_code == 201
    foreign = body(id="sr-2", identifier=[{**service_request()["identifier"][1], "value": "ACC-2002"}])
    assert ehr.put("/fhir/ServiceRequest/sr-2", content=foreign).status_code == 201

    reader = TestClient(create_app(world.settings))
    assert reader.post("/api/login", json={"username": "north_rad", "password": PASSWORD}).status_code == 200
    rows = {row["accession_number"]: row for row in reader.get("/api/studies").json()}
    assert rows["ACC-1001"]["priority"] == "stat" and rows["ACC-1001"]["order_problem"] is None
    assert rows["ACC-1001"]["order"] == {
        "accession_number": "ACC-1001",
        "indication": "<script>alert(1)</script> chest pain",
        "priority": "stat",
        "procedure": "CT chest",
        "ordering_provider": "Dr. Ada Lovelace",
        "status": "scheduled",
    }
    assert rows["ACC-2002"]["order"] is None
    assert rows["ACC-2002"]["order_problem"] == "order is for another patient"
    assert reader.get(f"/api/studies/{other_uid}").json()["order_problem"] == "order is for another patient"

    page = reader.get("/worklist")
    assert page.status_code == 200
    assert "&#9888; order is for another patient" in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; chest pain" in page.text and "<script>alert" not in page.text
    study_page = reader.get(f"/studies/{other_uid}")
    assert "Not linked to its order: order is for another patient" in study_page.text
    linked_page = reader.get(f"/studies/{rows['ACC-1001']['study_uid']}")
    assert 'id="order-indication"' in linked_page.text and "&lt;script&gt;alert(1)" in linked_page.text


def test_orders_cli_lists_and_shows_the_history(world: World, client: TestClient) -> None:
    ehr = signed(world, "north_ehr")
    assert ehr.put("/fhir/ServiceRequest/sr-1", content=body()).status_code == 201
    assert ehr.put("/fhir/ServiceRequest/sr-1", content=body(status="revoked")).status_code == 200

    def orders(*args: str) -> Result:
        """``pacs-vlm orders ...`` in process (the root command line, as the console script runs it)."""
        env = {"PACSVLM_DATABASE_URL": world.settings.database_url, "COLUMNS": "250"}
        return CliRunner().invoke(root, ["orders", *args], env=env)

    helped = orders("--help")
    assert helped.exit_code == 0 and "list" in helped.stdout and "show" in helped.stdout
    listed = orders("list", "--status", "cancelled")
    assert listed.exit_code == 0, listed.output
    assert "ACC-1001" in listed.output and PATIENT in listed.output and "cancelled" in listed.output
    shown = orders("show", "ACC-1001")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    history = [line for line in lines if " NW " in line or " CA " in line]
    assert len(history) == 2 and "created" in history[0] and "cancelled" in history[1]
    assert "scheduled -> cancelled" in history[1] and "api:north_ehr" in history[1]
    assert any("linked studies:" in line and "cancelled" in line for line in lines)
    missing = orders("show", "NOPE")
    assert missing.exit_code == 1 and "no order has this accession number" in missing.output


def test_orders_over_http_on_postgresql(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, tmp_path: Path
) -> None:
    """The real ``pacs-vlm api`` on PostgreSQL: an EHR's concurrent resends make one order, then it is cancelled."""
    url = migrated_postgres_url
    with session_scope(url) as session:
        create_site(session, "NORTH", "North Hospital")
        create_user(session, "north_ehr", PASSWORD, UserRole.UPLOADER, "NORTH")
    api = start_api(PACSVLM_DATABASE_URL=url)
    with httpx.Client(base_url=api.url, headers={"Content-Type": FHIR}) as ehr:
        # Signed in once: concurrent HTTP Basic requests of one client would each be a throttled sign-in (429).
        assert ehr.post("/api/login", json={"username": "north_ehr", "password": PASSWORD}).status_code == 200
        ehr.headers["X-CSRF-Token"] = csrf_token_for_session(ehr.cookies[COOKIE])
        # The same new order PUT 6 times at once (an EHR retrying): one order, one "created", the rest no change.
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: ehr.put("/fhir/ServiceRequest/sr-1", content=body()), range(6)))
        assert sorted(answer.status_code for answer in answers) == [200] * 5 + [201], [a.text for a in answers]
        ehr.cookies.clear()  # HTTP Basic, one request at a time
        ehr.auth = ("north_ehr", PASSWORD)
        assert ehr.post("/fhir/ServiceRequest", content=body()).json()["id"] == "sr-1"
        read = ehr.get("/fhir/ServiceRequest/sr-1")
        assert read.status_code == 200 and read.headers["content-type"].startswith(FHIR)
        assert ServiceRequest.model_validate(read.json()).status == "active"
        cancelled = ehr.put("/fhir/ServiceRequest/sr-1", content=body(status="revoked"))
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "revoked"
        assert "priority" in outcome(ehr.post("/fhir/ServiceRequest", content=body(priority=3)), 422)
    with session_scope(url) as session:
        orders = session.scalars(select(Order)).all()
        outcomes = [(e.detail or {})["outcome"] for e in session.scalars(select(OrderEvent).order_by(OrderEvent.id))]
    assert [(o.fhir_id, o.status) for o in orders] == [("sr-1", "cancelled")]
    assert outcomes == ["created"] + ["unchanged"] * 6 + ["cancelled"]
    assert PATIENT not in api.log_path.read_text(errors="replace")  # no patient data in the process log
