"""The review pages without a browser: ``pacs-vlm api`` on PostgreSQL, driven with httpx over real sockets.

Studies are real pydicom sample files stored in the instance store and recorded as the listener does; the
assembly pass (Redis broker) completes them and fills their worklist attributes; drafts are recorded with
:func:`integration.store.reports.record_draft`, with findings that carry HTML and script.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from PIL import Image
from sqlalchemy import func, select, update

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.samples import pydicom_test_file
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, ReviewChange, Study, UserSession, utcnow
from tests.support.instances import ingest
from tests.support.review_app import (
    api_for,
    assert_page_headers,
    copy_with_new_uids,
    csrf_of,
    draft,
    evidence_of,
    ingest_settings,
    listed,
    sign_in,
    sites_and_users,
)
from tests.web.conftest import ApiProcess, sign_in_form_token
from tests.web.test_auth import PASSWORD

COOKIE = "pacsvlm_session"
HOSTILE = '<script>window.__pwned = true</script><img src=x onerror="window.__pwned = true">'
HOSTILE_NAME = "<b>Evil</b>^Eve"


@dataclass
class World:
    """A database with sites, users, studies and drafts, and the api serving it."""

    settings: Settings
    api: ApiProcess
    ct: pydicom.Dataset  # NORTH, routine, drafted (hostile findings and patient name)
    mr: pydicom.Dataset  # NORTH, stat, no report yet
    south: pydicom.Dataset  # SOUTH, drafted
    ct_report: int
    south_report: int


@pytest.fixture
def world(start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> World:
    settings = ingest_settings(migrated_postgres_url, redis_url, tmp_path)
    sites_and_users(migrated_postgres_url)
    now = utcnow()
    ct_file = copy_with_new_uids(
        pydicom_test_file("CT_small.dcm"), tmp_path / "files" / "ct.dcm", PatientName=HOSTILE_NAME, AccessionNumber="A1"
    )
    ct = ingest(settings, ct_file, now - timedelta(seconds=300), "CT1")
    mr = ingest(settings, pydicom_test_file("MR_small.dcm"), now - timedelta(seconds=200), "MR1")
    south_file = copy_with_new_uids(pydicom_test_file("CT_small.dcm"), tmp_path / "files" / "south.dcm")
    south = ingest(settings, south_file, now - timedelta(seconds=100), "SOUTH1")
    assert StudyAssembler(settings).run_once().jobs_created == 3
    with session_scope(settings.database_url) as session:
        session.execute(update(Study).where(Study.study_uid == str(mr.StudyInstanceUID)).values(priority="stat"))
    ct_report = draft(
        settings,
        str(ct.StudyInstanceUID),
        [{"text": HOSTILE + " Nodule in the right lung.", "images": [1]}, {"text": "No effusion.", "images": [1, 2]}],
        [evidence_of(ct, 1, window="lung"), evidence_of(ct, 2)],
    )
    south_report = draft(settings, str(south.StudyInstanceUID), [{"text": "South.", "images": [1]}], [])
    return World(settings, api_for(start_api, settings), ct, mr, south, ct_report, south_report)


def test_sign_in_form_redirects_and_sign_out(world: World) -> None:
    api = world.api
    anonymous = httpx.Client(base_url=api.url, timeout=30)
    home = anonymous.get("/")
    assert home.status_code == 303 and home.headers["location"].startswith("/login")
    wanted = anonymous.get("/worklist?sort=received")
    assert wanted.status_code == 303 and wanted.headers["location"] == "/login?next=%2Fworklist%3Fsort%3Dreceived"
    study = anonymous.get(f"/studies/{world.ct.StudyInstanceUID}")
    assert study.status_code == 303 and study.headers["location"].startswith("/login?next=")
    script = anonymous.get("/static/review.js")
    assert script.status_code == 200 and script.headers["x-content-type-options"] == "nosniff"
    assert script.headers["content-type"].startswith("text/javascript") and "keydown" in script.text
    form = anonymous.get("/login")
    assert form.status_code == 200 and 'name="password"' in form.text
    assert_page_headers(form)

    token = sign_in_form_token(anonymous)
    forged = anonymous.post("/login", data={"username": "north_rad", "password": PASSWORD})  # no token
    foreign = httpx.post(api.url + "/login", data={"username": "north_rad", "password": PASSWORD, "csrf_token": token})
    assert forged.status_code == foreign.status_code == 403 and COOKIE not in anonymous.cookies
    assert "reload the page" in forged.text and COOKIE not in foreign.cookies  # a cross-site post has no cookie
    wrong = anonymous.post(
        "/login", data={"username": "north_rad", "password": "not the password", "csrf_token": token}
    )
    unknown = anonymous.post("/login", data={"username": "nobody", "password": PASSWORD, "csrf_token": token})
    assert wrong.status_code == unknown.status_code == 401
    assert "invalid username or password" in wrong.text and COOKIE not in anonymous.cookies
    assert "not the password" not in wrong.text
    empty = anonymous.post("/login", data={"username": "north_rad", "csrf_token": token})
    assert empty.status_code == 422 and COOKIE not in anonymous.cookies

    # A local ``next`` is followed; another site's is not.
    evil = anonymous.post(
        "/login", data={"username": "north_rad", "password": PASSWORD, "next": "//evil.example/x", "csrf_token": token}
    )
    assert evil.status_code == 303 and evil.headers["location"] == "/worklist"
    other = httpx.Client(base_url=api.url, timeout=30)
    back = other.post(
        "/login",
        data={
            "username": "north_rad",
            "password": PASSWORD,
            "next": "/worklist?sort=oldest",
            "csrf_token": sign_in_form_token(other),
        },
    )
    assert back.status_code == 303 and back.headers["location"] == "/worklist?sort=oldest"
    cookie = back.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert anonymous.get("/").headers["location"] == "/worklist"
    assert anonymous.get("/login").headers["location"] == "/worklist"

    uploader = sign_in(api, "upload")
    assert uploader.get("/").headers["location"] == "/upload"
    refused = uploader.get("/worklist")
    assert refused.status_code == 403 and "radiologists and administrators" in refused.text

    worklist = anonymous.get("/worklist")
    token = csrf_of(worklist.text)
    assert anonymous.post("/logout").status_code == 403  # no CSRF token
    assert anonymous.post("/logout", data={"csrf_token": "0" * 64}).status_code == 403
    out = anonymous.post("/logout", data={"csrf_token": token})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert anonymous.get("/worklist").status_code == 303  # the session is over

    with session_scope(world.settings.database_url) as session:
        actions = [row for row in session.execute(select(AuditEvent.action, AuditEvent.actor)).all()]
    assert ("auth.login", "north_rad") in actions and ("auth.login_failed", "nobody") in actions
    assert ("auth.logout", "north_rad") in actions


def test_worklist_filters_sorting_and_bad_values(world: World) -> None:
    ct, mr, south = (str(ds.StudyInstanceUID) for ds in (world.ct, world.mr, world.south))
    radiologist, admin = sign_in(world.api, "north_rad"), sign_in(world.api, "boss")

    page = radiologist.get("/worklist")
    assert page.status_code == 200
    assert_page_headers(page)
    assert listed(page.text) == [mr, ct]  # stat first, then newest; the other site's study is absent
    assert "1CT1" in page.text and "2004-01-19" in page.text  # the worklist attributes, the date readable
    assert "&lt;b&gt;Evil&lt;/b&gt;, Eve" in page.text and "<b>Evil</b>" not in page.text

    cases: list[tuple[str, list[str] | None]] = [
        ("sort=received", [south, mr, ct]),
        ("sort=oldest", [ct, mr, south]),
        ("sort=status", [south, ct, mr]),  # drafts first (stat first, then newest), then studies without one
        ("status=draft", [south, ct]),
        ("status=none", [mr]),
        ("status=signed", []),
        ("modality=mr", [mr]),
        ("modality=CT&sort=received", [south, ct]),
        ("priority=stat", [mr]),
        ("priority=routine&sort=oldest", [ct, south]),
        (f"received_from={date.today() + timedelta(days=1)}", []),
        (f"received_to={date.today() - timedelta(days=1)}", []),
        (f"received_from={date.today() - timedelta(days=1)}&received_to={date.today() + timedelta(days=1)}", None),
        ("site=SOUTH", [south]),
        ("status=&modality=&priority=&site=&received_from=", None),  # an untouched form: no filter
    ]
    for query, expected in cases:
        rows = admin.get("/api/studies?" + query)
        assert rows.status_code == 200, (query, rows.text)
        uids = [row["study_uid"] for row in rows.json()]
        html = admin.get("/worklist?" + query)
        assert html.status_code == 200, (query, html.text)
        assert listed(html.text) == uids, query
        if expected is None:
            assert sorted(uids) == sorted([ct, mr, south]), query
        else:
            assert uids == expected, query
    # A radiologist's site filter never widens what they see.
    assert [r["study_uid"] for r in radiologist.get("/api/studies?site=SOUTH").json()] == []

    row = next(r for r in radiologist.get("/api/studies").json() if r["study_uid"] == ct)
    assert row["patient_id"] == "1CT1" and row["patient_name"] == HOSTILE_NAME and row["accession_number"] == "A1"
    assert row["modalities"] == ["CT"] and row["priority"] == "routine" and row["site"] == "NORTH"
    assert row["report_status"] == "draft" and row["report_id"] == world.ct_report and row["study_date"] == "20040119"

    bad = [
        ("status=bogus", "status"),
        ("sort=sideways", "sort"),
        ("priority=urgent", "priority"),
        ("modality=C%20T", "modality"),
        ("received_from=yesterday", "received_from"),
        ("received_from=2026-02-02&received_to=2026-01-01", "received_from is after received_to"),
        ("limit=0", "limit"),
        ("unknown=1", "unknown"),
        ("site=%27%3B%20DROP%20TABLE%20studies%3B--", "site"),
    ]
    for query, named in bad:
        html = radiologist.get("/worklist?" + query)
        assert html.status_code == 422 and named in html.text, (query, html.text)
        assert_page_headers(html)
        api = radiologist.get("/api/studies?" + query)
        assert api.status_code == 422 and named in api.text, (query, api.text)
    assert len(admin.get("/api/studies").json()) == 3  # the table survived


def test_study_page_images_escaping_and_audit(world: World) -> None:
    ct_uid, south_uid = str(world.ct.StudyInstanceUID), str(world.south.StudyInstanceUID)
    radiologist = sign_in(world.api, "north_rad")

    page = radiologist.get(f"/studies/{ct_uid}")
    assert page.status_code == 200
    assert_page_headers(page)
    html = page.text
    # Model output and patient data are text, never markup.
    assert "<script>window.__pwned" not in html and "<img src=x" not in html and "<b>Impression</b>" not in html
    assert "&lt;script&gt;window.__pwned = true&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;window.__pwned = true&#34;&gt;" in html
    assert "&lt;b&gt;Impression&lt;/b&gt; &amp; more" in html
    assert "&lt;b&gt;Evil&lt;/b&gt;, Eve" in html
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="/static/review.js" defer>',
        '<script src="/static/viewer.js" defer>',
    ]
    # The evidence: image 1 in the lung window, image 2 (the same frame) cited; one tile marked #1 and #2.
    sop = str(world.ct.SOPInstanceUID)
    assert f"/studies/{ct_uid}/instances/{sop}/frames/1.png?size=128&amp;window=lung" in html
    assert ">#1</span>" in html and ">#2</span>" in html and "Image 1" in html
    assert 'data-seen="0:1.2"' in html  # the series' first slice is both prompt images
    assert "The model saw 1 of 1 slice (CT series 1: 1 of 1)." in html
    assert "Open in" not in html and 'id="viewer-links"' not in html  # no viewer configured: no links
    assert "Open in" not in radiologist.get("/worklist").text
    assert html.count('name="csrf_token"') == html.count("<form") >= 3  # every form carries the token
    assert html.count('id="review-form"') == 1  # one editor form: every box's text travels with every button

    # Images: decoded, the requested size (never beyond the image's own 128), windows; cached privately.
    for size, window, shown in ((64, "default", 64), (200, "lung", 128), (1024, "bone", 128), (90, "40,400", 90)):
        image = radiologist.get(f"/studies/{ct_uid}/instances/{sop}/frames/1.png?size={size}&window={window}")
        assert image.status_code == 200, image.text
        assert image.headers["content-type"] == "image/png" and image.headers["cache-control"].startswith("private")
        decoded = Image.open(io.BytesIO(image.content))
        assert decoded.format == "PNG" and decoded.size == (shown, shown) and decoded.mode == "L"  # grey
    lung = Image.open(
        io.BytesIO(radiologist.get(f"/studies/{ct_uid}/instances/{sop}/frames/1.png?window=lung").content)
    )
    bone = Image.open(
        io.BytesIO(radiologist.get(f"/studies/{ct_uid}/instances/{sop}/frames/1.png?window=bone").content)
    )
    assert lung.tobytes() != bone.tobytes()  # the window is applied
    for query, code in (("size=5000", 422), ("size=8", 422), ("window=vampire", 422), ("window=40,0", 422)):
        assert radiologist.get(f"/studies/{ct_uid}/instances/{sop}/frames/1.png?{query}").status_code == code
    assert radiologist.get(f"/studies/{ct_uid}/instances/{sop}/frames/2.png").status_code == 404  # no frame 2
    assert radiologist.get(f"/studies/{ct_uid}/instances/1.2.3/frames/1.png").status_code == 404

    # Other sites' studies, their images and invalid UIDs: 404, the same as something that does not exist.
    south_sop = str(world.south.SOPInstanceUID)
    other = radiologist.get(f"/studies/{south_uid}")
    missing = radiologist.get("/studies/1.2.3.4.5")
    assert other.status_code == missing.status_code == 404 and "no such study" in other.text
    assert radiologist.get(f"/studies/{south_uid}/instances/{south_sop}/frames/1.png").status_code == 404
    assert radiologist.get(f"/studies/{ct_uid}/instances/{south_sop}/frames/1.png").status_code == 404
    assert radiologist.get("/studies/..%2F..%2Fetc/instances/x/frames/1.png").status_code == 404
    assert radiologist.get(f"/studies/{ct_uid}?report={world.south_report}").status_code == 404
    assert radiologist.get(f"/api/studies/{south_uid}").status_code == 404
    admin = sign_in(world.api, "boss")
    assert admin.get(f"/studies/{south_uid}/instances/{south_sop}/frames/1.png?size=32").status_code == 200

    waiting = radiologist.get(f"/studies/{world.mr.StudyInstanceUID}")
    assert waiting.status_code == 200 and "No report yet" in waiting.text and "Series 1 · MR" in waiting.text
    detail = radiologist.get(f"/api/studies/{ct_uid}")
    assert detail.status_code == 200 and detail.json()["patient_id"] == "1CT1"
    with session_scope(world.settings.database_url) as session:
        views = session.execute(
            select(AuditEvent.actor, AuditEvent.object_type, AuditEvent.object_id, AuditEvent.source, AuditEvent.detail)
            .where(AuditEvent.action == "study.view")
            .order_by(AuditEvent.id)
        ).all()
    mr_uid = str(world.mr.StudyInstanceUID)
    assert [(actor, kind, uid, detail["via"]) for actor, kind, uid, _, detail in views] == [
        ("north_rad", "study", ct_uid, "page"),
        ("north_rad", "study", mr_uid, "page"),
        ("north_rad", "study", ct_uid, "api"),
    ]  # refused views are not views
    assert all(source and source.startswith("127.0.0.1") for *_, source, _ in views)
    assert all("Evil" not in repr(detail) and "1CT1" not in repr(detail) for *_, detail in views)
    log = world.api.log_path.read_text(errors="replace")
    assert "Evil" not in log and "1CT1" not in log  # no patient data in the application log


def post_form(client: httpx.Client, url: str, **fields: Any) -> httpx.Response:
    return client.post(url, data={key: str(value) for key, value in fields.items()})


def changes(settings: Settings, report_id: int) -> list[tuple[int, str, str | None]]:
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(ReviewChange.seq, ReviewChange.action, ReviewChange.after)
            .where(ReviewChange.report_id == report_id)
            .order_by(ReviewChange.seq)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_review_forms_csrf_conflicts_and_signing(world: World) -> None:
    ct_uid, report = str(world.ct.StudyInstanceUID), world.ct_report
    base = f"/studies/{ct_uid}/reports/{report}"
    radiologist = sign_in(world.api, "north_rad")
    token = csrf_of(radiologist.get(f"/studies/{ct_uid}").text)

    # No token, a wrong token, or another session's token: refused, nothing recorded.
    other_token = csrf_of(sign_in(world.api, "boss").get("/worklist").text)
    for sent in (None, "f" * 64, other_token):
        fields = {"action": "accept", "finding": 0, "expected_seq": 0}
        if sent:
            fields["csrf_token"] = sent
        refused = post_form(radiologist, base + "/changes", **fields)
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert post_form(radiologist, base + "/sign", expected_seq=0).status_code == 403
    kept = post_form(radiologist, base + "/changes", action="add", text="Typed before the refusal", expected_seq=0)
    assert kept.status_code == 403 and "Typed before the refusal" in kept.text  # shown back, not lost
    assert changes(world.settings, report) == []

    accepted = post_form(radiologist, base + "/changes", csrf_token=token, action="accept", finding=0, expected_seq=0)
    assert accepted.status_code == 303
    assert accepted.headers["location"] == f"/studies/{ct_uid}?report={report}&done=accept#finding-0"
    page = radiologist.get(accepted.headers["location"])
    assert "Finding accepted." in page.text and 'value="1"' in page.text  # the next expected_seq

    # A second reviewer's page still says 0: their edit is refused with 409 and their text is shown, not lost.
    stale = post_form(
        radiologist,
        base + "/changes",
        csrf_token=token,
        action="edit",
        finding=1,
        text="My careful words",
        expected_seq=0,
    )
    assert stale.status_code == 409 and "Someone else changed this draft" in stale.text
    assert "My careful words" in stale.text and f'href="/studies/{ct_uid}?report={report}"' in stale.text
    invalid = post_form(
        radiologist, base + "/changes", csrf_token=token, action="edit", finding=9, text="x", expected_seq=1
    )
    assert invalid.status_code == 422
    hostile = post_form(radiologist, base + "/changes", csrf_token=token, action="add", text=HOSTILE, expected_seq=1)
    assert hostile.status_code == 303 and hostile.headers["location"].endswith("#finding-2")
    page = radiologist.get(f"/studies/{ct_uid}")
    assert "<script>window.__pwned" not in page.text and page.text.count("&lt;script&gt;window.__pwned") >= 2
    assert changes(world.settings, report) == [(1, "accept", "accepted"), (2, "add", HOSTILE)]

    # Finding 2 was never reviewed: signing is refused until it is, or until the radiologist confirms the count.
    unreviewed = post_form(radiologist, base + "/sign", csrf_token=token, expected_seq=2)
    assert unreviewed.status_code == 409 and "1 finding was not reviewed" in unreviewed.text
    miscounted = post_form(radiologist, base + "/sign", csrf_token=token, expected_seq=2, confirm_unreviewed=2)
    assert miscounted.status_code == 409
    signed = post_form(radiologist, base + "/sign", csrf_token=token, expected_seq=2, confirm_unreviewed=1)
    assert signed.status_code == 303, signed.text
    view = radiologist.get(signed.headers["location"])
    assert "Report signed." in view.text and "Version 2: signed" in view.text and "Verified SR written" in view.text
    assert 'action="' + base + '/changes"' not in view.text  # read-only now
    again = post_form(radiologist, base + "/changes", csrf_token=token, action="accept", finding=1, expected_seq=2)
    assert again.status_code == 409

    # An administrator rejects the other site's draft as a whole: a reason is required, then it is shown as text.
    admin = sign_in(world.api, "boss")
    south_uid, south_base = str(world.south.StudyInstanceUID), f"/studies/{world.south.StudyInstanceUID}/reports"
    admin_token = csrf_of(admin.get(f"/studies/{south_uid}").text)
    no_reason = post_form(admin, f"{south_base}/{world.south_report}/reject", csrf_token=admin_token, expected_seq=0)
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    elsewhere = f"/studies/{ct_uid}/reports/{world.south_report}/reject"
    wrong_study = post_form(admin, elsewhere, csrf_token=admin_token, reason="x", expected_seq=0)
    assert wrong_study.status_code == 404  # a report is reached only through its own study
    rejected = post_form(
        admin, f"{south_base}/{world.south_report}/reject", csrf_token=admin_token, reason=HOSTILE, expected_seq=0
    )
    assert rejected.status_code == 303
    shown = admin.get(rejected.headers["location"])
    assert "Draft rejected." in shown.text and "Version 2: rejected" in shown.text
    assert "&lt;script&gt;window.__pwned" in shown.text and "<script>window" not in shown.text
    assert 'id="sign-form"' not in shown.text

    # The session ends while a reviewer types: the text comes back on a 401 page; a GET goes to the sign-in form.
    with session_scope(world.settings.database_url) as session:
        session.execute(update(UserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    late = post_form(radiologist, base + "/changes", csrf_token=token, action="add", text="Late words", expected_seq=3)
    assert late.status_code == 401 and "Late words" in late.text and "sign in again" in late.text
    assert radiologist.get(f"/studies/{ct_uid}").status_code == 303
    with session_scope(world.settings.database_url) as session:
        audited = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "review.change")
        )
        assert audited == 2
        signs = session.scalars(select(AuditEvent.actor).where(AuditEvent.action == "report.sign")).all()
        assert signs == ["north_rad"]
