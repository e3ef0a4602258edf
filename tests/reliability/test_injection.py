"""SQL injection and XSS attempts against a real ``pacs-vlm api`` process on PostgreSQL: harmless.

Studies are real pydicom sample files stored and recorded as the listener does and completed by the real
assembly pass (Redis broker); drafts are recorded with :func:`integration.store.reports.record_draft`, as the
worker does.  Every attempt is a real HTTP request over a socket: worklist and audit filters, the sign-in form,
review changes and reject reasons, photo upload fields, the second-opinion body and study UIDs in paths.
SQL injection must answer a 4xx with a message or a normal (empty or filtered) result, never a 500, and
leave every table and its rows in place, and another site's rows unseen.  Hostile text (model output,
patient data, a reviewer's words, a typed username) must reach the HTML pages only escaped, under the
Content-Security-Policy header.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select, text, update

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.samples import pydicom_test_file
from integration.store.reports import record_draft
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, JobState, ReportRevision, ReviewChange, Study, utcnow
from tests.support.instances import ingest
from tests.support.review_app import (
    api_for,
    assert_page_headers,
    copy_with_new_uids,
    csrf_of,
    draft_record,
    evidence_of,
    ingest_settings,
    job_of,
    listed,
    sign_in,
    sites_and_users,
)
from tests.web.conftest import ApiProcess, sign_in_form_token
from tests.web.test_photo_upload import FORM, image_bytes, photo_pixels

#: Classic SQL injection strings, a NUL byte and a very long value.
SQL = (
    "' OR 1=1 --",
    "1; DROP TABLE studies; --",
    "%' UNION SELECT username, password_hash FROM users --",
    "x'); DELETE FROM reports; --",
    "A" * 20_000,
)
#: A NUL byte inside an injection string (PostgreSQL refuses NUL in text values).
NUL = "\x00"
NUL_VALUE = "CT\x00' OR '1'='1"
WORKLIST_FILTERS = ("status", "modality", "priority", "site", "sort", "received_from", "received_to")
AUDIT_FILTERS = ("actor", "action", "object_id")
#: Hostile markup, one marker each, so each can be looked for escaped and raw.
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '"><img src=x onerror="window.__pwned=2">'
JS_URL = "javascript:window.__pwned=3"
TEMPLATE = "tmpl{{7*7}}end"
TEXTAREA = "</textarea><script>window.__pwned=4</script>"
#: Person names have no '=' (it separates the name's component groups).
PATIENT_NAME = "<script>window.__pwned(0)</script>^Eve"
PATIENT_ESCAPED = "&lt;script&gt;window.__pwned(0)&lt;/script&gt;, Eve"
UPLOADED_NAME = "<script>window.__pwned(5)</script>^Eve"
UPLOADED_ESCAPED = "&lt;script&gt;window.__pwned(5)&lt;/script&gt;"
#: Escaped as Jinja2 (markupsafe) writes them.
SCRIPT_ESCAPED = "&lt;script&gt;window.__pwned=1&lt;/script&gt;"
IMG_ESCAPED = "&#34;&gt;&lt;img src=x onerror=&#34;window.__pwned=2&#34;&gt;"
TEXTAREA_ESCAPED = "&lt;/textarea&gt;&lt;script&gt;window.__pwned=4&lt;/script&gt;"
#: Never in a page as markup.
RAW = ("<script>window.__pwned", "<img src=x", "</textarea><script", 'href="javascript:', "tmpl49end")
#: Counted before and after the attempts.
TABLES = ("studies", "users", "reports", "audit_events")


@dataclass
class Scene:
    """Two sites' studies with drafts whose text is hostile, and the api serving them."""

    settings: Settings
    api: ApiProcess
    north: str  # NORTH CT study: hostile patient name and description, two hostile drafts
    south: str  # SOUTH CT study, one draft
    primary: int
    second: int
    south_report: int


def document(*findings: str, impression: str, limitations: str) -> dict[str, Any]:
    return {
        "findings": [{"text": finding, "images": [1]} for finding in findings],
        "impression": impression,
        "limitations": limitations,
        "structured": True,
        "problems": [],
    }


def second_job(settings: Settings, study_uid: str) -> int:
    """A running second-opinion job of the study's current version."""
    with session_scope(settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        job = AnalysisJob(
            study_id=study.id,
            study_version=study.version,
            queue="analysis",
            state=JobState.RUNNING,
            purpose="second_opinion",
            model_name="medgemma",
        )
        session.add(job)
        session.flush()
        return int(job.id)


@pytest.fixture
def scene(start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Scene:
    settings = ingest_settings(migrated_postgres_url, redis_url, tmp_path)
    sites_and_users(migrated_postgres_url)  # north_rad (NORTH), boss (admin), upload (uploader, NORTH)
    now = utcnow()
    files = tmp_path / "files"
    north = ingest(
        settings,
        copy_with_new_uids(pydicom_test_file("CT_small.dcm"), files / "n.dcm"),
        now - timedelta(seconds=60),
        "CT1",
    )
    south = ingest(
        settings,
        copy_with_new_uids(pydicom_test_file("CT_small.dcm"), files / "s.dcm"),
        now - timedelta(seconds=30),
        "SOUTH1",
    )
    assert StudyAssembler(settings).run_once().jobs_created == 2
    north_uid, south_uid = str(north.StudyInstanceUID), str(south.StudyInstanceUID)
    with session_scope(settings.database_url) as session:  # patient data is untrusted text too
        session.execute(
            update(Study)
            .where(Study.study_uid == north_uid)
            .values(patient_name=PATIENT_NAME, study_description=(IMG + TEMPLATE)[:64])
        )
    evidence = [evidence_of(north, 1)]
    model_output = document(
        SCRIPT + " Nodule.",
        IMG + " Effusion.",
        f"See {JS_URL} for details.",
        TEMPLATE,
        TEXTAREA,
        impression=SCRIPT + TEMPLATE,
        limitations=TEXTAREA + IMG,
    )
    with session_scope(settings.database_url) as session:
        primary = record_draft(
            session, job_of(settings, north_uid), draft_record("tiny/llava-test", model_output, evidence), utcnow()
        )
    second_output = document(TEXTAREA + " Nodule.", TEMPLATE, impression=IMG, limitations=SCRIPT)
    with session_scope(settings.database_url) as session:
        second = record_draft(
            session, second_job(settings, north_uid), draft_record("tiny/medgemma", second_output, evidence), utcnow()
        )
    with session_scope(settings.database_url) as session:
        south_report = record_draft(
            session,
            job_of(settings, south_uid),
            draft_record("tiny/llava-test", document("South only.", impression="S.", limitations=""), []),
            utcnow(),
        )
    return Scene(settings, api_for(start_api, settings), north_uid, south_uid, primary, second, south_report)


def row_counts(url: str) -> dict[str, int]:
    """Rows of the tables an injection would aim at (the query fails if a table was dropped)."""
    with session_scope(url) as session:
        return {table: int(session.scalar(text(f"SELECT count(*) FROM {table}"))) for table in TABLES}


def harmless(response: httpx.Response, what: object, *, leak: str) -> None:
    """A 4xx with a message, or a normal answer; never a server error, never the other site's study."""
    assert response.status_code < 500, (what, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.text.strip(), (what, response.status_code)
        if response.headers["content-type"].startswith("application/json"):
            assert response.json()["detail"], what
    assert leak not in response.text, (what, "another site's study leaked")


def attempt(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
    """Send a request on a new connection; None when the server dropped it instead of answering."""
    with httpx.Client(base_url=client.base_url, cookies=client.cookies, timeout=30) as fresh:
        try:
            return fresh.request(method, path, **kwargs)
        except httpx.TransportError:
            return None


def uid_paths(value: str) -> list[str]:
    """The pages and API paths that take a study UID, with the value as the UID (and SOP instance UID)."""
    segment = quote(value, safe="")
    return [
        f"/studies/{segment}",
        f"/api/studies/{segment}",
        f"/studies/{segment}/compare",
        f"/api/studies/{segment}/opinions",
        f"/studies/{segment}/instances/{segment}/frames/1.png",
        f"/studies/{segment}/instances/{segment}/frames/1/info",
        f"/dicomweb/studies/{segment}",
        f"/dicomweb/studies/{segment}/metadata",
        f"/dicomweb/studies/{segment}/series",
        f"/dicomweb/studies/{segment}/series/{segment}/instances/{segment}/rendered",
    ]


def photo(client: httpx.Client, fields: dict[str, str], headers: dict[str, str]) -> httpx.Response:
    files = {"file": ("photo.png", image_bytes(photo_pixels(), "PNG"), "application/octet-stream")}
    return client.post("/api/uploads/photo", data=fields, files=files, headers=headers)


def test_sql_injection_in_filters_forms_and_paths_is_harmless(scene: Scene) -> None:
    api, url, north, south = scene.api, scene.settings.database_url, scene.north, scene.south
    radiologist, admin, uploader = (sign_in(api, name) for name in ("north_rad", "boss", "upload"))
    token = csrf_of(radiologist.get(f"/studies/{north}").text)
    admin_token = csrf_of(admin.get("/worklist").text)
    upload_token = csrf_of(uploader.get("/upload").text)
    csrf, upload_csrf = {"X-CSRF-Token": token}, {"X-CSRF-Token": upload_token}
    before = row_counts(url)

    def check(response: httpx.Response, what: object, *, leak: str = south) -> httpx.Response:
        harmless(response, what, leak=leak)
        return response

    # Worklist filters, JSON and page: refused by name, or a filtered list of the radiologist's own site.
    for name in WORKLIST_FILTERS:
        for value in SQL:
            for path in ("/api/studies", "/worklist"):
                answer = check(radiologist.get(path, params={name: value}), (path, name, value[:40]))
                if answer.status_code == 200:
                    shown = [r["study_uid"] for r in answer.json()] if path.startswith("/api") else listed(answer.text)
                    assert set(shown) <= {north}, (name, value[:40], shown)
                else:
                    assert answer.status_code == 422 and name in answer.text, (name, value[:40], answer.text[:300])
            # An administrator sees every site, yet an injected filter is refused by name, never run.
            answer = check(admin.get("/api/studies", params={name: value}), ("admin", name, value[:40]), leak=NUL)
            assert answer.status_code == 422 and name in answer.text, (name, value[:40], answer.text[:300])

    # Audit filters: an exact (or prefix) match on the text, or refused; no other rows come back.
    for name in AUDIT_FILTERS:
        for value in SQL:
            for fmt in ("json", "csv"):
                answer = check(admin.get("/api/audit", params={name: value, "format": fmt}), (name, fmt, value[:40]))
                if answer.status_code != 200:
                    assert answer.status_code == 422, (name, value[:40], answer.text[:300])
                elif fmt == "json":
                    assert answer.json()["events"] == [], (name, value[:40])
                else:
                    assert list(csv.DictReader(io.StringIO(answer.text))) == [], (name, value[:40])
    refused = check(radiologist.get("/api/audit", params={"actor": SQL[0]}), "radiologist audit")
    assert refused.status_code == 403

    # The sign-in form and the JSON sign-in: the strings are a wrong username or password, nothing more.
    anonymous = httpx.Client(base_url=api.url, timeout=30)
    login_token = sign_in_form_token(anonymous)
    for value in SQL:
        for fields in ({"username": value, "password": value}, {"username": "north_rad", "password": value}):
            fields["csrf_token"] = login_token
            answer = check(anonymous.post("/login", data=fields), ("login form", fields["username"][:40]))
            assert answer.status_code in (401, 422, 429), answer.status_code
            assert "pacsvlm_session" not in anonymous.cookies
        answer = check(anonymous.post("/api/login", json={"username": value, "password": value}), "api login")
        assert answer.status_code in (401, 422, 429) and "pacsvlm_session" not in answer.cookies

    # Review changes (page form and JSON) and a reject reason: stored as the literal text, or refused when too long.
    base = f"/studies/{north}/reports/{scene.primary}"
    short = SQL[:4]
    for seq, value in enumerate(short):
        fields = {"csrf_token": token, "action": "add", "text": value, "expected_seq": str(seq)}
        answer = check(radiologist.post(base + "/changes", data=fields), ("change", value))
        assert answer.status_code == 303, (value, answer.status_code, answer.text[:300])
    body = {"action": "edit", "finding": 0, "text": SQL[1], "expected_seq": len(short)}
    api_answer = check(radiologist.post(f"/api/reports/{scene.primary}/changes", json=body, headers=csrf), "api")
    assert api_answer.status_code == 200, api_answer.text
    fields = {"csrf_token": token, "action": "add", "text": SQL[4], "expected_seq": str(len(short) + 1)}
    long_change = check(radiologist.post(base + "/changes", data=fields), "long change")
    assert long_change.status_code == 422 and "at most 2000" in long_change.text
    with session_scope(url) as session:
        stored = session.scalars(
            select(ReviewChange.after).where(ReviewChange.report_id == scene.primary).order_by(ReviewChange.seq)
        ).all()
    assert stored == [*short, SQL[1]]
    fields = {"csrf_token": admin_token, "reason": SQL[3], "expected_seq": "0"}
    rejected = check(
        admin.post(f"/studies/{south}/reports/{scene.south_report}/reject", data=fields), "reject", leak=NUL
    )
    assert rejected.status_code == 303, rejected.text
    with session_scope(url) as session:
        reason = session.scalar(select(ReportRevision.text).where(ReportRevision.report_id == scene.south_report))
    assert reason == SQL[3]

    # Photo upload fields: valid text is stored literally as a new study; the rest is refused by field.
    fields = {**FORM, "patient_id": SQL[0], "clinical_question": SQL[1], "study_description": SQL[3]}
    stored_upload = check(photo(uploader, fields, upload_csrf), "upload")
    assert stored_upload.status_code == 201, stored_upload.text
    for field, value in (
        ("patient_name", SQL[0]),  # '=' is not allowed in a person name
        ("patient_id", SQL[4]),  # too long
        ("body_part", SQL[1]),
        ("clinical_question", SQL[4]),
        ("sex", SQL[2]),
        ("birth_date", SQL[0]),
    ):
        answer = check(photo(uploader, {**FORM, field: value}, upload_csrf), ("upload", field, value[:40]))
        assert answer.status_code == 422, (field, answer.text[:300])
        assert field in [item["loc"][-1] for item in answer.json()["detail"]], (field, answer.text[:300])
    page = check(
        uploader.post(
            "/upload",
            data={**FORM, "csrf_token": upload_token, "patient_name": SQL[0]},
            files={"file": ("p.png", image_bytes(photo_pixels(), "PNG"), "image/png")},
        ),
        "upload page",
    )
    assert page.status_code == 422 and "not a person name" in page.text
    StudyAssembler(scene.settings).run_once()  # the upload is complete at once: its worklist attributes filled
    with session_scope(url) as session:
        uploaded = session.scalars(select(Study).where(Study.source == "upload")).one()
        assert (uploaded.patient_id, uploaded.study_description) == (SQL[0], SQL[3])

    # The second-opinion body, JSON and form: an unknown model or prompt is named and refused.
    for value in SQL:
        for choice in ({"model": value}, {"prompt": value}):
            answer = check(
                radiologist.post(f"/api/studies/{north}/second-opinions", json=choice, headers=csrf),
                ("opinion", choice),
            )
            assert answer.status_code == 422, (choice, answer.text[:300])
        fields = {"csrf_token": token, "model": value}
        form = check(radiologist.post(f"/studies/{north}/second-opinions", data=fields), ("opinion form", value[:40]))
        assert form.status_code == 422, (value[:40], form.text[:300])

    # A study UID path segment: the same 404 as a study that does not exist (or 422).
    for value in (*SQL, f"{south}' OR '1'='1", f"{north}' --"):
        for path in uid_paths(value):
            answer = check(radiologist.get(path), (path[:60],))
            assert answer.status_code in (404, 422), (path[:60], answer.status_code)

    # A NUL byte in each text that reaches a query: a 4xx or a normal answer (PostgreSQL refuses NUL in text).
    attempts: list[tuple[httpx.Client, str, str, dict[str, Any]]] = [
        *((radiologist, "GET", "/api/studies", {"params": {name: NUL_VALUE}}) for name in WORKLIST_FILTERS),
        *((radiologist, "GET", "/worklist", {"params": {name: NUL_VALUE}}) for name in WORKLIST_FILTERS),
        *((admin, "GET", "/api/audit", {"params": {name: NUL_VALUE}}) for name in AUDIT_FILTERS),
        (anonymous, "POST", "/login", {"data": {"username": NUL_VALUE, "password": "x", "csrf_token": login_token}}),
        (anonymous, "POST", "/login", {"data": {"username": "x", "password": NUL_VALUE, "csrf_token": login_token}}),
        (anonymous, "POST", "/api/login", {"json": {"username": NUL_VALUE, "password": "x"}}),
        (radiologist, "POST", base + "/changes", {"data": {**fields, "text": NUL_VALUE}}),
        (radiologist, "POST", f"/api/studies/{north}/second-opinions", {"json": {"model": NUL_VALUE}, "headers": csrf}),
        *((radiologist, "GET", path, {}) for path in uid_paths(NUL_VALUE)),
    ]
    nul_answers: list[tuple[str, httpx.Response | None]] = [
        (f"{method} {path} {sorted(kwargs.get('params') or kwargs.get('data') or kwargs.get('json') or {})}", answer)
        for client, method, path, kwargs in attempts
        for answer in [attempt(client, method, path, **kwargs)]
    ]
    upload_nul = photo(uploader, {**FORM, "patient_id": NUL_VALUE}, upload_csrf)
    nul_answers.append(("POST /api/uploads/photo ['patient_id']", upload_nul))
    server_errors = [
        f"{what}: {'dropped' if answer is None else answer.status_code}"
        for what, answer in nul_answers
        if answer is None or answer.status_code >= 500
    ]
    for what, reply in nul_answers:
        if reply is not None and reply.status_code < 500:
            harmless(reply, what, leak=south)

    # Nothing dropped, nothing deleted, nothing added but the one upload and the audit of what happened.
    after = row_counts(url)
    assert after["studies"] == before["studies"] + 1
    assert (after["users"], after["reports"]) == (before["users"], before["reports"])
    assert after["audit_events"] > before["audit_events"]
    assert len(admin.get("/api/studies").json()) == 3
    log = api.log_path.read_text(errors="replace")
    assert "DROP TABLE" not in log and "UNION SELECT" not in log
    assert server_errors == []
    assert "Traceback" not in log


def assert_escaped(response: httpx.Response, *escaped: str) -> None:
    """An HTML page under the CSP header: the escaped forms present, no hostile markup, no foreign script."""
    assert_page_headers(response)
    html = response.text
    for raw in RAW:
        assert raw not in html, (response.url, raw)
    for form in escaped:
        assert form in html, (response.url, form)
    scripts = re.findall(r"<script[^>]*>", html)
    assert all(re.fullmatch(r'<script src="/static/[a-z_-]+\.js"( defer)?>', tag) for tag in scripts), scripts


def test_hostile_text_reaches_every_page_escaped(scene: Scene) -> None:
    api, url, north, south = scene.api, scene.settings.database_url, scene.north, scene.south
    radiologist, admin, uploader = (sign_in(api, name) for name in ("north_rad", "boss", "upload"))
    token = csrf_of(radiologist.get(f"/studies/{north}").text)
    admin_token = csrf_of(admin.get("/worklist").text)
    upload_token = csrf_of(uploader.get("/upload").text)

    # Hostile text from people: an edited finding, an impression, a reject reason, an uploaded patient name,
    # a typed username.
    base = f"/studies/{north}/reports/{scene.primary}"
    for seq, (action, finding, words) in enumerate(
        (("edit", "1", TEXTAREA + " edited"), ("add", "", JS_URL), ("impression", "", IMG + TEMPLATE))
    ):
        fields = {"csrf_token": token, "action": action, "text": words, "expected_seq": str(seq)}
        answer = radiologist.post(base + "/changes", data={**fields, **({"finding": finding} if finding else {})})
        assert answer.status_code == 303, answer.text
    rejected = admin.post(
        f"/studies/{south}/reports/{scene.south_report}/reject",
        data={"csrf_token": admin_token, "reason": SCRIPT + TEMPLATE, "expected_seq": "0"},
    )
    assert rejected.status_code == 303, rejected.text
    stored = photo(uploader, {**FORM, "patient_name": UPLOADED_NAME}, {"X-CSRF-Token": upload_token})
    assert stored.status_code == 201, stored.text
    visitor = httpx.Client(base_url=api.url, timeout=30)
    fields = {"username": SCRIPT, "password": "wrong password!!", "csrf_token": sign_in_form_token(visitor)}
    failed = visitor.post("/login", data=fields)
    assert failed.status_code == 401
    assert_escaped(failed, SCRIPT_ESCAPED)  # the typed username shown back in the form, escaped

    # The pages.
    StudyAssembler(scene.settings).run_once()  # the upload is complete at once: its worklist attributes filled
    worklist = radiologist.get("/worklist")
    assert worklist.status_code == 200 and set(listed(worklist.text)) == {north, stored.json()["study_uid"]}
    assert_escaped(
        worklist, PATIENT_ESCAPED, UPLOADED_ESCAPED + ", Eve", IMG_ESCAPED + TEMPLATE
    )  # the ingested and the uploaded study
    newest = radiologist.get(f"/studies/{north}")  # the newest draft: the second opinion's
    assert newest.status_code == 200 and "tiny/medgemma" in newest.text
    assert_escaped(newest, SCRIPT_ESCAPED, IMG_ESCAPED, TEXTAREA_ESCAPED, TEMPLATE, PATIENT_ESCAPED)
    study = radiologist.get(f"/studies/{north}?report={scene.primary}")
    assert study.status_code == 200
    assert_escaped(study, SCRIPT_ESCAPED, IMG_ESCAPED, TEXTAREA_ESCAPED, TEMPLATE, JS_URL)
    assert TEXTAREA_ESCAPED + " edited" in study.text
    compare = radiologist.get(f"/studies/{north}/compare")
    assert compare.status_code == 200 and "tiny/medgemma" in compare.text
    assert_escaped(compare, SCRIPT_ESCAPED, IMG_ESCAPED, TEXTAREA_ESCAPED, TEMPLATE)
    south_page = admin.get(f"/studies/{south}")
    assert south_page.status_code == 200 and "Version 2: rejected" in south_page.text
    assert_escaped(south_page, SCRIPT_ESCAPED, TEMPLATE)
    again = uploader.post(
        "/upload",
        data={**FORM, "csrf_token": upload_token, "family_name": UPLOADED_NAME, "study_description": TEXTAREA},
        files={"file": ("p.png", b"not an image", "image/png")},
    )
    assert again.status_code == 422, again.text[:300]
    assert_escaped(again, UPLOADED_ESCAPED, TEXTAREA_ESCAPED)  # the form shown again with the values, escaped

    # The JSON and CSV audit log carry the typed username verbatim, as data that no browser renders as HTML.
    events = admin.get("/api/audit", params={"action": "auth.login_failed"})
    assert events.status_code == 200 and events.headers["content-type"].startswith("application/json")
    assert [event["actor"] for event in events.json()["events"]] == [SCRIPT]
    exported = admin.get("/api/audit", params={"action": "auth.login_failed", "format": "csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert exported.headers["content-disposition"].startswith("attachment")
    assert [row["actor"] for row in csv.DictReader(io.StringIO(exported.text))] == [SCRIPT]

    # The JSON API gives the text back as it was stored, for the page's script to set as text.
    detail = radiologist.get(f"/api/studies/{north}").json()
    assert detail["patient_name"] == PATIENT_NAME
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(ReviewChange)) == 3
