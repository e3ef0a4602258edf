"""The operations page ``/admin/work``, tried in headless Chromium as an administrator would.

Why: failed analyses and dead-letter deliveries waited for someone with a shell.  One ``pacs-vlm api``
process (with two configured models), one PostgreSQL database and one Chromium serve the module; each test
adds its own studies through the listener's intake.  Covered: the filters in the URL, a retry (a new job,
the study out of ``failed``, audited), a re-analysis at a chosen model and prompt (primary for a failed
study, a second opinion otherwise), a dead letter retried (pending again, audited), and authorization
(radiologists and uploaders 403, no CSRF 403, model errors shown as text).
"""

from __future__ import annotations

import json
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
from integration.store.tables import (
    AnalysisJob,
    AuditEvent,
    Delivery,
    DeliveryState,
    JobState,
    Study,
    StudyState,
    utcnow,
)
from tests.support.instances import ingest
from tests.support.review_app import copy_with_new_uids, csrf_of, job_of, review_world, sign_in
from tests.support.services import Postgres, RedisServer
from tests.web.test_signing_browser import Module, primary_draft, signed_in

#: A Redis database of the module's own (6 is bench.reading's, 5 test_manual_reports').
REDIS_DB = 3
MODELS = {"medgemma-4b": "/models/medgemma-4b", "lingshu-7b": "/models/lingshu-7b"}


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    review = review_world(postgres, redis_server, tmp_path_factory.mktemp("work"), REDIS_DB)
    yield Module(review.settings, review.start_api(PACSVLM_MODELS=json.dumps(MODELS)))
    review.close()


def a_study(world: Module, tmp: Path, ae: str = "MR1") -> pydicom.Dataset:
    """One MR instance of a new study from ``ae``'s site, stored as the listener does and completed."""
    path = copy_with_new_uids(pydicom_test_file("MR_small.dcm"), tmp / f"{len(list(tmp.glob('*.dcm')))}.dcm")
    ds = ingest(world.settings, path, utcnow() - timedelta(seconds=120), ae)
    assert StudyAssembler(world.settings).run_once().jobs_created == 1
    return ds


def failed(world: Module, ds: pydicom.Dataset, reason: str) -> None:
    """End the study's job as the worker does when it gives up."""
    job_id = job_of(world.settings, str(ds.StudyInstanceUID))
    with session_scope(world.settings.database_url) as session:
        session.get(AnalysisJob, job_id).state = JobState.RUNNING  # type: ignore[union-attr]
        session.scalars(
            select(Study).where(Study.study_uid == str(ds.StudyInstanceUID))
        ).one().state = StudyState.RUNNING
    with session_scope(world.settings.database_url) as session:
        fail_job(session, job_id, reason, utcnow())


def jobs_of(world: Module, ds: pydicom.Dataset) -> tuple[str, list[tuple[str, str, str | None, str | None]]]:
    """The study's state and its jobs (state, purpose, model, prompt), oldest first."""
    with session_scope(world.settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == str(ds.StudyInstanceUID))).one()
        jobs = session.scalars(select(AnalysisJob).where(AnalysisJob.study_id == study.id).order_by(AnalysisJob.id))
        return study.state.value, [(j.state.value, j.purpose, j.model_name, j.prompt_name) for j in jobs]


def audited(world: Module, action: str, object_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    with session_scope(world.settings.database_url) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == action, AuditEvent.object_id == object_id)
        ).all()
        return [(event.actor, event.detail) for event in events]


def dead_letter(world: Module, ds: pydicom.Dataset, error: str) -> int:
    """A draft of the study whose delivery to a destination gave up."""
    report_id = primary_draft(world, ds, ["Finding."])
    with session_scope(world.settings.database_url) as session:
        delivery = Delivery(
            report_id=report_id,
            subject=f"draft:{report_id}",
            destination="pacs",
            document="sr",
            state=DeliveryState.DEAD_LETTER,
            attempts=5,
            last_error=error,
        )
        session.add(delivery)
        session.flush()
        return int(delivery.id)


def test_an_administrator_retries_and_reanalyses_failed_studies(world: Module, chromium: Any, tmp_path: Path) -> None:
    first, second, south = a_study(world, tmp_path), a_study(world, tmp_path), a_study(world, tmp_path, "SOUTH1")
    failed(world, first, "gave up after 3 attempts: <script>alert(1)</script> CUDA out of memory")
    failed(world, second, "worker lost")
    failed(world, south, "worker lost")
    admin = signed_in(chromium, world, "boss")
    admin.locator("#nav-operations").click()
    admin.wait_for_url("**/admin/work")

    rows = admin.locator("#failed-studies tbody tr")
    uids = [rows.nth(i).get_attribute("data-study") for i in range(rows.count())]
    assert {str(first.StudyInstanceUID), str(second.StudyInstanceUID), str(south.StudyInstanceUID)} <= set(uids)
    row = admin.locator(f'#failed-studies tr[data-study="{first.StudyInstanceUID}"]')
    assert "<script>" in row.locator(".failure-reason").inner_text()  # the error is text, not run
    # the site filter lives in the URL
    admin.fill("#filter-site", "SOUTH")
    with admin.expect_navigation():
        admin.locator("#apply-filters").click()
    assert "site=SOUTH" in admin.url and "state=failed" in admin.url
    uids = [r.get_attribute("data-study") for r in admin.locator("#failed-studies tbody tr").all()]
    assert uids == [str(south.StudyInstanceUID)]
    assert [r.locator(".job-state").inner_text() for r in admin.locator("#jobs tbody tr").all()] == ["failed"]
    admin.goto(f"{world.api.url}/admin/work?state=failed&since=2999-01-01")
    assert admin.locator("#no-failed-studies").count() == 1 and admin.locator("#no-jobs").count() == 1

    # retry: a new job, the study leaves failed, audited; the filters are kept
    admin.goto(f"{world.api.url}/admin/work?state=failed&site=NORTH")
    with admin.expect_navigation():
        admin.locator(f'tr[data-study="{first.StudyInstanceUID}"] .retry-study').click()
    assert "site=NORTH" in admin.url
    assert admin.locator("#work-done").inner_text().startswith("Analysis queued again as job ")
    state, jobs = jobs_of(world, first)
    assert state in ("stable", "queued") and [j[0] for j in jobs] == ["failed", "queued"]
    assert [actor for actor, _ in audited(world, "study.retry", str(first.StudyInstanceUID))] == ["boss"]
    assert admin.locator(f'#failed-studies tr[data-study="{first.StudyInstanceUID}"]').count() == 0

    # re-analyse the other failed study with a chosen model and prompt: its primary analysis again, stat
    row = admin.locator(f'#failed-studies tr[data-study="{second.StudyInstanceUID}"]')
    row.locator("summary").click()
    row.locator(".reanalyze-model").select_option("lingshu-7b")
    row.locator(".reanalyze-prompt").select_option("general")
    row.locator(".reanalyze-stat").check()
    with admin.expect_navigation():
        row.locator(".reanalyze-study").click()
    assert admin.locator("#work-done").inner_text().startswith("Primary analysis queued again as job ")
    state, jobs = jobs_of(world, second)
    assert state in ("stable", "queued") and jobs[-1] == ("queued", "primary", "lingshu-7b", "general")
    [(actor, detail)] = audited(world, "study.reanalyze", str(second.StudyInstanceUID))
    assert actor == "boss" and detail is not None and detail["priority"] == "stat"

    # asking again while that job is queued: a second opinion with the same model and prompt is refused
    token = csrf_of(admin.content())
    answer = admin.request.post(
        f"{world.api.url}/admin/work/studies/{second.StudyInstanceUID}/reanalyze",
        form={"csrf_token": token, "model": "lingshu-7b", "prompt": "general"},
    )
    assert answer.status == 409 and "already queued or running" in answer.text()
    answer = admin.request.post(
        f"{world.api.url}/admin/work/studies/{second.StudyInstanceUID}/reanalyze",
        form={"csrf_token": token, "model": "<b>nope</b>"},
    )
    assert answer.status == 409 and "&lt;b&gt;nope" in answer.text() and "<b>nope" not in answer.text()


def test_a_drafted_study_is_reanalysed_as_a_second_opinion(world: Module, chromium: Any, tmp_path: Path) -> None:
    ds = a_study(world, tmp_path)
    primary_draft(world, ds, ["Finding."])
    admin = signed_in(chromium, world, "boss")
    admin.goto(f"{world.api.url}/admin/work?state=done&site=NORTH")
    row = admin.locator("#jobs tbody tr").filter(has=admin.locator(f'a[href="/studies/{ds.StudyInstanceUID}"]'))
    row.locator('select[name="model"]').select_option("medgemma-4b")
    with admin.expect_navigation():
        row.locator(".second-opinion").click()
    assert "state=done" in admin.url
    assert admin.locator("#work-done").inner_text().startswith("Second opinion queued as job ")
    state, jobs = jobs_of(world, ds)
    assert state == "drafted" and jobs[-1] == ("queued", "second_opinion", "medgemma-4b", None)
    assert [actor for actor, _ in audited(world, "opinion.requested", str(ds.StudyInstanceUID))] == ["boss"]


def test_a_dead_letter_is_retried_from_the_page(world: Module, chromium: Any, tmp_path: Path) -> None:
    ds = a_study(world, tmp_path)
    delivery_id = dead_letter(world, ds, "peer answered <i>503</i>")
    admin = signed_in(chromium, world, "boss")
    admin.goto(f"{world.api.url}/admin/work")
    row = admin.locator(f'#dead-letters tr[data-delivery="{delivery_id}"]')
    assert row.locator(".delivery-error").inner_text() == "peer answered <i>503</i>"
    with admin.expect_navigation():
        row.locator(".retry-delivery").click()
    assert admin.locator("#work-done").inner_text().startswith(f"Dead letter {delivery_id} queued for delivery again.")
    assert admin.locator(f'#dead-letters tr[data-delivery="{delivery_id}"]').count() == 0
    with session_scope(world.settings.database_url) as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None and delivery.state == DeliveryState.PENDING and delivery.attempts == 0
    assert [actor for actor, _ in audited(world, "delivery.retry", str(delivery_id))] == ["boss"]
    # a delivery that is not a dead letter any more is refused
    answer = admin.request.post(
        f"{world.api.url}/admin/work/deliveries/{delivery_id}/retry", form={"csrf_token": csrf_of(admin.content())}
    )
    assert answer.status == 409 and "not dead letters" in answer.text()


def test_only_administrators_with_a_csrf_token_act(world: Module, tmp_path: Path) -> None:
    ds = a_study(world, tmp_path)
    failed(world, ds, "worker lost")
    uid = str(ds.StudyInstanceUID)
    rad, uploader, admin = (sign_in(world.api, name) for name in ("north_rad", "upload", "boss"))

    def post(client: httpx.Client, path: str, *, csrf: bool = True) -> httpx.Response:
        page = client.get("/worklist" if client is not uploader else "/upload")
        token = csrf_of(page.text) if csrf else ""
        return client.post(path, data={"csrf_token": token} if csrf else {})

    for client in (rad, uploader):
        answer = client.get("/admin/work")
        assert answer.status_code == 403 and "for administrators" in answer.text
        for path in (f"/admin/work/studies/{uid}/retry", f"/admin/work/studies/{uid}/reanalyze"):
            assert post(client, path).status_code == 403
    assert post(admin, f"/admin/work/studies/{uid}/retry", csrf=False).status_code == 403
    assert post(admin, "/admin/work/deliveries/1/retry", csrf=False).status_code == 403
    assert jobs_of(world, ds)[0] == "failed" and len(jobs_of(world, ds)[1]) == 1
    assert httpx.get(f"{world.api.url}/admin/work", follow_redirects=False).status_code in (302, 303, 307)
    page = admin.get("/admin/work?state=nonsense")
    assert page.status_code == 422 and "state" in page.text
    assert admin.get("/worklist").text.count('href="/admin/work"') == 1
    assert 'href="/admin/work"' not in rad.get("/worklist").text
    assert post(admin, "/admin/work/studies/1.2.3.4/retry").status_code == 404
