"""Reports written by hand, failed studies and long text, tried in headless Chromium as people would.

Why: after "Reject the whole draft" a radiologist had no way to report the study, a failed study showed no
reason, and a long unbroken model word overflowed the findings panel.  One ``pacs-vlm api`` process, one
PostgreSQL database and one Chromium serve the module; each test adds its own study through the listener's
intake.  The new routes' authorization is checked like the sites': another site's study is 404, an uploader 403,
an administrator may not write a report, a radiologist may not retry, and a request without CSRF is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import select

from integration.intake.assembly import StudyAssembler
from integration.samples import pydicom_test_file
from integration.store.reports import fail_job
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, JobState, Report, ReportRevision, Study, StudyState, utcnow
from tests.support.instances import ingest
from tests.support.review_app import copy_with_new_uids, job_of, review_world, sign_in
from tests.support.services import Postgres, RedisServer
from tests.web.test_signing_browser import Module, api_post, primary_draft, signed_in

#: A Redis database of its own for the module's api and assembler.
REDIS_DB = 5
LONG_WORD = "x" * 3000


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    review = review_world(postgres, redis_server, tmp_path_factory.mktemp("manual"), REDIS_DB)
    yield Module(review.settings, review.start_api())
    review.close()


def a_study(world: Module, tmp: Path, ae: str = "MR1") -> pydicom.Dataset:
    """One MR instance of a new study from ``ae``'s site, stored as the listener does and completed."""
    path = copy_with_new_uids(
        pydicom_test_file("MR_small.dcm"), tmp / f"{len(list(tmp.glob('*.dcm')))}.dcm", PatientID="MR-0002"
    )
    ds = ingest(world.settings, path, utcnow() - timedelta(seconds=120), ae)
    assert StudyAssembler(world.settings).run_once().jobs_created == 1
    return ds


def failed(world: Module, ds: pydicom.Dataset, reason: str) -> None:
    job_id = job_of(world.settings, str(ds.StudyInstanceUID))
    with session_scope(world.settings.database_url) as session:
        session.get(AnalysisJob, job_id).state = JobState.RUNNING  # type: ignore[union-attr]
        study = session.scalars(select(Study).where(Study.study_uid == str(ds.StudyInstanceUID))).one()
        study.state = StudyState.RUNNING
    with session_scope(world.settings.database_url) as session:
        fail_job(session, job_id, reason, utcnow())


def study_row(world: Module, ds: pydicom.Dataset) -> tuple[str, list[Report], int]:
    with session_scope(world.settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == str(ds.StudyInstanceUID))).one()
        reports = list(session.scalars(select(Report).where(Report.study_id == study.id).order_by(Report.id)))
        jobs = len(list(session.scalars(select(AnalysisJob.id).where(AnalysisJob.study_id == study.id))))
        session.expunge_all()
        return study.state.value, reports, jobs


def test_discard_a_useless_draft_write_by_hand_and_sign(world: Module, chromium: Any, tmp_path: Path) -> None:
    ds = a_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    draft_id = primary_draft(world, ds, [f"Model babble {LONG_WORD}"])
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/studies/{uid}")

    # a 3000-character unbroken model word wraps inside the findings panel
    boxes = page.evaluate(
        """() => { const r = document.querySelector('#report'), f = document.querySelector('#findings');
                   return {report: r.getBoundingClientRect().right, findings: f.getBoundingClientRect().right,
                           scroll: r.scrollWidth, client: r.clientWidth, page: document.documentElement.scrollWidth,
                           view: window.innerWidth}; }"""
    )
    assert boxes["findings"] <= boxes["report"] + 1 and boxes["scroll"] <= boxes["client"] + 1, boxes
    assert boxes["page"] <= boxes["view"], boxes

    assert page.locator("#write-by-hand").count() == 0  # a live draft of record: only discarding is offered
    page.locator("#manual-discard summary").click()
    page.fill("#discard-reason", "Model output is unusable.")
    with page.expect_navigation():
        page.locator("#discard-and-write").click()
    assert "written by hand" in page.locator("#manual-started").inner_text()
    assert page.locator("#written-without-ai").inner_text() == "Written without AI"
    page.fill("#impression-text", "Normal MR of the head, read without AI.")
    with page.expect_navigation():
        page.locator("#sign-button").click()
    assert page.locator(".notice").first.inner_text() == "Report signed."
    assert page.locator("#written-without-ai").count() == 1

    state, reports, _ = study_row(world, ds)
    assert state == "signed"
    assert [(r.id == draft_id, r.status.value, r.ai_generated) for r in reports] == [
        (True, "rejected", True),
        (False, "signed", False),
    ]
    with session_scope(world.settings.database_url) as session:
        revision = session.scalars(select(ReportRevision).where(ReportRevision.report_id == reports[1].id)).one()
        assert "without AI" in revision.text and "AI-assisted" not in revision.text
        assert revision.sr_path is not None
    # a second manual report is refused now: the study is signed
    code, text = api_post(page, f"/api/studies/{uid}/manual-report", {})
    assert code == 409 and "signed report" in text


def test_after_rejecting_the_draft_the_report_is_written_by_hand(world: Module, chromium: Any, tmp_path: Path) -> None:
    ds = a_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    draft_id = primary_draft(world, ds, ["Finding one."])
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/studies/{uid}")
    code, text = api_post(page, f"/api/studies/{uid}/manual-report", {})
    assert code == 409 and "draft of record" in text  # the live draft comes first
    code, _ = api_post(page, f"/api/reports/{draft_id}/reject", {"reason": "wrong body part"})
    assert code == 200
    page.goto(f"{world.api.url}/studies/{uid}")
    with page.expect_navigation():
        page.locator("#write-by-hand").click()
    assert page.locator("#written-without-ai").count() == 1


def test_a_failed_study_shows_its_reason_and_an_administrator_retries(
    world: Module, chromium: Any, tmp_path: Path
) -> None:
    ds = a_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    failed(world, ds, "gave up after 3 attempts: <script>alert(1)</script> CUDA out of memory")

    radiologist = signed_in(chromium, world, "north_rad")
    radiologist.goto(f"{world.api.url}/studies/{uid}")
    assert "CUDA out of memory" in radiologist.locator("#failure-reason").inner_text()
    assert "<script>" in radiologist.locator("#failure-reason").inner_text()  # shown as text, not run
    assert radiologist.locator("#retry-analysis").count() == 0
    assert radiologist.locator("#write-by-hand").count() == 1  # no draft: the report can be written by hand
    code, text = api_post(radiologist, f"/api/studies/{uid}/retry", {})
    assert code == 403 and "only administrators" in text

    admin = signed_in(chromium, world, "boss")
    admin.goto(f"{world.api.url}/studies/{uid}")
    assert "CUDA out of memory" in admin.locator("#failure-reason").inner_text()
    assert admin.locator("#write-by-hand").count() == 0
    with admin.expect_navigation():
        admin.locator("#retry-analysis").click()
    assert admin.locator("#retry-queued").inner_text() == "Analysis queued again."
    assert admin.locator("#study-failed").count() == 0
    state, _, jobs = study_row(world, ds)
    assert state in ("stable", "queued") and jobs == 2
    code, text = api_post(admin, f"/api/studies/{uid}/retry", {})
    assert code == 409 and "not failed" in text
    code, text = api_post(admin, f"/api/studies/{uid}/manual-report", {})
    assert code == 403 and "only radiologists" in text


def test_the_new_routes_are_authorized_like_the_sites(world: Module, tmp_path: Path) -> None:
    south = a_study(world, tmp_path, ae="SOUTH1")
    north = a_study(world, tmp_path)
    failed(world, south, "worker lost")
    failed(world, north, "worker lost")
    rad, uploader, admin = (sign_in(world.api, name) for name in ("north_rad", "upload", "boss"))

    def post(client: httpx.Client, path: str, *, csrf: bool = True) -> httpx.Response:
        page = client.get("/worklist")
        token = page.text.split('name="csrf-token" content="')[1][:64] if 'name="csrf-token"' in page.text else ""
        return client.post(path, json={}, headers={"X-CSRF-Token": token} if csrf else {})

    # another site's study is 404 for a site's radiologist (the administrator here serves every site)
    assert post(rad, f"/api/studies/{south.StudyInstanceUID}/manual-report").status_code == 404
    for path in ("/api/studies/{}/manual-report", "/api/studies/{}/retry"):
        assert post(uploader, path.format(north.StudyInstanceUID)).status_code == 403
        assert (
            post(admin if "retry" in path else rad, path.format(north.StudyInstanceUID), csrf=False).status_code == 403
        )
    assert post(rad, f"/api/studies/{south.StudyInstanceUID}/retry").status_code == 403
    form = rad.post(f"/studies/{north.StudyInstanceUID}/manual-report", data={})
    assert form.status_code == 403  # no CSRF token: refused before anything else
    assert study_row(world, north)[0] == "failed" and study_row(world, south)[0] == "failed"
    assert study_row(world, north)[1] == [] and study_row(world, south)[1] == []
