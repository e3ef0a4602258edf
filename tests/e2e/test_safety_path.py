"""Issue 17's whole path: a study with a critical finding, from C-STORE to an acknowledged alert and a signed report.

Real parts: ``pacs-vlm listen`` (dcmtk storescu sends the study), ``pacs-vlm worker`` (the analysis task, the
alert notifications), PostgreSQL, Redis, the real OpenAI-compatible backend, the draft parser, the per-finding
confidence, identifier masking, the consistency checks, the medspaCy critical matcher, the alert, a real SMTP
server process (aiosmtpd), a real HTTP receiver, and the review API.

Scripted: the model's answer.  No model here can produce a real critical finding (the tiny random models write
noise), so the worker talks to an OpenAI-compatible server that answers as vLLM does with ``response_format``:
JSON in the draft schema, with ``logprobs``.  Everything after that HTTP answer is the product's own code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from fastapi.testclient import TestClient

from integration.config import Settings
from integration.samples import write_ct_series
from integration.store.session import session_scope
from integration.store.tables import UserRole
from integration.store.users import create_site, create_user
from integration.web.app import create_app
from integration.web.security.csrf import csrf_token_for_session
from tests.alerts.conftest import SmtpSink
from tests.alerts.conftest import smtp_sink as smtp_sink  # the fixture
from tests.models.test_openai_schema import completion
from tests.support.http_peers import Recorder, Request
from tests.support.peers import SCU_AE, ListenerProcess, WorkerProcess, storescu, wait_until
from tests.support.records import db_rows
from tests.web.test_auth import COOKIE, PASSWORD

PATIENT_NAME, PATIENT_ID, ACCESSION = "Marlow^Jane", "MRN-55123", "ACC-5512"

#: What the scripted model answers: a critical finding on the wrong side, a negated one, and one that echoes the
#: patient's name and names anatomy of the other sex.
ANSWER = {
    "findings": [
        {
            "text": "Large left tension pneumothorax with mediastinal shift.",
            "images": [1],
            "laterality": "left",
            "body_region": "chest",
            "certainty": [],
            "urgency": "critical",
        },
        {
            "text": "No pulmonary embolism.",
            "images": [2],
            "laterality": "none",
            "body_region": "chest",
            "certainty": [],
            "urgency": "none",
        },
        {
            "text": "Prostate calcification in Marlow.",
            "images": [2],
            "laterality": "midline",
            "body_region": "pelvis",
            "certainty": ["likely"],
            "urgency": "routine",
        },
    ],
    "impression": "Left tension pneumothorax.",
    "limitations": "",
    "comparison": "no prior study",
}


def token_logprobs(text: str) -> list[dict[str, Any]]:
    """The answer in 6-character tokens; the first finding's tokens sure (-0.01), the others less so (-1.2)."""
    sure = text.index("Large left")
    sure_end = sure + len("Large left tension pneumothorax with mediastinal shift.")
    entries = []
    for start in range(0, len(text), 6):
        piece = text[start : start + 6]
        logprob = -0.01 if sure <= start < sure_end else -1.2
        entries.append({"token": piece, "logprob": logprob, "bytes": list(piece.encode()), "top_logprobs": []})
    return entries


def chest_ct(folder: Path) -> list[Path]:
    """Two CT slices of a female patient's chest, series Laterality R, with the patient's name, id and accession."""
    files = write_ct_series(folder, 2, rows=32, columns=32)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, ACCESSION
        ds.PatientSex, ds.BodyPartExamined, ds.Laterality = "F", "CHEST", "R"
        ds.save_as(path)
    return files


def signed_in(settings: Settings, username: str) -> TestClient:
    client = TestClient(create_app(settings), follow_redirects=False)
    answer = client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["X-CSRF-Token"] = csrf_token_for_session(client.cookies[COOKIE])
    return client


def test_a_critical_finding_is_notified_escalated_acknowledged_and_its_checks_resolved_before_signing(
    listener_factory: Callable[..., ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
    migrated_postgres_url: str,
    redis_url: str,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    url = migrated_postgres_url
    with session_scope(url) as session:
        create_site(session, "NORTH", "North Hospital")
        create_user(session, "north_rad", PASSWORD, UserRole.RADIOLOGIST, "NORTH")
    bodies: list[dict[str, Any]] = []

    def model_server(request: Request) -> tuple[int, dict[str, str], bytes]:
        body = json.loads(request.body)
        bodies.append(body)
        text = json.dumps(ANSWER)
        document = completion(text, logprobs=token_logprobs(text) if body.get("logprobs") else None)
        return 200, {"Content-Type": "application/json"}, json.dumps(document).encode()

    with Recorder(model_server) as server, Recorder(lambda request: (204, {}, b"")) as pager:
        contacts = [
            {
                "name": "on-call radiologist",
                "channel": "email",
                "address": "oncall@north.example",
                "inside_hospital": True,
            },
            {"name": "ED pager", "channel": "webhook", "address": pager.url + "/page"},
        ]
        safety_env = {
            "PACSVLM_ALERT_CONTACTS": json.dumps(contacts),
            "PACSVLM_ALERT_ACK_MINUTES": "0.05",  # 3 s before the next contact is notified
            "PACSVLM_SMTP_HOST": "127.0.0.1",
            "PACSVLM_SMTP_PORT": str(smtp_sink.port),
            "PACSVLM_PUBLIC_URL": "https://pacs-vlm.north.example",
        }
        listener = listener_factory(url, redis_url, calling_aes={SCU_AE: {"site": "NORTH"}}, extra_env=safety_env)
        worker = worker_factory(
            listener.data_dir,
            url,
            redis_url,
            None,
            extra_env={
                **safety_env,
                "PACSVLM_MODEL_SERVER_URL": server.url,
                "PACSVLM_MODEL_SERVER_MODEL": "scripted-vlm",
                "PACSVLM_MODEL_SERVER_TRUSTED": "true",
                "PACSVLM_MAX_NEW_TOKENS": "400",
            },
        )
        assert storescu(listener.port, chest_ct(tmp_path / "ct")).returncode == 0
        drafted = "SELECT r.id, r.findings, r.text, r.raw_output FROM reports r"
        wait_until(lambda: len(db_rows(url, drafted)) == 1, timeout=120, message="the draft")
        [(report_id, findings, text, raw_output)] = db_rows(url, drafted)

        # Decoding bound to the schema on the server, with the model's log-probabilities asked for.
        [sent] = bodies
        assert sent["response_format"]["type"] == "json_schema" and sent["logprobs"] is True
        assert findings["decoding"] == "response_format"
        scores = [finding.get("confidence") for finding in findings["findings"]]
        assert scores[0] is not None and scores[0] > 0.95 and scores[1] is not None and scores[1] < 0.5
        assert "not a probability of being right" in findings["confidence_method"]
        # The echoed name is masked everywhere it is kept, and flagged.
        assert "Marlow" not in json.dumps(findings) and "Marlow" not in text and "Marlow" not in raw_output
        # Checks: left said, the series is R; prostate on a female patient; the masked name.
        kinds = {(check["finding"], check["kind"]) for check in findings["checks"]}
        assert {(1, "laterality"), (3, "sex"), (3, "identifier")} <= kinds
        # Critical: the pneumothorax (text and urgency), not the negated embolism.
        critical = {(match["finding"], match["code"], match["source"]) for match in findings["critical"]}
        assert (1, "pneumothorax", "both") in critical
        assert not any(code == "pulmonary-embolism" for _, code, _ in critical)

        # The study is stat on the worklist with the reason; the first contact (inside) has the patient's name.
        [(priority, reason)] = db_rows(url, "SELECT priority, critical_reason FROM studies")
        assert priority == "stat" and "Pneumothorax" in reason
        [(mail, recipients)] = smtp_sink.messages(1, timeout=60)
        assert recipients == ["oncall@north.example"]
        body = mail.get_payload(decode=True)
        assert isinstance(body, bytes) and b"Pneumothorax" in body and b"Marlow" in body
        # Not acknowledged in time: the next contact (outside the hospital) is told without the patient.
        wait_until(lambda: len(pager.requests) >= 1, timeout=60, message="the escalation to the pager")
        page = pager.requests[0].body
        assert b"Pneumothorax" in page
        for identifier in (b"Marlow", PATIENT_ID.encode(), ACCESSION.encode()):
            assert identifier not in page

        # The radiologist acknowledges; the escalation stops there.
        settings = Settings(data_dir=listener.data_dir, database_url=url, broker_url=redis_url, min_free_bytes=0)
        rad = signed_in(settings, "north_rad")
        [alert] = rad.get("/api/alerts").json()
        acknowledged = rad.post(f"/api/alerts/{alert['id']}/acknowledge")
        assert acknowledged.status_code == 200, acknowledged.text
        [(by, state)] = db_rows(url, "SELECT acknowledged_by, state FROM critical_alerts")
        assert (by, state) == ("north_rad", "acknowledged")

        # Signing waits for each check to be dismissed or fixed.
        api = f"/api/reports/{report_id}"
        seq = 0
        for index in range(3):
            accepted = rad.post(api + "/changes", json={"action": "accept", "finding": index, "expected_seq": seq})
            assert accepted.is_success, accepted.text
            seq += 1
        refused = rad.post(api + "/sign", json={"expected_seq": seq})
        assert refused.status_code == 409 and "consistency checks are open" in refused.json()["detail"]
        for check in findings["checks"]:
            key = f"{check['finding']}:{check['kind']}"
            dismissed = rad.post(api + "/changes", json={"action": "dismiss", "text": key, "expected_seq": seq})
            assert dismissed.is_success, dismissed.text
            seq += 1
        signed = rad.post(api + "/sign", json={"expected_seq": seq})
        assert signed.is_success, signed.text

    # Patient data never reached the processes' logs.
    for log in (listener.log(), worker.log()):
        for identifier in ("Marlow", PATIENT_ID, ACCESSION, "tension pneumothorax"):
            assert identifier not in log
