"""The study page with priors, in headless Chromium: current and prior side by side, the prior's report, the lines
said when there is no prior, and the prior kept to the users who may see the current study.

One ``pacs-vlm api`` process, one PostgreSQL database and one Chromium serve the module.  The studies are
stored as the listener stores them: the current MR study (four slices of pydicom's MR sample) and its prior
(four more, in a study reserved as a prior of the same site and stored with role ``prior``), recorded as the
fetcher records them (:mod:`integration.store.priors`), with a draft whose evidence cites a prior image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.samples import pydicom_test_file
from integration.store.migrate import upgrade
from integration.store.priors import finish_search, record_prior, reserve_prior_study
from integration.store.session import session_scope
from integration.store.tables import ROLE_PRIOR, PriorSearchState, PriorState, Site, Study, utcnow
from tests.conftest import TEST_REDIS_DB
from tests.support.instances import ingest
from tests.support.review_app import copy_with_new_uids, draft, evidence_of, ingest_settings, sign_in, sites_and_users
from tests.support.services import Postgres, RedisServer
from tests.web.conftest import ApiProcess
from tests.web.test_auth import PASSWORD, add_user
from tests.web.test_browser import mr_study

PRIOR_REPORT = "FINDINGS: <b>small</b> focus in the left frontal lobe.\nIMPRESSION: <script>x()</script> follow-up."
UNREACHABLE = "the PACS did not answer within 60 s"


@dataclass
class World:
    settings: Settings
    api: ApiProcess
    current: list[pydicom.Dataset]
    prior: list[pydicom.Dataset]
    no_prior_uid: str
    unavailable_uid: str


def study_id(settings: Settings, study_uid: str) -> int:
    with session_scope(settings.database_url) as session:
        return int(session.scalars(select(Study.id).where(Study.study_uid == study_uid)).one())


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = postgres.create_database()
    upgrade(url)
    tmp = tmp_path_factory.mktemp("priors-page")
    settings = ingest_settings(url, redis_server.url(TEST_REDIS_DB), tmp)
    sites_and_users(url)
    add_user(url, "south_rad", "radiologist", "SOUTH")
    earlier = utcnow() - timedelta(seconds=120)
    current = [ingest(settings, path, earlier, "MR1") for path in mr_study(tmp / "current")]
    no_prior = ingest(settings, copy_with_new_uids(pydicom_test_file("CT_small.dcm"), tmp / "ct1.dcm"), earlier)
    unavailable = ingest(settings, copy_with_new_uids(pydicom_test_file("CT_small.dcm"), tmp / "ct2.dcm"), earlier)
    now = utcnow()
    with session_scope(url) as session:
        north = int(session.scalars(select(Site.id).where(Site.code == "NORTH")).one())
    prior_files = mr_study(tmp / "prior")
    prior_uid = str(pydicom.dcmread(prior_files[0], stop_before_pixels=True).StudyInstanceUID)
    with session_scope(url) as session:
        prior_id, held = reserve_prior_study(session, prior_uid, north, "PACS", now, study_date="20030115")
    assert not held
    # Stored as the prior fetcher's intake stores them: role ``prior``, of the site the study was reserved for.
    prior = [ingest(settings, path, utcnow(), "PACS", site_id=north, role=ROLE_PRIOR) for path in prior_files]
    current_uid = str(current[0].StudyInstanceUID)
    with session_scope(url) as session:
        for uid in (current_uid, no_prior.StudyInstanceUID):
            finish_search(session, study_id(settings, str(uid)), PriorSearchState.DONE, None, now)
        record_prior(
            session, study_id(settings, current_uid), prior_uid, source="local", now=now, prior_study_id=prior_id,
            rank=1, state=PriorState.READY, study_date="20030115", modality="MR", description="MR head <i>prior</i>",
            report_text=PRIOR_REPORT, report_source="sr", series_uids=[str(prior[0].SeriesInstanceUID)], instances=4,
        )  # fmt: skip
        unavailable_id = study_id(settings, str(unavailable.StudyInstanceUID))
        finish_search(session, unavailable_id, PriorSearchState.DONE, None, now)
        record_prior(
            session, unavailable_id, "1.2.826.0.1.3680043.8.498.99", source="pacs", now=now, rank=1,
            state=PriorState.UNAVAILABLE, reason=UNREACHABLE, modality="CT", study_date="20240101",
        )  # fmt: skip
    StudyAssembler(settings).run_once()
    prior_evidence = {**evidence_of(prior[1], 1), "study_uid": prior_uid, "prior": True}
    draft(
        settings,
        current_uid,
        [{"text": "Focus unchanged since the prior.", "images": [1, 2]}],
        [prior_evidence, evidence_of(current[1], 2)],
    )
    api = ApiProcess(
        tmp / "api",
        {
            "PACSVLM_MIN_FREE_BYTES": "0",
            "PACSVLM_DATABASE_URL": url,
            "PACSVLM_BROKER_URL": settings.broker_url,
            "PACSVLM_STORAGE_DIR": str(settings.instance_root),
        },
    ).start()
    yield World(settings, api, current, prior, str(no_prior.StudyInstanceUID), str(unavailable.StudyInstanceUID))
    api.stop()


def images_loaded(page: Any) -> None:
    """Wait until every shown image has loaded (polled with evaluate: the page's CSP forbids eval)."""
    shown = "Array.from(document.images).filter(i => !i.closest('details:not([open])'))"
    for _ in range(100):
        if page.evaluate(f"{shown}.every(i => i.complete && i.naturalWidth > 0)"):
            return
        time.sleep(0.1)
    raise AssertionError("images did not load: " + repr(page.evaluate(f"{shown}.map(i => i.src)")))


def signed_in(chromium: Any, world: World) -> Any:
    page = chromium.new_context(viewport={"width": 1600, "height": 1000}).new_page()
    page.goto(world.api.url + "/login")
    page.fill("#username", "north_rad")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.press("#password", "Enter")
    return page


def test_current_and_prior_side_by_side_with_the_prior_report(chromium: Any, world: World) -> None:
    page = signed_in(chromium, world)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(world.api.url + f"/studies/{world.current[0].StudyInstanceUID}")
    current, prior = page.locator("#viewer-image"), page.locator("#prior-image-1")
    assert current.is_visible() and prior.is_visible()
    images_loaded(page)
    left, right = page.locator("#viewer").bounding_box(), page.locator("#prior-1").bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 60  # side by side
    assert current.bounding_box()["x"] + current.bounding_box()["width"] <= right["x"]
    assert str(world.prior[0].StudyInstanceUID) in (prior.get_attribute("src") or "")
    assert page.locator("#prior-1 .viewer-title").inner_text() == "Prior: MR · 2003-01-15 · MR head <i>prior</i>"

    # The prior's report is text (its markup is not markup), with where it came from.
    assert page.locator("#prior-report-1").inner_text() == PRIOR_REPORT
    assert page.locator("#prior-study-1 script, #prior-study-1 b").count() == 0
    assert "structured report (SR) in the prior study" in page.locator("#prior-study-1").inner_text()
    assert page.locator("#no-prior").count() == 0

    # The model's prior image is marked; its citation shows it in the prior view, in the current window.
    page.locator("a.cite[data-image='1']").first.click()
    assert (prior.get_attribute("data-sop"), "window=default") == (
        str(world.prior[1].SOPInstanceUID),
        (prior.get_attribute("src") or "").split("&")[-1],
    )

    # Both are volumes: scrolling one scrolls the other (by relative position), unless unlinked.
    page.locator("#viewer-image").hover()
    before = (current.get_attribute("src"), prior.get_attribute("src"))
    page.mouse.wheel(0, 120)
    after = (current.get_attribute("src"), prior.get_attribute("src"))
    assert after[0] != before[0] and after[1] != before[1]
    page.keyboard.press(".")
    page.keyboard.press(".")
    assert page.locator("#viewer-position").inner_text() == "Slice 4 of 4"
    assert page.locator("#prior-caption-1").inner_text() == "Slice 4 of 4"
    page.locator("#link-scroll").uncheck()
    page.locator("#viewer-image").hover()
    page.mouse.wheel(0, -120)
    assert page.locator("#prior-caption-1").inner_text() == "Slice 4 of 4"
    assert page.locator("#viewer-position").inner_text() == "Slice 3 of 4"
    images_loaded(page)
    assert errors == []
    page.context.close()


def test_lines_when_no_prior_was_found_or_fetched_and_other_sites(chromium: Any, world: World) -> None:
    page = signed_in(chromium, world)
    page.goto(world.api.url + f"/studies/{world.no_prior_uid}")
    assert page.locator("#no-prior").inner_text() == "No prior study found."
    assert page.locator(".prior-viewer").count() == 0 and page.locator("#viewer-image").is_visible()

    page.goto(world.api.url + f"/studies/{world.unavailable_uid}")
    assert page.locator("#prior-line-1").inner_text() == f"Prior study not available: {UNREACHABLE}"
    assert page.locator("#prior-image-1").count() == 0
    assert "No report of the prior study was found." in page.locator("#prior-study-1").inner_text()
    page.context.close()

    # Another site's radiologist sees neither the study nor the prior's images.
    south = sign_in(world.api, "south_rad")
    prior = world.prior[0]
    current_page = south.get(f"/studies/{world.current[0].StudyInstanceUID}")
    frame = south.get(f"/studies/{prior.StudyInstanceUID}/instances/{prior.SOPInstanceUID}/frames/1.png")
    assert (current_page.status_code, frame.status_code) == (404, 404)
    south.close()
