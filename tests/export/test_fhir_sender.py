"""FHIR update semantics: one DiagnosticReport per report, ``PUT {url}/DiagnosticReport/{id}`` for each version.

Which FHIR server: HAPI FHIR and Blaze are Java servers (no JVM download here); pyembeddedfhir drives
Docker; fhirsnake only serves files and pins an old FastAPI.  ``sekmet-fhir`` (PyPI, FastAPI + SQLite) is a
real R4 server with update-as-create, version history, strict inbound validation and a SMART token
endpoint (client credentials with a client secret): ``test_a_real_fhir_server_...`` below starts it
(``sekmet serve``) with OAuth2 in front, and runs wherever ``sekmet`` is installed (the project's dev
dependencies, or ``PACSVLM_TEST_SEKMET`` naming its executable); it is skipped, saying so, where it is not.
The other tests use :class:`FhirRecorder`, a real HTTP socket (``http.server`` in a thread) that acts like
a FHIR server for update-as-create and checks what a server would:

- the method is ``PUT`` and the URL is ``/fhir/DiagnosticReport/<id>`` with the id of the body's ``id``
  (FHIR: they must agree), the same id for every version of a report;
- ``Content-Type: application/fhir+json`` and ``Authorization: Bearer <token>``;
- the body is a valid DiagnosticReport (``fhir.resources``, R4B: the R4 technical correction our builder
  uses), else 422 with an OperationOutcome;
- answers 201 for a new id and 200 for an update, with ``ETag: W/"<versionId>"``.

No ``If-Match`` is sent: the report's own version history decides what the receiver holds, and a resend
of the same version must succeed whatever version the server is at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from integration.config import Settings
from integration.destinations import Destination
from integration.export.auth import TOKENS
from integration.export.documents import load_document
from integration.export.outbox import queue_deliveries
from integration.export.outgoing import DeliveryFailed, OutgoingDocument
from integration.export.senders import fhir_resource_id, send
from integration.reports.drafts import sign_report
from integration.store.deliveries import DeliveryTarget
from tests.export.test_delivery import delivery_env, states, stored_report
from tests.support.http_peers import Answer, Recorder, Request
from tests.support.peers import WorkerProcess, wait_until
from tests.support.records import db_rows
from tests.support.services import free_port, stop_process, wait_for_port

FHIR_JSON = "application/fhir+json"
TOKEN = "ehr-api-token-from-the-environment"
_PATH = re.compile(r"^/fhir/DiagnosticReport/([A-Za-z0-9\-.]{1,64})$")


class FhirRecorder(Recorder):
    """A FHIR server's update-as-create for DiagnosticReport, keeping each stored version."""

    def __init__(self) -> None:
        super().__init__(self.update)
        self.versions: dict[str, list[dict[str, object]]] = {}

    def update(self, request: Request) -> Answer:
        match = _PATH.fullmatch(request.path)
        if request.method != "PUT" or match is None:
            return outcome(405, "not-supported")
        if request.headers.get("Content-Type") != "application/fhir+json":
            return outcome(415, "not-supported")
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return outcome(401, "login")
        try:
            report = DiagnosticReport.model_validate_json(request.body)
        except ValidationError:
            return outcome(422, "invalid")
        if report.id != match.group(1):
            return outcome(400, "invalid")  # FHIR: the body's id must be the URL's
        stored = self.versions.setdefault(report.id, [])
        stored.append(json.loads(request.body))
        return 201 if len(stored) == 1 else 200, {"ETag": f'W/"{len(stored)}"'}, b""


def outcome(status: int, code: str) -> Answer:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": "x"}]}
    return status, {"Content-Type": "application/fhir+json"}, json.dumps(body).encode()


def delivered(url: str) -> list[str]:
    return [s for (s,) in db_rows(url, "SELECT subject FROM deliveries WHERE state = 'delivered' ORDER BY id")]


def fhir_destination(url: str) -> dict[str, object]:
    return {"name": "ehr", "kind": "fhir", "url": f"{url}/fhir/", "reports": "both",
            "auth": {"type": "bearer", "token_env": "EHR_TOKEN"}}  # fmt: skip


def test_a_draft_then_its_signed_version_replace_one_diagnostic_report(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess]
) -> None:
    with FhirRecorder() as ehr:
        destinations = [fhir_destination(ehr.url)]
        settings = Settings(
            data_dir=tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url,
            destinations=destinations,
        )  # fmt: skip
        report_id = stored_report(settings)
        worker = worker_factory(
            settings.data_dir, migrated_postgres_url, redis_url, None, queues="delivery",
            extra_env=delivery_env(settings, destinations) | {"EHR_TOKEN": TOKEN},
        )  # fmt: skip
        assert len(queue_deliveries(settings, report_id, None, "draft")) == 1
        wait_until(
            lambda: states(migrated_postgres_url) == {"ehr/fhir": ("delivered", 1)},
            timeout=90,
            message=f"the draft PUT: {states(migrated_postgres_url)}\n{worker.log()[-3000:]}",
        )
        revision_id = sign_report(settings, report_id, author="Doe^Jane", organization="North")
        assert len(queue_deliveries(settings, report_id, revision_id, "signed")) == 1
        wait_until(
            lambda: delivered(migrated_postgres_url) == [f"draft:{report_id}", f"signed:{revision_id}"],
            timeout=90,
            message=f"the signed PUT: {states(migrated_postgres_url)}\n{worker.log()[-3000:]}",
        )
    assert [r.method for r in ehr.requests] == ["PUT", "PUT"]
    assert len({r.path for r in ehr.requests}) == 1  # one resource, two versions
    [(resource_id, versions)] = ehr.versions.items()
    assert [v["status"] for v in versions] == ["preliminary", "final"]
    assert all(v["id"] == resource_id for v in versions)
    assert "FHIR PUT HTTP 201" in worker.log() and "FHIR PUT HTTP 200" in worker.log()
    assert TOKEN not in worker.log()


def test_refusals_and_the_resource_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHR_TOKEN", TOKEN)
    body = DiagnosticReport.model_validate(
        {"resourceType": "DiagnosticReport", "id": "pacsvlm-1", "status": "final", "code": {"text": "CT"}}
    ).model_dump_json()
    with FhirRecorder() as ehr:
        destination = Destination.model_validate(fhir_destination(ehr.url))
        by_field = OutgoingDocument(
            "fhir", body.encode(), "r.fhir.json", "application/fhir+json", resource_id="pacsvlm-1"
        )
        assert send(destination, by_field, calling_ae="PACSVLM") == "FHIR PUT HTTP 201"
        from_json = OutgoingDocument("fhir", body.encode(), "r.fhir.json", "application/fhir+json")
        assert fhir_resource_id(from_json) == "pacsvlm-1"  # without resource_id: the JSON's id
        assert send(destination, from_json, calling_ae="PACSVLM") == "FHIR PUT HTTP 200"
        other = OutgoingDocument("fhir", body.encode(), "r.fhir.json", "application/fhir+json", resource_id="other")
        with pytest.raises(
            DeliveryFailed,
            match=r"^PUT http://127\.0\.0\.1:\d+/fhir/DiagnosticReport/other answered HTTP 400 \(invalid\)$",
        ):
            send(destination, other, calling_ae="PACSVLM")
        broken = OutgoingDocument("fhir", b'{"resourceType": "DiagnosticReport", "id": "x"}', "r", "", resource_id="x")
        with pytest.raises(DeliveryFailed, match=r"answered HTTP 422 \(invalid\)$"):
            send(destination, broken, calling_ae="PACSVLM")
        monkeypatch.setenv("EHR_TOKEN", "a-revoked-token")
        with pytest.raises(DeliveryFailed, match=r"answered HTTP 401 \(login\)$"):
            send(destination, by_field, calling_ae="PACSVLM")
    no_id = OutgoingDocument("fhir", b'{"resourceType": "DiagnosticReport"}', "r", "")
    with pytest.raises(DeliveryFailed, match="no valid resource id"):
        send(destination, no_id, calling_ae="PACSVLM")
    assert len(ehr.versions["pacsvlm-1"]) == 2


def sekmet_executable() -> str | None:
    """``sekmet`` from PACSVLM_TEST_SEKMET, beside this interpreter, or on PATH."""
    named = os.environ.get("PACSVLM_TEST_SEKMET")
    if named:
        return named
    beside = Path(sys.executable).parent / "sekmet"
    return str(beside) if beside.exists() else shutil.which("sekmet")


@pytest.fixture
def sekmet(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A real FHIR R4 server (sekmet-fhir) requiring SMART/OAuth2 bearer tokens; yields (base, token url, secret)."""
    executable = sekmet_executable()
    if executable is None:
        pytest.skip("sekmet-fhir (a FHIR R4 server on PyPI) is not installed: the FHIR recorder tests stand in")
    port, secret = free_port(), "pacsvlm-client-secret-42"
    base = f"http://127.0.0.1:{port}/fhir"
    config = {
        "base_url": base, "host": "127.0.0.1", "port": port, "data_dir": str(tmp_path / "sekmet"),
        "simulator": {"enabled": False}, "validation": {"inbound": "strict"},
        "server_auth": {"types": ["smart"], "token_lifetime": 3600, "smart_clients": [
            {"client_id": "pacs-vlm", "client_secret": secret, "scopes": "system/DiagnosticReport.*"}]},
    }  # fmt: skip
    (tmp_path / "sekmet.yaml").write_text(json.dumps(config))  # JSON is YAML
    log = (tmp_path / "sekmet.log").open("wb")
    process = subprocess.Popen(
        [executable, "serve", "-c", str(tmp_path / "sekmet.yaml")], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        yield base, f"http://127.0.0.1:{port}/auth/token", secret
    finally:
        stop_process(process)
        log.close()


def test_a_real_fhir_server_keeps_one_resource_whose_versions_are_the_reports(
    migrated_postgres_url: str, tmp_path: Path, sekmet: tuple[str, str, str]
) -> None:
    base, token_url, secret = sekmet
    TOKENS.clear()
    (tmp_path / "client-secret").write_text(secret)
    destination = {
        "name": "ehr", "kind": "fhir", "url": base, "reports": "both",
        "auth": {"type": "oauth2", "token_url": token_url, "client_id": "pacs-vlm",
                 "client_secret_file": str(tmp_path / "client-secret"), "scope": "system/DiagnosticReport.write"},
    }  # fmt: skip
    settings = Settings(data_dir=tmp_path / "data", database_url=migrated_postgres_url, destinations=[destination])
    report_id = stored_report(settings)
    draft = load_document(settings, DeliveryTarget(1, report_id, None, f"draft:{report_id}", "ehr", "fhir", 1))
    ehr = settings.destinations[0]
    assert send(ehr, draft, calling_ae="PACSVLM") == "FHIR PUT HTTP 201"
    assert send(ehr, draft, calling_ae="PACSVLM") == "FHIR PUT HTTP 200"  # a resend is an update, not a duplicate
    revision_id = sign_report(settings, report_id, author="Doe^Jane", organization="North")
    signed = load_document(settings, DeliveryTarget(2, report_id, revision_id,
                                                    f"signed:{revision_id}", "ehr", "fhir", 1))  # fmt: skip
    assert send(ehr, signed, calling_ae="PACSVLM") == "FHIR PUT HTTP 200"
    resource_id = fhir_resource_id(draft)
    assert fhir_resource_id(signed) == resource_id
    assert TOKENS.fetches == 1  # one token (write scope) for the three PUTs
    reader = httpx.post(
        token_url, data={"grant_type": "client_credentials", "scope": "system/DiagnosticReport.read"},
        auth=("pacs-vlm", secret), timeout=10,
    ).json()  # fmt: skip
    headers = {"Authorization": f"Bearer {reader['access_token']}", "Accept": "application/fhir+json"}
    history = httpx.get(f"{base}/DiagnosticReport/{resource_id}/_history", headers=headers, timeout=10).json()
    statuses = [entry["resource"]["status"] for entry in history["entry"]]
    assert history["total"] == 3 and statuses == ["final", "preliminary", "preliminary"]  # newest first
    found = httpx.get(f"{base}/DiagnosticReport", headers=headers, timeout=10).json()
    assert found["total"] == 1  # one report, one resource
