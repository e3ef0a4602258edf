"""``pacs_vlm.notify_alert`` in a real ``pacs-vlm worker`` process (Redis broker, PostgreSQL): Celery's own
retries with the delivery back-off until a flaky webhook takes the notification, then the escalated e-mail
through the real SMTP server process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from integration.alerts.escalation import escalate_due_alerts
from integration.alerts.raise_alerts import open_critical_alerts
from integration.config import Settings
from integration.store.alert_tables import AlertNotification
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, utcnow
from tests.alerts.conftest import PATIENT_ID, SmtpSink, add_sites, critical_draft
from tests.support.http_peers import Recorder, Request
from tests.support.peers import WorkerProcess


def states(url: str) -> list[tuple[int, str, int]]:
    with session_scope(url) as session:
        rows = session.scalars(select(AlertNotification).order_by(AlertNotification.id)).all()
        return [(n.level, n.state.value, n.attempts) for n in rows]


def wait_for(url: str, wanted: list[tuple[int, str, int]], worker: WorkerProcess, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while states(url) != wanted:
        assert time.monotonic() < deadline, f"{states(url)} != {wanted}\n{worker.log()[-4000:]}"
        time.sleep(0.2)


def test_the_worker_retries_a_flaky_webhook_then_escalates_to_e_mail(
    migrated_postgres_url: str,
    redis_url: str,
    smtp_sink: SmtpSink,
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    url = migrated_postgres_url
    add_sites(url)
    answers = iter([503, 503])

    def flaky(request: Request) -> tuple[int, dict[str, str], bytes]:
        return next(answers, 204), {}, b""

    with Recorder(flaky) as pager:
        chain = [
            {"name": "pager", "channel": "webhook", "address": pager.url + "/page"},
            {"name": "on-call", "channel": "email", "address": "oncall@hospital.example"},
        ]
        values = {
            "alert_max_attempts": 5,
            "delivery_backoff_seconds": 0.2,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_sink.port,
            "public_url": "https://pacs-vlm.hospital.example",
        }
        environment = {f"PACSVLM_{name.upper()}": str(value) for name, value in values.items()}
        environment["PACSVLM_ALERT_CONTACTS"] = json.dumps(chain)
        settings = Settings.model_validate(
            {
                "data_dir": tmp_path / "data",
                "database_url": url,
                "broker_url": redis_url,
                "alert_contacts": chain,
                **values,
            }
        )
        worker = worker_factory(settings.data_dir, url, redis_url, None, queues="delivery", extra_env=environment)
        open_critical_alerts(settings, critical_draft(settings, tmp_path / "north", "NORTH"))
        wait_for(url, [(0, "sent", 3)], worker)  # 503, 503, then taken: Celery's retries, counted in the row
        assert [r.path for r in pager.requests] == ["/page"] * 3
        assert json.loads(pager.requests[-1].body)["categories"] == [{"code": "pneumothorax", "label": "Pneumothorax"}]

        assert escalate_due_alerts(settings, utcnow() + timedelta(minutes=16)).escalated == 1
        wait_for(url, [(0, "sent", 3), (1, "sent", 1)], worker)
    [(mail, recipients)] = smtp_sink.messages(1)
    assert recipients == ["oncall@hospital.example"] and "Pneumothorax" in mail["Subject"]
    assert PATIENT_ID not in mail.as_string()
    with session_scope(url) as session:
        done = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action.startswith("alert.")).order_by(AuditEvent.id)
        )
        assert list(done) == [
            "alert.raised",
            "alert.notify_failed",
            "alert.notify_failed",
            "alert.notified",
            "alert.escalated",
            "alert.notified",
        ]
    assert "Doe" not in worker.log() and PATIENT_ID not in worker.log()  # patient data never in the logs
