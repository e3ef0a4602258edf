"""A review app to test against: sites and users, studies stored as the listener does, drafts, an api process."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import redis
from pydicom.uid import generate_uid
from sqlalchemy import select

from integration.config import Settings
from integration.store.migrate import upgrade
from integration.store.reports import DraftRecord, record_draft
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, Study, utcnow
from tests.support.services import Postgres, RedisServer
from tests.web.conftest import ApiProcess, sign_in_form_token
from tests.web.test_auth import COOKIE, PASSWORD, add_user, cli


def copy_with_new_uids(source: Path, target: Path, **changes: Any) -> Path:
    """Write a copy of a sample file as a new study (fresh study, series and SOP instance UIDs)."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def job_of(settings: Settings, study_uid: str) -> int:
    with session_scope(settings.database_url) as session:
        return int(
            session.scalars(
                select(AnalysisJob.id)
                .join(Study, AnalysisJob.study_id == Study.id)
                .where(Study.study_uid == study_uid)
                .order_by(AnalysisJob.id.desc())
            ).first()
            or 0
        )


def draft(settings: Settings, study_uid: str, findings: list[dict[str, Any]], evidence: list[dict[str, Any]]) -> int:
    """Record a draft for the study's job, as the worker does."""
    document = {
        "findings": findings,
        "impression": "<b>Impression</b> & more",
        "limitations": "Single series.",
        "structured": True,
        "problems": [],
    }
    record = draft_record("tiny/llava-test", document, evidence)
    with session_scope(settings.database_url) as session:
        return record_draft(session, job_of(settings, study_uid), record, utcnow())


def draft_record(model_id: str, document: dict[str, Any], evidence: list[dict[str, Any]]) -> DraftRecord:
    """A model's draft as the worker records it, with the given findings document and evidence."""
    return DraftRecord(
        model_id=model_id,
        model_revision="rev1",
        model_family="llava",
        prompt_version="test/v1",
        structured=True,
        findings=document,
        text="draft text",
        raw_output="{}",
        evidence=evidence,
        timings={"total": 1.0},
        tokens_in=10,
        tokens_out=20,
    )


def evidence_of(ds: pydicom.Dataset, image: int, frame: int = 1, window: str | None = None) -> dict[str, Any]:
    return {
        "image": image,
        "sop_class_uid": str(ds.SOPClassUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_uid": str(ds.SeriesInstanceUID),
        "frame": frame,
        "window": window,
    }


def sites_and_users(url: str) -> None:
    for code, name in (("NORTH", "North Hospital"), ("SOUTH", "South Hospital")):
        assert cli(url, "sites", "add", code, name).returncode == 0
    add_user(url, "north_rad", "radiologist", "NORTH")
    add_user(url, "boss", "admin", None)
    add_user(url, "upload", "uploader", "NORTH")


def ingest_settings(url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=url,
        broker_url=redis_url,
        data_dir=tmp_path / "ingest",
        stable_seconds=1,
        fsync=False,
        calling_aes={"CT1": {"site": "NORTH"}, "MR1": {"site": "NORTH"}, "SOUTH1": {"site": "SOUTH"}},
    )


@dataclass
class ReviewWorld:
    """A test module's review app: a migrated PostgreSQL database with the two sites and their users, a flushed
    Redis database of the module's own, the listener's intake settings and, once started, a ``pacs-vlm api``."""

    settings: Settings
    folder: Path
    api: ApiProcess | None = None

    def start_api(self, **env: str) -> ApiProcess:
        """Start the api on the world's database, broker and store, with extra ``PACSVLM_*`` settings."""
        settings = self.settings
        base = {
            "PACSVLM_MIN_FREE_BYTES": "0",
            "PACSVLM_DATABASE_URL": settings.database_url,
            "PACSVLM_BROKER_URL": settings.broker_url,
            "PACSVLM_STORAGE_DIR": str(settings.instance_root),
        }
        self.api = ApiProcess(self.folder / "api", {**base, **env}).start()
        return self.api

    def close(self) -> None:
        """Stop the api and flush the module's Redis database."""
        if self.api is not None:
            self.api.stop()
        redis.Redis.from_url(self.settings.broker_url).flushdb()


def review_world(postgres: Postgres, redis_server: RedisServer, folder: Path, redis_db: int) -> ReviewWorld:
    """A new review world in ``folder`` (see :class:`ReviewWorld`); the caller starts its api when the data is in."""
    url = postgres.create_database()
    upgrade(url)
    broker = redis_server.url(redis_db)
    redis.Redis.from_url(broker).flushdb()
    sites_and_users(url)
    return ReviewWorld(ingest_settings(url, broker, folder), folder)


def signed_in_page(chromium: Any, api: ApiProcess, username: str, *, width: int = 1400) -> Any:
    """A fresh browser context signed in as ``username`` through the sign-in form; returns its page."""
    page = chromium.new_context(viewport={"width": width, "height": 1000}).new_page()
    page.goto(api.url + "/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.press("#password", "Enter")
    return page


def wait_until_true(page: Any, expression: str, *, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression until it is true.

    Playwright's ``wait_for_function`` polls by evaluating a string inside the page, which the pages' CSP
    (``script-src 'self'``, no ``unsafe-eval``) refuses whenever the first check is false; ``page.evaluate``
    goes through the debugger protocol, which CSP does not govern.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        page.wait_for_timeout(100)


def api_for(start_api: Callable[..., ApiProcess], settings: Settings) -> ApiProcess:
    return start_api(
        PACSVLM_DATABASE_URL=settings.database_url,
        PACSVLM_BROKER_URL=settings.broker_url,
        PACSVLM_STORAGE_DIR=str(settings.instance_root),
    )


def sign_in(api: ApiProcess, username: str) -> httpx.Client:
    client = httpx.Client(base_url=api.url, timeout=30)
    token = sign_in_form_token(client)
    answer = client.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 303, answer.text
    assert COOKIE in client.cookies
    return client


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def listed(html: str) -> list[str]:
    return re.findall(r'class="open-study" data-nav-item href="/studies/([0-9.]+)(?:\?[^"]*)?"', html)


def assert_page_headers(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
