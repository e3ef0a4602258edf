"""Fixtures of the alert tests: a real SMTP server process (aiosmtpd), sites and a draft with a critical finding."""

from __future__ import annotations

import email
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from sqlalchemy import select, update

from integration.config import Settings
from integration.store.session import session_scope
from integration.store.tables import Report, Study
from integration.store.users import create_site
from tests.reports.test_signing import DRAFT_FINDINGS
from tests.support.services import free_port, stop_process, wait_for_port
from tests.web.test_review_api import draft_of_site

HERE = Path(__file__).resolve().parent
#: The patient of the critical drafts: never in a notification to a contact outside the hospital.
PATIENT_NAME, PATIENT_ID, ACCESSION = "Doe^Jane", "MRN-4711", "ACC-0815"
#: The draft's critical match as ``integration/safety/critical.py`` stores it.
PNEUMOTHORAX = {
    "finding": 1,
    "code": "pneumothorax",
    "label": "Pneumothorax",
    "source": "text",
    "phrase": "pneumothorax",
}


@dataclass
class SmtpSink:
    """The SMTP server process and the folder it writes accepted messages to."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def messages(self, count: int = 1, timeout: float = 10.0) -> list[tuple[Message, list[str]]]:
        """Wait for ``count`` messages; return each parsed, with its envelope recipients."""
        deadline = time.monotonic() + timeout
        while len(list(self.folder.glob("*.eml"))) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        found = []
        for path in sorted(self.folder.glob("*.eml")):
            found.append((email.message_from_bytes(path.read_bytes()), path.with_suffix(".rcpt").read_text().split()))
        return found


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    """``python tests/alerts/smtp_sink.py``: aiosmtpd on a free port, in a process of its own."""
    port, folder = free_port(), tmp_path / "mail"
    process = subprocess.Popen([sys.executable, str(HERE / "smtp_sink.py"), "127.0.0.1", str(port), str(folder)])
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield SmtpSink(port, folder, process)
    finally:
        stop_process(process)


def add_sites(url: str) -> None:
    with session_scope(url) as session:
        create_site(session, "NORTH", "North Hospital")
        create_site(session, "SOUTH", "South Hospital")


def critical_draft(settings: Settings, folder: Path, site: str, critical: list[dict[str, object]] | None = None) -> int:
    """A CT study of ``site`` with the patient's name, id and accession, and a draft whose findings match critical."""
    report_id = draft_of_site(settings, folder, site)
    with session_scope(settings.database_url) as session:
        study_id = session.scalar(select(Report.study_id).where(Report.id == report_id))
        session.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(patient_name=PATIENT_NAME, patient_id=PATIENT_ID, accession_number=ACCESSION)
        )
        findings = {**DRAFT_FINDINGS, "critical": [PNEUMOTHORAX] if critical is None else critical}
        session.execute(update(Report).where(Report.id == report_id).values(findings=findings))
    return report_id


class Retry(Exception):
    """What the stand-in task's ``retry`` raises (Celery's raises its own ``Retry``)."""

    def __init__(self, countdown: float) -> None:
        super().__init__(countdown)
        self.countdown = countdown


class StandInTask:
    """The bound task the worker passes: only ``retry(countdown=...)`` is used."""

    def retry(self, countdown: float) -> Retry:
        return Retry(countdown)
