"""End to end in a real browser: headless Debian Chromium drives the review pages of a real ``pacs-vlm api``.

The study is four real MR files from pydicom's bundled data (one image in four encodings: explicit and
implicit little endian, big endian, RLE) stored in the instance store and completed by the assembly pass;
the draft is recorded with :func:`integration.store.reports.record_draft` and its findings carry script and
HTML, which must show as text and never run.  The radiologist signs in with the form, opens the study from
the worklist with the keyboard, edits a finding with the keyboard, rejects one, accepts one, adds one and
signs; the database then holds the signed revision, its review outcome and its verified SR.

Set ``PACSVLM_TEST_UPDATE_SCREENSHOT=1`` to refresh ``docs/review-study-view.png`` from this run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from integration.intake.assembly import StudyAssembler
from integration.reports.sr import read_sr
from integration.samples import pydicom_test_file
from integration.store.session import session_scope
from integration.store.tables import (
    AuditEvent,
    Report,
    ReportRevision,
    ReportStatus,
    ReviewOutcome,
    RevisionStatus,
    Study,
    utcnow,
)
from tests.support.instances import ingest
from tests.support.review_app import api_for, draft, evidence_of, ingest_settings, sites_and_users, wait_until_true
from tests.web.conftest import CHROMIUM, ApiProcess
from tests.web.test_auth import PASSWORD

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "review-study-view.png"
MR_ENCODINGS = ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm")
SCRIPT = "<script>window.__pwned = true</script>"
INJECTED = '<img src=x onerror="window.__pwned = true" id="injected">'
EDITED = "Small T2-hyperintense focus in the left frontal white matter, likely nonspecific."
ADDED = "No midline shift."


def save_for_docs(shot: Path, target: Path) -> None:
    """Keep the screenshot small for the repository: 256 colours, no dithering (the page is flat colour)."""
    with Image.open(shot) as image:
        flat = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    target.parent.mkdir(exist_ok=True)
    flat.save(target, optimize=True)


def mr_study(directory: Path) -> list[Path]:
    """Write the MR files as one study: shared new study and series UIDs, fresh SOP UIDs, numbered 1-4."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number, name in enumerate(MR_ENCODINGS, start=1):
        ds = pydicom.dcmread(pydicom_test_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        ds.PatientName, ds.PatientID = "Sample^Mr", "MR-0001"
        ds.StudyDescription, ds.AccessionNumber = "MR head (pydicom sample)", "ACC-MR-1"
        path = directory / f"mr{number}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        paths.append(path)
    return paths


def test_review_in_a_browser(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    settings = ingest_settings(migrated_postgres_url, redis_url, tmp_path)
    sites_and_users(migrated_postgres_url)
    now = utcnow()
    mr = [ingest(settings, path, now - timedelta(seconds=120), "MR1") for path in mr_study(tmp_path / "mr")]
    ct = ingest(settings, pydicom_test_file("CT_small.dcm"), now - timedelta(seconds=60), "CT1")
    assert StudyAssembler(settings).run_once().jobs_created == 2
    mr_uid, ct_uid = str(mr[0].StudyInstanceUID), str(ct.StudyInstanceUID)
    with session_scope(settings.database_url) as session:
        session.execute(update(Study).where(Study.study_uid == ct_uid).values(priority="stat"))
    report_id = draft(
        settings,
        mr_uid,
        [
            {"text": f"{SCRIPT}Hyperintense focus {INJECTED} in the white matter.", "images": [1]},
            {"text": "Enlarged ventricles <b>suspected</b>.", "images": [2]},
            {"text": "No mass effect.", "images": [2, 3]},
        ],
        [evidence_of(mr[0], 1), evidence_of(mr[2], 2), evidence_of(mr[3], 3)],
    )
    api = api_for(start_api, settings)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        script_errors: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        csp_reports: list[str] = []
        page.on(
            "console", lambda message: csp_reports.append(message.text) if "Content Security" in message.text else None
        )

        # Sign in with the form; the worklist comes back, stat first.
        page.goto(api.url + "/worklist")
        assert "/login" in page.url
        page.fill("#username", "north_rad")
        page.fill("#password", PASSWORD)
        with page.expect_navigation():
            page.press("#password", "Enter")
        assert page.url.endswith("/worklist")
        links = page.locator("a.open-study")
        assert links.count() == 2
        assert links.nth(0).get_attribute("href") == f"/studies/{ct_uid}"
        assert links.nth(1).inner_text() == "Sample, Mr"

        # Open the MR study with the keyboard: j, j, Enter.
        page.keyboard.press("j")
        page.keyboard.press("j")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.url.endswith(f"/studies/{mr_uid}")
        first = page.locator("#finding-0 .finding-text")
        assert SCRIPT in first.inner_text() and INJECTED in first.inner_text()  # shown as text
        assert page.locator("#injected").count() == 0 and page.locator("main script").count() == 0
        assert page.evaluate("window.__pwned") is None

        # Images: those shown load; ] moves the viewer to the next image the model saw; a citation shows image 2.
        wait_until_true(page, "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        viewer = page.locator("#viewer-image")
        before = viewer.get_attribute("src")
        page.keyboard.press("]")
        assert viewer.get_attribute("src") != before
        page.locator("#finding-1 a.cite[data-image='2']").click()
        assert page.locator("a.thumb.highlight").count() >= 1
        assert "model image 2" in page.locator("#viewer-caption").inner_text()

        # Edit finding 1 with the keyboard only: it is current from the start (a study opened to read puts the
        # focus on its first finding), e (edit), replace the text, Ctrl+Enter (save).
        page.keyboard.press("e")
        assert page.evaluate("document.activeElement.id") == "text-0"
        page.keyboard.press("Control+A")
        page.keyboard.type(EDITED)
        with page.expect_navigation():
            page.keyboard.press("Control+Enter")
        assert "done=edit" in page.url and page.locator(".notice").inner_text() == "Finding edited."
        assert page.locator("#finding-0 .badge.decision").inner_text().lower() == "edited"

        # Reject finding 2 with the keyboard (the page came back on finding 1: j then r).
        page.keyboard.press("j")
        with page.expect_navigation():
            page.keyboard.press("r")
        assert page.locator("#finding-1 .badge.decision").inner_text().lower() == "rejected"

        # Accept finding 3 with the mouse; add one with n ... Ctrl+Enter.
        with page.expect_navigation():
            page.locator("#finding-2 button[data-action='accept']").click()
        assert page.locator("#finding-2 .badge.decision").inner_text().lower() == "accepted"
        page.keyboard.press("n")
        page.keyboard.type(ADDED)
        with page.expect_navigation():
            page.keyboard.press("Control+Enter")
        assert page.locator("#finding-3 .finding-text").inner_text() == ADDED

        # The help overlay opens with ? and closes with Escape.
        page.keyboard.press("?")
        assert page.locator("#help").is_visible()
        page.keyboard.press("Escape")
        assert page.locator("#help").is_hidden()

        for _ in range(3):
            page.keyboard.press("k")  # back to finding 1, whose model text (script and all) is opened as text
        page.locator("#finding-0 details.draft-text summary").click()
        assert SCRIPT in page.locator("#finding-0 details.draft-text p").inner_text()
        shot = tmp_path / "review-study-view.png"
        page.screenshot(path=str(shot))
        if os.environ.get("PACSVLM_TEST_UPDATE_SCREENSHOT") == "1":
            save_for_docs(shot, SCREENSHOT)

        # Sign; the signed version is shown read-only with its SR.
        with page.expect_navigation():
            page.locator("#sign-button").click()
        assert page.locator(".notice").inner_text() == "Report signed."
        assert page.locator("#revision-2 h3").inner_text() == "Version 2: signed"
        assert "Verified SR written" in page.locator("#revision-2").inner_text()
        signed_text = page.locator("#revision-2 .signed-findings").inner_text()
        assert EDITED in signed_text and ADDED in signed_text and "ventricles" not in signed_text
        assert page.locator("#sign-button").count() == 0
        assert page.evaluate("window.__pwned") is None
        browser.close()

    assert script_errors == [] and csp_reports == []
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        assert report is not None and report.status is ReportStatus.SIGNED
        revision = session.scalars(select(ReportRevision).where(ReportRevision.report_id == report_id)).one()
        assert (revision.version, revision.status) == (2, RevisionStatus.SIGNED)
        assert [f["text"] for f in revision.findings["findings"]] == [EDITED, "No mass effect.", ADDED]
        outcome = session.scalars(select(ReviewOutcome).where(ReviewOutcome.report_id == report_id)).one()
        assert (outcome.outcome, outcome.draft_findings) == ("signed", 3)
        assert (outcome.accepted, outcome.edited, outcome.rejected, outcome.added) == (1, 1, 1, 1)
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "north_rad")).all()
    assert actions.count("review.change") == 4 and actions.count("report.sign") == 1
    assert actions.count("study.view") >= 5 and "auth.login" in actions
    assert revision.sr_path is not None
    sr = read_sr(pydicom.dcmread(api.data_dir / revision.sr_path))
    assert (sr.verification_flag, sr.completion_flag, sr.study_instance_uid) == ("VERIFIED", "COMPLETE", mr_uid)
    assert [finding.text for finding in sr.findings] == [EDITED, "No mass effect.", ADDED]
    assert sr.verifying_observers and sr.verifying_observers[0].organization == "North Hospital"
