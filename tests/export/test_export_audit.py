"""Every delivery outcome leaves an audit row: a real worker (``pacs-vlm worker --queues delivery``) on
PostgreSQL and Redis delivers to a folder and fails against a DICOM peer that is not there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from integration.config import Settings
from integration.export.outbox import queue_deliveries
from integration.reports.drafts import ensure_draft_sr
from integration.store.audit import query_events
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Report
from tests.export.test_delivery import delivery_env, states, stored_report
from tests.support.peers import WorkerProcess, wait_until
from tests.support.services import free_port


def export_events(url: str) -> list[AuditEvent]:
    with session_scope(url) as session:
        return list(reversed(query_events(session, action="export.")))


def test_deliveries_are_audited_without_report_text(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess]
) -> None:
    url = migrated_postgres_url
    destinations: list[dict[str, object]] = [
        {"name": "drop", "kind": "folder", "folder": str(tmp_path / "drop"), "documents": ["sr", "hl7"],
         "reports": "drafts"},
        {"name": "gone", "kind": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port(),
         "reports": "drafts", "documents": ["sr"]},
    ]  # fmt: skip
    settings = Settings(data_dir=tmp_path / "data", database_url=url, broker_url=redis_url, destinations=destinations)
    report_id = stored_report(settings)
    ensure_draft_sr(settings, report_id)
    worker = worker_factory(
        settings.data_dir, url, redis_url, None, queues="delivery", extra_env=delivery_env(settings, destinations)
    )
    ids = queue_deliveries(settings, report_id, None, "draft")
    assert len(ids) == 3  # drop/sr, drop/hl7, gone/sr
    wait_until(
        lambda: (
            states(url) == {"drop/sr": ("delivered", 1), "drop/hl7": ("delivered", 1), "gone/sr": ("dead_letter", 3)}
        ),
        timeout=90,
        message=f"delivered and dead letter: {states(url)}\n{worker.log()[-2000:]}",
    )
    assert (tmp_path / "drop").is_dir() and len(list((tmp_path / "drop").iterdir())) == 2

    events = export_events(url)
    with session_scope(url) as session:
        report_text = session.scalar(select(Report.text).where(Report.id == report_id))
        audited = set(session.scalars(select(AuditEvent.object_id).where(AuditEvent.object_type == "delivery")))
    assert report_text
    by_delivery: dict[str, list[tuple[str, str, str, int]]] = {}
    for event in events:
        assert event.actor == "system" and event.object_type == "delivery" and event.detail is not None
        assert event.detail["report_id"] == report_id and event.detail["subject"] == f"draft:{report_id}"
        by_delivery.setdefault(str(event.object_id), []).append(
            (event.action, event.detail["destination"], event.detail["document"], event.detail["attempt"])
        )
        serialized = json.dumps(event.detail)
        assert "No acute abnormality" not in serialized and report_text not in serialized
        assert "NOBODY@" not in serialized  # the error (a peer's answer) stays in deliveries.last_error
    assert set(by_delivery) == {str(i) for i in ids} == audited
    retried = [("export.failed", "gone", "sr", 1), ("export.failed", "gone", "sr", 2)]
    expected = [[("export.delivered", "drop", "sr", 1)], [("export.delivered", "drop", "hl7", 1)]]
    assert sorted(by_delivery.values()) == sorted([*expected, [*retried, ("export.dead_letter", "gone", "sr", 3)]])
