"""Critical-finding notifications over real channels: an SMTP server process, an HTTP receiver, an HL7 RIS.

No model here can write a real critical finding, so the draft's stored findings carry the critical match as
``integration/safety/critical.py`` would store it (a scripted draft behind the real findings contract); the
alert, the message builder, the channels, the task body (``worker.tasks.alerts.notify``), the escalation
sweep, PostgreSQL and the Redis broker are real.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from integration.alerts.escalation import escalate_due_alerts
from integration.alerts.raise_alerts import open_critical_alerts, open_missing_alerts
from integration.config import Settings
from integration.queue import NOTIFY_ALERT
from integration.store.alert_tables import AlertNotification, AlertState, CriticalAlert, NotificationState
from integration.store.alerts import AlertClosed, acknowledge_alert
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Report, ReportStatus, Study, utcnow
from tests.alerts.conftest import (
    ACCESSION,
    PATIENT_ID,
    Retry,
    SmtpSink,
    StandInTask,
    add_sites,
    critical_draft,
)
from tests.support.http_peers import Recorder
from tests.support.records import queued_messages
from tests.support.ris import Ris
from tests.support.services import free_port
from worker.tasks.alerts import notify

TOKEN = "pager-secret-token"


def contacts(webhook: str, ris: str = "ris-oru") -> list[dict[str, object]]:
    return [
        {"name": "south on-call", "channel": "email", "address": "south@hospital.example", "sites": ["SOUTH"]},
        {"name": "on-call radiologist", "channel": "email", "address": "oncall@hospital.example"},
        {"name": "ED pager", "channel": "webhook", "address": webhook, "inside_hospital": True, "token": TOKEN},
        {"name": "RIS", "channel": "hl7", "address": ris},
    ]


def settings_for(tmp_path: Path, url: str, redis_url: str, smtp_port: int, webhook: str, ris_port: int) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "database_url": url,
            "broker_url": redis_url,
            "public_url": "https://pacs-vlm.hospital.example",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "smtp_from": "pacs-vlm@hospital.example",
            "alert_contacts": contacts(webhook),
            "alert_ack_minutes": 10,
            "alert_max_attempts": 3,
            "delivery_backoff_seconds": 1,
            "destinations": [{"name": "ris-oru", "kind": "mllp", "host": "127.0.0.1", "port": ris_port, "timeout": 5}],
        }
    )


def notifications(url: str) -> list[AlertNotification]:
    with session_scope(url) as session:
        return list(session.scalars(select(AlertNotification).order_by(AlertNotification.id)))


def actions(url: str, prefix: str = "alert.") -> list[str]:
    with session_scope(url) as session:
        rows = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action.startswith(prefix)).order_by(AuditEvent.id)
        )
        return list(rows)


def test_the_chain_is_notified_without_the_patient_outside_and_with_it_inside(
    migrated_postgres_url: str, redis_url: str, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    url = migrated_postgres_url
    add_sites(url)
    with Recorder(lambda request: (200, {}, b"{}")) as pager, Ris(["AA"]) as ris:
        settings = settings_for(tmp_path, url, redis_url, smtp_sink.port, pager.url + "/hook", ris.port)
        report_id = critical_draft(settings, tmp_path / "north", "NORTH")

        alert_id = open_critical_alerts(settings, report_id)
        assert alert_id is not None
        assert open_critical_alerts(settings, report_id) == alert_id  # a redelivered draft opens nothing new
        with session_scope(url) as session:
            study = session.scalars(select(Study).join(Report, Report.study_id == Study.id)).one()
            assert (study.priority, study.critical_reason) == ("stat", "Critical: Pneumothorax")
            alert = session.get(CriticalAlert, alert_id)
            assert alert is not None and alert.state is AlertState.OPEN and alert.level == 0
            assert alert.codes == ["pneumothorax"] and alert.due_at is not None
            assert timedelta(minutes=9) < alert.due_at - alert.raised_at <= timedelta(minutes=10)
        # the SOUTH-only contact is not in a NORTH study's chain: level 0 is the on-call radiologist
        first = notifications(url)
        assert [(n.level, n.contact, n.state) for n in first] == [(0, "on-call radiologist", NotificationState.PENDING)]
        queued = queued_messages(redis_url, "delivery")
        assert [(m["headers"]["task"], m["args"]) for m in queued] == [(NOTIFY_ALERT, [first[0].id])]

        # level 0: an e-mail outside the hospital, through the real SMTP server: no name, id or accession
        assert notify(StandInTask(), settings, first[0].id) == "sent"
        assert notify(StandInTask(), settings, first[0].id) == "not pending"  # a duplicate message sends nothing
        [(mail, recipients)] = smtp_sink.messages(1)
        assert recipients == ["oncall@hospital.example"]
        assert mail["Subject"] == "Critical finding (AI draft, unverified): Pneumothorax"
        raw = mail.get_payload(decode=True)
        assert isinstance(raw, bytes)
        body = raw.decode()
        study_url = f"https://pacs-vlm.hospital.example/studies/{study.study_uid}"
        assert "Pneumothorax" in body and study_url in body and "AI-generated draft" in body
        for secret in ("Jane", "Doe", PATIENT_ID, ACCESSION):
            assert secret not in body and secret not in str(mail)

        # not acknowledged in time: the next contact, inside the hospital, gets the patient's name and MRN
        assert escalate_due_alerts(settings, utcnow()).escalated == 0  # not due yet
        later = utcnow() + timedelta(minutes=11)
        assert escalate_due_alerts(settings, later).escalated == 1
        second = notifications(url)[1]
        assert (second.level, second.contact, second.channel) == (1, "ED pager", "webhook")
        assert notify(StandInTask(), settings, second.id) == "sent"
        [hook] = pager.requests
        assert hook.method == "POST" and hook.path == "/hook"
        assert hook.headers["Authorization"] == f"Bearer {TOKEN}"
        payload = json.loads(hook.body)
        assert payload["patient"] == {"name": "Jane Doe", "id": PATIENT_ID} and payload["accession_number"] == ACCESSION
        assert payload["categories"] == [{"code": "pneumothorax", "label": "Pneumothorax"}]
        assert payload["study_url"] == study_url and payload["level"] == 1 and payload["ai_generated"] is True
        assert "Patient: Jane Doe, MRN MRN-4711" in payload["text"]

        # then the RIS, outside: an ORU with the HL7 null for the patient and no accession number
        assert escalate_due_alerts(settings, later + timedelta(minutes=11)).escalated == 1
        third = notifications(url)[2]
        assert (third.level, third.contact) == (2, "RIS")
        assert notify(StandInTask(), settings, third.id) == "sent"
        [received] = ris.received
        segments = {line.split("|")[0]: line for line in received.er7.replace("\n", "\r").split("\r") if line}
        assert segments["PID"].split("|")[3] == '""' and segments["PID"].split("|")[5] == '""'
        assert received.control_id == f"PVLM-alert-{third.id}"
        assert "Pneumothorax" in received.er7 and "|AA|" in received.er7
        for secret in ("Jane", "Doe", PATIENT_ID, ACCESSION):
            assert secret not in received.er7

        # past the end of the chain the last contact is notified again, at every step
        assert escalate_due_alerts(settings, later + timedelta(minutes=22)).escalated == 1
        fourth = notifications(url)[3]
        assert (fourth.level, fourth.contact) == (3, "RIS")
    assert actions(url) == [
        "alert.raised",
        "alert.notified",
        "alert.escalated",
        "alert.notified",
        "alert.escalated",
        "alert.notified",
        "alert.escalated",
    ]
    with session_scope(url) as session:
        details = list(session.scalars(select(AuditEvent.detail).where(AuditEvent.action.startswith("alert."))))
    assert "Jane" not in json.dumps(details) and PATIENT_ID not in json.dumps(details)


def test_an_unreachable_webhook_is_retried_then_a_dead_letter(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    url = migrated_postgres_url
    add_sites(url)
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "database_url": url,
            "broker_url": redis_url,
            "alert_contacts": [{"name": "pager", "channel": "webhook", "address": closed}],
            "alert_max_attempts": 3,
            "delivery_backoff_seconds": 2,
        }
    )
    alert_id = open_critical_alerts(settings, critical_draft(settings, tmp_path / "north", "NORTH"))
    [notification] = notifications(url)
    waits = []
    for _ in range(2):
        with pytest.raises(Retry) as retried:
            notify(StandInTask(), settings, notification.id)
        waits.append(retried.value.countdown)
    assert waits == [2.0, 4.0]  # the delivery back-off: doubling from delivery_backoff_seconds
    assert notify(StandInTask(), settings, notification.id) == "dead_letter"
    assert notify(StandInTask(), settings, notification.id) == "not pending"
    [dead] = notifications(url)
    assert (dead.state, dead.attempts, dead.next_attempt_at) == (NotificationState.DEAD_LETTER, 3, None)
    assert dead.last_error == "webhook 'pager': ConnectError"
    assert actions(url) == ["alert.raised", "alert.notify_failed", "alert.notify_failed", "alert.dead_letter"]
    with session_scope(url) as session:  # a dead letter stops nobody: the alert stays open and escalates
        alert = session.get(CriticalAlert, alert_id)
        assert alert is not None and alert.state is AlertState.OPEN and alert.due_at is not None


def test_a_draft_without_critical_findings_raises_nothing(migrated_postgres_url: str, tmp_path: Path) -> None:
    url = migrated_postgres_url
    add_sites(url)
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    report_id = critical_draft(settings, tmp_path / "north", "NORTH", critical=[])
    assert open_critical_alerts(settings, report_id) is None
    assert open_critical_alerts(settings, 999_999) is None
    with session_scope(url) as session:
        assert session.scalars(select(CriticalAlert)).all() == []
        assert session.scalars(select(Study.priority)).all() == ["routine"]


def test_the_reconciler_opens_the_alert_the_worker_could_not(migrated_postgres_url: str, tmp_path: Path) -> None:
    # The worker recorded the draft, then lost the database before opening its alert: the reconciler's pass opens it.
    url = migrated_postgres_url
    add_sites(url)
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    report_id = critical_draft(settings, tmp_path / "north", "NORTH")
    quiet = critical_draft(settings, tmp_path / "south", "SOUTH", critical=[])
    with session_scope(url) as session:
        recorded = session.scalars(select(Report.created_at).where(Report.id == report_id)).one()
    assert open_missing_alerts(settings, recorded + timedelta(days=3)) == 0  # older than the look-back: left alone
    assert open_missing_alerts(settings, recorded + timedelta(minutes=1)) == 1
    assert open_missing_alerts(settings, recorded + timedelta(minutes=2)) == 0  # once
    with session_scope(url) as session:
        assert session.scalars(select(CriticalAlert.report_id)).all() == [report_id]
        assert quiet not in session.scalars(select(CriticalAlert.report_id)).all()
        assert sorted(session.scalars(select(Study.priority)).all()) == ["routine", "stat"]


def test_a_study_no_contact_covers_is_stat_and_waits_on_the_worklist(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    url = migrated_postgres_url
    add_sites(url)
    only_south = [{"name": "south", "channel": "email", "address": "s@hospital.example", "sites": ["SOUTH"]}]
    settings = Settings.model_validate(
        {"data_dir": tmp_path / "data", "database_url": url, "broker_url": redis_url, "alert_contacts": only_south}
    )
    alert_id = open_critical_alerts(settings, critical_draft(settings, tmp_path / "north", "NORTH"))
    with session_scope(url) as session:
        alert = session.get(CriticalAlert, alert_id)
        assert alert is not None and alert.due_at is None and alert.state is AlertState.OPEN
        assert session.scalars(select(Study.critical_reason)).one() == "Critical: Pneumothorax"
        [detail] = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "alert.raised")).all()
    assert detail is not None and detail["contact"] is None
    assert notifications(url) == [] and queued_messages(redis_url, "delivery") == []
    assert escalate_due_alerts(settings, utcnow() + timedelta(days=1)).escalated == 0


def test_a_superseded_drafts_alert_closes_and_a_signed_ones_stays_open(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    url = migrated_postgres_url
    add_sites(url)
    contact = [{"name": "on-call", "channel": "email", "address": "oncall@hospital.example"}]
    settings = Settings.model_validate(
        {"data_dir": tmp_path / "data", "database_url": url, "broker_url": redis_url, "alert_contacts": contact}
    )
    superseded = critical_draft(settings, tmp_path / "one", "NORTH")
    signed = critical_draft(settings, tmp_path / "two", "NORTH")
    first, second = open_critical_alerts(settings, superseded), open_critical_alerts(settings, signed)
    assert first is not None and second is not None
    with session_scope(url) as session:
        session.execute(update(Report).where(Report.id == superseded).values(status=ReportStatus.SUPERSEDED))
        session.execute(update(Report).where(Report.id == signed).values(status=ReportStatus.SIGNED))
    assert escalate_due_alerts(settings, utcnow()).escalated == 0
    with session_scope(url) as session:
        closed, still = session.get(CriticalAlert, first), session.get(CriticalAlert, second)
        assert closed is not None and (closed.state, closed.closed_reason) == (AlertState.CLOSED, "draft superseded")
        assert still is not None and still.state is AlertState.OPEN
        with pytest.raises(AlertClosed, match="closed \\(draft superseded\\)"):
            acknowledge_alert(session, first, "someone", utcnow())
    assert [n.state for n in notifications(url)] == [NotificationState.CANCELLED, NotificationState.PENDING]
    assert actions(url).count("alert.closed") == 1
