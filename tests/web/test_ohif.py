"""OHIF Viewer v3 (npm ``@ohif/app``, its prebuilt release) opens a draft's study over DICOMweb in headless Chromium.

The release is fetched once with ``npm pack`` into a cache outside the repository
(:func:`tests.support.ohif.install_ohif`); the tests skip when it cannot be fetched. OHIF is served from
its own origin and reads our ``/dicomweb`` directly: CORS allows its origin, and the viewer token from
``POST /api/viewer-token`` rides in OHIF's ``?token=`` URL parameter (OHIF sends it as a bearer token and
drops it from the address bar). The study is a generated CT series with a draft, whose documents (the TID
2000 SR and the TID 1500 Measurement Report) our DICOMweb lists beside the images.

The draft is what a model that points at regions answers (the draft schema's JSON with a ``box`` per finding,
through :func:`models.draft.parse_draft`), on a non-square CT (64 x 96), so the TID 1500 report holds TID 1410
groups with a rectangle each.

What OHIF 3.13.2 shows: the TID 2000 draft as its text tree (findings, impression) in the SR viewport; the TID
1500 report as its regions drawn on the images they were found on, each labelled with its finding's text (OHIF
reads the label from the group's Finding Site, where we put Cornerstone's free-text code; it prefixes the code
value, ``363698007: <text>``). A TID 1500 report that also holds an image-level group (a finding without a
region, no SCOORD) shows nothing in 3.13.2: its SR loader throws on such a group (``coords[0]`` is undefined
in ``_checkIfCanAddMeasurementsToDisplaySet``; and an uncoded group's TEXT Finding is read as if it were the
CODE Finding, ``ConceptCodeSequence`` undefined), so only drafts whose every finding has a region are shown.
The key-image document (KOS) is listed with OHIF's "unsupported" mark: 3.13.2 has no handler for its SOP class.
Screenshots are left in each test's ``tmp_path``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from integration.intake.assembly import StudyAssembler
from integration.reports.drafts import ensure_draft_sr
from integration.reports.sr import DRAFT_SERIES_DESCRIPTION as TID2000_DESCRIPTION
from integration.reports.sr_measurement import DRAFT_SERIES_DESCRIPTION as TID1500_DESCRIPTION
from integration.samples import write_ct_series
from integration.store.migrate import upgrade
from integration.store.tables import utcnow
from integration.web.security.csrf import csrf_token_for_session
from models.draft import parse_draft
from tests.conftest import TEST_REDIS_DB
from tests.support.instances import ingest
from tests.support.ohif import OHIF_VERSION, OhifServer, OhifUnavailable, app_config, install_ohif
from tests.support.review_app import draft, evidence_of, ingest_settings, sign_in, sites_and_users
from tests.support.services import Postgres, RedisServer
from tests.web.conftest import ApiProcess
from tests.web.test_auth import COOKIE

pytestmark = pytest.mark.slow

FINDINGS = ("Spiculated nodule in the right upper lobe.", "Atelectasis at the left base.")
#: The title of our TID 2000 document, as OHIF's text viewport heads it.
TID2000_HEADING = "Diagnostic Imaging Report"
SERIES_DESCRIPTION = "Chest 1.0 mm"  # the generated CT series (integration.samples.ct_series)
#: The region the model points at for the first finding, fractions of the square image it saw (every finding has
#: one: OHIF 3.13.2 fails on a report that also holds an image-level group, see the module docstring).
BOX = (0.3, 0.35, 0.6, 0.55)
#: What a model that points at regions answers (the draft schema's JSON).
MODEL_ANSWER = json.dumps(
    {
        "findings": [
            {"text": FINDINGS[0], "images": [1], "laterality": "right", "urgency": "urgent", "box": list(BOX)},
            {
                "text": FINDINGS[1],
                "images": [2],
                "laterality": "left",
                "urgency": "routine",
                "box": [0.1, 0.5, 0.4, 0.7],
            },
        ],
        "impression": "Right upper lobe nodule.",
        "limitations": "",
        "comparison": "",
    }
)


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    """The OHIF release's static files, fetched once into the cache; skips when npm cannot fetch it."""
    try:
        return install_ohif()
    except OhifUnavailable as error:
        pytest.skip(f"OHIF {OHIF_VERSION} could not be fetched from npm: {error}")


@dataclass
class Served:
    """OHIF pointed at our api's ``/dicomweb``, the study it should open and a viewer token for it."""

    viewer: OhifServer
    study_uid: str
    token: str

    def url(self) -> str:
        return f"{self.viewer.url}/viewer?StudyInstanceUIDs={self.study_uid}&token={self.token}"


@pytest.fixture(scope="module")
def served(
    ohif_dist: Path, postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A 4-slice CT with a draft (two findings) in our store, our api with CORS on for OHIF's origin, OHIF."""
    database_url = postgres.create_database()
    upgrade(database_url)
    folder = tmp_path_factory.mktemp("ohif")
    settings = ingest_settings(database_url, redis_server.url(TEST_REDIS_DB), folder)
    sites_and_users(database_url)
    received = utcnow() - timedelta(seconds=120)
    files = write_ct_series(folder / "ct", 4, rows=64, columns=96)
    headers = [ingest(settings, path, received, "CT1") for path in files]
    study_uid = str(headers[0].StudyInstanceUID)
    assert StudyAssembler(settings).run_once().jobs_created == 1
    findings = parse_draft(MODEL_ANSWER, 2).as_json()["findings"]  # as the worker stores a model's answer
    assert findings[0]["box"] == list(BOX)
    report_id = draft(settings, study_uid, findings, [evidence_of(headers[0], 1), evidence_of(headers[1], 2)])
    ensure_draft_sr(settings, report_id)  # the TID 2000 SR and, beside it, the TID 1500 report

    viewer = OhifServer(ohif_dist, "")  # bound now: its origin goes into the api's CORS setting
    env = {
        "PACSVLM_MIN_FREE_BYTES": "0",
        "PACSVLM_DATABASE_URL": settings.database_url,
        "PACSVLM_BROKER_URL": settings.broker_url,
        "PACSVLM_STORAGE_DIR": str(settings.instance_root),
        "PACSVLM_DICOMWEB_CORS_ORIGINS": json.dumps([viewer.url]),
    }
    api = ApiProcess(settings.data_dir, env).start()
    try:
        client = sign_in(api, "north_rad")
        csrf = csrf_token_for_session(client.cookies[COOKIE])
        answer = client.post("/api/viewer-token", headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 201, answer.text
        viewer.config = app_config(api.url + "/dicomweb").encode()
        with viewer:
            yield Served(viewer, study_uid, str(answer.json()["token"]))
    finally:
        api.stop()


def open_study(chromium: Any, served: Served) -> Any:
    """A page on OHIF's viewer route with the study loaded (its image series listed, the onboarding tour closed)."""
    page = chromium.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(served.url())
    page.get_by_text(SERIES_DESCRIPTION).first.wait_for(timeout=60_000)
    tour = page.get_by_text("Skip all")
    try:
        tour.wait_for(timeout=5_000)
        tour.click()
    except PlaywrightTimeout:  # the tour is optional (shown once per browser profile)
        pass
    return page


def test_ohif_reads_our_dicomweb_and_shows_the_tid2000_draft(chromium: Any, served: Served, tmp_path: Path) -> None:
    page = open_study(chromium, served)
    assert "token=" not in page.url  # OHIF took the token out of the address bar
    listed = page.inner_text("body")
    assert TID2000_DESCRIPTION in listed and TID1500_DESCRIPTION in listed, listed
    page.get_by_text(TID2000_DESCRIPTION, exact=True).dblclick()
    page.get_by_text(FINDINGS[0]).first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "ohif-tid2000.png"))
    text = page.inner_text("body")
    assert TID2000_HEADING in text and all(finding in text for finding in FINDINGS), text


def test_ohif_shows_the_tid1500_draft_findings(chromium: Any, served: Served, tmp_path: Path) -> None:
    page = open_study(chromium, served)
    # the annotation's label, drawn in a viewport's SVG layer
    label = page.locator("svg[id^=svg-layer] text", has_text=FINDINGS[0])
    tracking = page.get_by_text("Do you want to continue tracking measurements for this study?")
    for attempt in range(3):  # a double click while OHIF is still building the display set can be lost: again
        page.get_by_text(TID1500_DESCRIPTION, exact=True).dblclick()
        try:  # OHIF asks whether to track the report's measurements: yes (then it draws them; opening the
            # report again shows them with their labels, as the report has them)
            tracking.wait_for(timeout=5_000)
            page.get_by_role("button", name="Yes", exact=True).click()
        except PlaywrightTimeout:
            pass
        try:
            label.first.wait_for(timeout=30_000)
            break
        except PlaywrightTimeout:
            page.screenshot(path=str(tmp_path / f"ohif-tid1500-attempt-{attempt}.png"))
    else:
        pytest.fail(f"OHIF drew no labelled region; screenshots in {tmp_path}")
    page.screenshot(path=str(tmp_path / "ohif-tid1500.png"))
    assert FINDINGS[0] in page.inner_text("body")
    drawn = page.locator("svg[id^=svg-layer] polyline").first.get_attribute("points") or ""
    corners = [tuple(float(v) for v in point.split(",")) for point in drawn.replace(", ", ",").split()]
    assert len(corners) == 5 and corners[0] == corners[-1], drawn  # the closed rectangle, in screen pixels
    (left, top), (right, _), (_, bottom) = corners[0], corners[1], corners[2]
    assert right > left and bottom > top
    # its shape on screen is the frame's: 28.8 x 19.2 pixels of the 96 x 64 frame (the box on the model's square)
    assert (right - left) / (bottom - top) == pytest.approx(28.8 / 19.2, rel=0.02)
