"""Second opinions over real sockets: ``pacs-vlm api`` on PostgreSQL and Redis, and the comparison page in Chromium.

Sites and users are made with the command line, studies, jobs and reports through the ORM.  Sending
needs a broker: the API sends to the test's Redis database, where the messages are read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Dialog, sync_playwright
from sqlalchemy import select

from integration.app_config import save
from integration.config import Settings
from integration.config_seed import seed_configuration
from integration.store.config_tables import ConfigKind
from integration.store.session import session_scope
from integration.store.tables import (
    AnalysisJob,
    AuditEvent,
    JobState,
    Report,
    Series,
    Site,
    Study,
    StudyState,
    utcnow,
)
from integration.web.security.csrf import csrf_token_for_session
from tests.support.peers import wait_until
from tests.support.records import db_rows, queued_messages
from tests.support.services import free_port
from tests.web.conftest import ApiProcess

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
COOKIE = "pacsvlm_session"
MODELS = {"medgemma": "/models/medgemma-4b-it", "lingshu-7b": "/models/Lingshu-7B"}
HOSTILE = '<script>alert("pwned")</script><img src=x onerror="alert(1)">'
NORTH_STUDY, SOUTH_STUDY, RECEIVING_STUDY = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"


def cli(database_url: str, *args: str, stdin: str = "") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    env["PACSVLM_DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def findings(*texts: str, impression: str) -> dict[str, Any]:
    return {
        "findings": [{"text": t, "images": [1]} for t in texts],
        "impression": impression,
        "limitations": "",
        "structured": True,
        "problems": [],
    }


def add_study(url: str, uid: str, site: str, state: StudyState, drafts: list[tuple[str, str, dict[str, Any]]]) -> None:
    """A study with a primary job and one report per (model id, prompt version, findings)."""
    now = utcnow()
    with session_scope(url) as session:
        study = Study(
            study_uid=uid,
            state=state,
            calling_ae="CT1",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
            site_id=session.scalar(select(Site.id).where(Site.code == site)),
            patient_name="Doe^Jane",
        )
        session.add_all([study, Series(series_uid=uid + ".1", study=study, modality="CT")])
        session.flush()
        for index, (model_id, prompt_version, body) in enumerate(drafts):
            job = AnalysisJob(
                study_id=study.id,
                study_version=1,
                queue="analysis",
                state=JobState.DONE,
                purpose="primary" if index == 0 else "second_opinion",
                model_name=None if index == 0 else "medgemma",
            )
            session.add(job)
            session.flush()
            session.add(
                Report(
                    study_id=study.id,
                    job_id=job.id,
                    study_version=1,
                    model_id=model_id,
                    model_revision="r1",
                    model_family="llava",
                    prompt_version=prompt_version,
                    structured=True,
                    findings=body,
                    text="draft",
                    raw_output="{}",
                    evidence=[],
                    timings={},
                    tokens_in=1,
                    tokens_out=1,
                )
            )


class Client:
    """A signed-in user of the API: cookie and CSRF token."""

    def __init__(self, api: ApiProcess, username: str) -> None:
        response = httpx.post(api.url + "/api/login", json={"username": username, "password": PASSWORD}, timeout=10)
        assert response.status_code == 200, response.text
        self.api = api
        self.cookies = {COOKIE: response.cookies[COOKIE]}
        self.csrf = csrf_token_for_session(self.cookies[COOKIE])

    def ask(self, uid: str, body: dict[str, Any], *, csrf: bool = True) -> httpx.Response:
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        return httpx.post(
            f"{self.api.url}/api/studies/{uid}/second-opinions",
            json=body,
            cookies=self.cookies,
            headers=headers,
            timeout=30,
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.api.url + path, cookies=self.cookies, timeout=10)

    def form(self, path: str, data: dict[str, str]) -> httpx.Response:
        return httpx.post(self.api.url + path, data=data, cookies=self.cookies, timeout=30)


def setup(url: str) -> None:
    for code in ("NORTH", "SOUTH"):
        cli(url, "sites", "add", code, f"{code.title()} Hospital")
    for username, role, site in (
        ("dr_north", "radiologist", "NORTH"),
        ("up", "uploader", "NORTH"),
        ("boss", "admin", None),
    ):
        cli(
            url,
            "users",
            "add",
            username,
            "--role",
            role,
            "--password-stdin",
            *(["--site", site] if site else []),
            stdin=PASSWORD,
        )
    first = findings(
        "Right lower lobe consolidation.", "No pleural effusion.", impression="Pneumonia, right lower lobe."
    )
    second = findings("Consolidation in the right lower lobe", HOSTILE, impression=HOSTILE)
    add_study(
        url,
        NORTH_STUDY,
        "NORTH",
        StudyState.DRAFTED,
        [("tiny", "ct-chest/v1", first), ("medgemma-4b-it", "ct-chest/v1", second)],
    )
    add_study(url, SOUTH_STUDY, "SOUTH", StudyState.DRAFTED, [("tiny", "ct/v1", first)])
    add_study(url, RECEIVING_STUDY, "NORTH", StudyState.RECEIVING, [])


def report_ids(url: str, uid: str) -> list[int]:
    return [
        rid
        for (rid,) in db_rows(
            url,
            "SELECT r.id FROM reports r JOIN studies s ON s.id = r.study_id WHERE s.study_uid = :uid ORDER BY r.id",
            uid=uid,
        )
    ]


def test_requesting_second_opinions(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str
) -> None:
    url = migrated_postgres_url
    setup(url)
    api = start_api(PACSVLM_DATABASE_URL=url, PACSVLM_BROKER_URL=redis_url, PACSVLM_MODELS=json.dumps(MODELS))
    rad, uploader, admin = Client(api, "dr_north"), Client(api, "up"), Client(api, "boss")

    assert uploader.ask(NORTH_STUDY, {"model": "medgemma"}).status_code == 403
    no_token = rad.ask(NORTH_STUDY, {"model": "medgemma"}, csrf=False)
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
    unknown_model = rad.ask(NORTH_STUDY, {"model": "gpt-9"})
    assert unknown_model.status_code == 422
    assert "gpt-9" in unknown_model.json()["detail"] and "lingshu-7b, medgemma" in unknown_model.json()["detail"]
    unknown_prompt = rad.ask(NORTH_STUDY, {"prompt": "chest-xr"})
    assert unknown_prompt.status_code == 422 and "ct-chest, ct-head, ct, mr" in unknown_prompt.json()["detail"]
    assert rad.ask(NORTH_STUDY, {"model": "medgemma", "extra": 1}).status_code == 422
    other_site, missing = rad.ask(SOUTH_STUDY, {"model": "medgemma"}), rad.ask("9.9.9", {"model": "medgemma"})
    assert other_site.status_code == missing.status_code == 404 and other_site.content == missing.content
    duplicate_primary = rad.ask(NORTH_STUDY, {})  # the default model and prompt already drafted this version
    assert duplicate_primary.status_code == 409 and "already" in duplicate_primary.json()["detail"]
    receiving = rad.ask(RECEIVING_STUDY, {"model": "medgemma"})
    assert receiving.status_code == 409 and "still receiving" in receiving.json()["detail"]
    assert db_rows(url, "SELECT count(*) FROM analysis_jobs WHERE purpose = 'second_opinion'") == [(1,)]  # setup's

    stat = rad.ask(NORTH_STUDY, {"model": "lingshu-7b", "prompt": "general", "stat": True})
    assert stat.status_code == 201, stat.text
    answer = stat.json()
    assert answer["queue"] == "analysis.stat" and answer["priority"] == "stat" and answer["sent"] is True
    again = rad.ask(NORTH_STUDY, {"model": "lingshu-7b", "prompt": "general"})
    assert again.status_code == 409 and "queued or running" in again.json()["detail"]
    routine = admin.ask(NORTH_STUDY, {"model": "lingshu-7b", "prompt": None, "stat": False})
    assert routine.status_code == 201 and routine.json()["queue"] == "analysis"
    south = admin.ask(SOUTH_STUDY, {"model": "medgemma"})
    assert south.status_code == 201  # administrators see every site

    [stat_message] = queued_messages(redis_url, "analysis.stat")
    assert stat_message["args"] == [answer["job_id"]]
    routine_ids = sorted(m["args"][0] for m in queued_messages(redis_url, "analysis"))
    assert routine_ids == sorted([routine.json()["job_id"], south.json()["job_id"]])
    rows = db_rows(
        url,
        "SELECT purpose, priority, model_name, prompt_name, queue, requested_by, state, study_version,"
        " sent_at IS NOT NULL FROM analysis_jobs WHERE id = :id",
        id=answer["job_id"],
    )
    assert rows == [("second_opinion", "stat", "lingshu-7b", "general", "analysis.stat", "dr_north", "queued", 1, True)]
    assert db_rows(url, "SELECT priority FROM studies WHERE study_uid = :uid", uid=NORTH_STUDY) == [("stat",)]

    with session_scope(url) as session:
        requested = select(AuditEvent).where(AuditEvent.action == "opinion.requested")
        events = session.scalars(requested.order_by(AuditEvent.id)).all()
        assert [(e.actor, e.object_type, e.object_id) for e in events][:2] == [
            ("dr_north", "study", NORTH_STUDY),
            ("boss", "study", NORTH_STUDY),
        ]
        assert events[0].detail == {
            "job_id": answer["job_id"],
            "model": "lingshu-7b",
            "prompt": "general",
            "priority": "stat",
            "study_version": 1,
        }
        assert all("Doe" not in json.dumps(e.detail) and e.source and e.source.startswith("127.0.0.1") for e in events)

    listing = rad.get(f"/api/studies/{NORTH_STUDY}/opinions")
    assert listing.status_code == 200
    body = listing.json()
    assert body["models"] == ["lingshu-7b", "medgemma"] and "general" in body["prompts"] and body["priority"] == "stat"
    assert [(j["purpose"], j["model"], j["prompt"], j["priority"], j["state"]) for j in body["jobs"]] == [
        ("primary", None, None, "routine", "done"),
        ("second_opinion", "medgemma", None, "routine", "done"),
        ("second_opinion", "lingshu-7b", "general", "stat", "queued"),
        ("second_opinion", "lingshu-7b", None, "routine", "queued"),
    ]
    assert [j["report_id"] for j in body["jobs"]][:2] == report_ids(url, NORTH_STUDY)
    assert [d["model_id"] for d in body["drafts"]] == ["tiny", "medgemma-4b-it"]
    assert rad.get(f"/api/studies/{SOUTH_STUDY}/opinions").status_code == 404
    assert uploader.get(f"/api/studies/{NORTH_STUDY}/opinions").status_code == 403
    log = api.log_path.read_text(errors="replace")
    assert "Doe" not in log and "Jane" not in log  # no patient data in the application's log

    # The model list is the database's and in force without a restart: `pacs-vlm db upgrade` seeds it from the
    # environment; a model an administrator adds (as `pacs-vlm config set model` does) is offered within seconds.
    with session_scope(url) as session:
        assert "model" in seed_configuration(session, Settings(database_url=url, models=MODELS))
        save(session, ConfigKind.MODEL, "qwen-vl", {"path": "/models/Qwen2.5-VL-7B"}, actor="boss")
    listed = f"/api/studies/{NORTH_STUDY}/opinions"
    wait_until(
        lambda: rad.get(listed).json()["models"] == ["lingshu-7b", "medgemma", "qwen-vl"],
        timeout=15, message="the new model in the running api's list",
    )  # fmt: skip
    assert rad.ask(NORTH_STUDY, {"model": "qwen-vl"}).status_code == 201


def test_comparison_api_and_page(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str
) -> None:
    url = migrated_postgres_url
    setup(url)
    api = start_api(PACSVLM_DATABASE_URL=url, PACSVLM_BROKER_URL=redis_url, PACSVLM_MODELS=json.dumps(MODELS))
    rad, uploader = Client(api, "dr_north"), Client(api, "up")
    a, b = report_ids(url, NORTH_STUDY)
    [south] = report_ids(url, SOUTH_STUDY)

    response = rad.get(f"/api/studies/{NORTH_STUDY}/comparison?a={a}&b={b}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["a"]["model_id"], body["b"]["model_id"]) == ("tiny", "medgemma-4b-it")
    agreement = body["agreement"]
    assert agreement["score"] == 0.5  # one pair of four findings
    assert [(m["a"], m["b"]) for m in agreement["matched"]] == [(0, 0)]
    assert agreement["only_a"] == [{"index": 1, "text": "No pleural effusion."}]
    assert agreement["only_b"] == [{"index": 1, "text": HOSTILE}]
    assert 0.0 <= agreement["impression_similarity"] < 0.5
    assert rad.get(f"/api/studies/{NORTH_STUDY}/comparison?a={a}&b={south}").status_code == 404  # other study
    assert rad.get(f"/api/studies/{SOUTH_STUDY}/comparison?a={south}&b={south}").status_code == 404  # other site
    assert rad.get(f"/api/studies/{NORTH_STUDY}/comparison?a={a}").status_code == 422
    assert uploader.get(f"/api/studies/{NORTH_STUDY}/comparison?a={a}&b={b}").status_code == 403

    page = rad.get(f"/studies/{NORTH_STUDY}/compare?a={a}&b={b}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in page.headers
    assert HOSTILE not in page.text and "&lt;script&gt;alert(" in page.text
    assert f'name="csrf_token" value="{rad.csrf}"' in page.text and "50%" in page.text
    assert rad.get(f"/studies/{NORTH_STUDY}/compare").status_code == 200  # the two drafts of the version by default
    assert rad.get(f"/studies/{SOUTH_STUDY}/compare").status_code == 404
    assert uploader.get(f"/studies/{NORTH_STUDY}/compare").status_code == 403
    anonymous = httpx.get(f"{api.url}/studies/{NORTH_STUDY}/compare", timeout=10)
    assert anonymous.status_code in (302, 303, 307) and "/login" in anonymous.headers["location"]

    form = {"csrf_token": rad.csrf, "model": "medgemma", "prompt": "general", "stat": "on", "a": str(a), "b": str(b)}
    forged = rad.form(f"/studies/{NORTH_STUDY}/second-opinions", {**form, "csrf_token": "0" * 64})
    assert forged.status_code == 403
    done = rad.form(f"/studies/{NORTH_STUDY}/second-opinions", form)
    assert done.status_code == 303
    location = done.headers["location"]
    assert location.startswith(f"/studies/{NORTH_STUDY}/compare?requested=") and f"a={a}&b={b}" in location
    [(job_id, priority, queue)] = db_rows(
        url, "SELECT id, priority, queue FROM analysis_jobs WHERE prompt_name = 'general' AND model_name = 'medgemma'"
    )
    assert (priority, queue) == ("stat", "analysis.stat") and location.endswith(f"requested={job_id}&a={a}&b={b}")
    twice = rad.form(f"/studies/{NORTH_STUDY}/second-opinions", form)
    assert twice.status_code == 409 and "already" in twice.text and "&lt;script&gt;" in twice.text
    unknown = rad.form(f"/studies/{NORTH_STUDY}/second-opinions", {**form, "model": "gpt-9"})
    assert unknown.status_code == 422 and "lingshu-7b, medgemma" in unknown.text

    with sync_playwright() as playwright:  # a real browser runs nothing from the model's text
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        context = browser.new_context()
        context.add_cookies([{"name": COOKIE, "value": rad.cookies[COOKIE], "url": api.url}])
        tab = context.new_page()
        dialogs: list[str] = []

        def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        tab.on("dialog", on_dialog)
        tab.goto(f"{api.url}/studies/{NORTH_STUDY}/compare?a={a}&b={b}")
        assert HOSTILE in tab.inner_text("table.comparison")
        assert tab.locator("table.comparison img").count() == 0 and tab.locator("main script").count() == 0
        tab.select_option("select[name=model]", "lingshu-7b")
        tab.check("input[name=stat]")
        tab.click("form.opinion-request button[type=submit]")
        tab.wait_for_url("**/compare?requested=*")
        assert "Second opinion requested" in tab.inner_text("main")
        browser.close()
    assert dialogs == []
    assert db_rows(url, "SELECT count(*) FROM analysis_jobs WHERE model_name = 'lingshu-7b' AND priority = 'stat'") == [
        (1,)
    ]


def test_a_request_while_the_broker_is_away_is_kept_for_the_reconciler(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str
) -> None:
    url = migrated_postgres_url
    setup(url)
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    api = start_api(PACSVLM_DATABASE_URL=url, PACSVLM_BROKER_URL=dead_broker, PACSVLM_MODELS=json.dumps(MODELS))
    response = Client(api, "dr_north").ask(NORTH_STUDY, {"model": "lingshu-7b", "stat": True})
    assert response.status_code == 201 and response.json()["sent"] is False
    rows = db_rows(
        url,
        "SELECT state, sent_at, send_count, last_error FROM analysis_jobs WHERE id = :id",
        id=response.json()["job_id"],
    )
    [(state, sent_at, send_count, error)] = rows
    assert (state, sent_at, send_count) == ("queued", None, 0) and error.startswith("broker: ")
