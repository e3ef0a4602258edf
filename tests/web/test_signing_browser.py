"""Signing is the safety boundary, tried in headless Chromium as a radiologist (and an administrator) would.

One ``pacs-vlm api`` process, one PostgreSQL database and one Chromium serve the whole module; each test
adds its own study (real DICOM files through the listener's intake, completed by the assembly pass) and
drafts recorded as the worker records them, and signs in with a fresh browser context.  Each test does what
a person would try: press Sign at once, sign a second opinion, sign as an administrator, type and then
press another button, leave with unsaved text, look for the clinical question, the stated side and the
patient, see a low confidence score, and dismiss a consistency check with one key before signing.  The
server's answers are checked too (a script sending the request the page would not offer).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.intake.intake import intake_for
from integration.intake.outcome import UPLOAD_AE, Origin
from integration.intake.photo import PhotoDetails, photo_to_dicom
from integration.samples import pydicom_test_file
from integration.store.opinions import request_second_opinion
from integration.store.reports import DraftRecord, record_draft
from integration.store.reviews import working_copy
from integration.store.session import session_scope
from integration.store.tables import Report, ReportStatus, Site, Study, utcnow
from tests.support.instances import ingest
from tests.support.review_app import copy_with_new_uids, evidence_of, job_of, review_world, signed_in_page
from tests.support.services import Postgres, RedisServer
from tests.web.conftest import ApiProcess

#: A Redis database of its own (the module's api and assembler share it; other tests flush theirs).
REDIS_DB = 13
QUESTION = "Headache for 3 weeks <b>rule out</b> mass"


@dataclass
class Module:
    settings: Settings
    api: ApiProcess


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    review = review_world(postgres, redis_server, tmp_path_factory.mktemp("signing"), REDIS_DB)
    yield Module(review.settings, review.start_api())
    review.close()


def signed_in(chromium: Any, world: Module, username: str) -> Any:
    """A fresh browser context signed in with the form; returns its page (on the worklist)."""
    page = signed_in_page(chromium, world.api, username)
    assert page.url.endswith("/worklist"), page.url
    return page


def mr_study(world: Module, tmp: Path, **attributes: Any) -> pydicom.Dataset:
    """One MR instance of a new NORTH study, stored as the listener does and completed."""
    path = copy_with_new_uids(
        pydicom_test_file("MR_small.dcm"),
        tmp / f"{len(list(tmp.glob('*.dcm')))}.dcm",
        PatientName="Sample^Mr",
        PatientID="MR-0001",
        **attributes,
    )
    ds = ingest(world.settings, path, utcnow() - timedelta(seconds=120), "MR1")
    assert StudyAssembler(world.settings).run_once().jobs_created == 1
    return ds


def record(world: Module, job_id: int, findings: list[str], *, model: str = "tiny/llava-test", **extra: Any) -> int:
    """Record a job's draft as the worker does."""
    document = {
        "findings": [{"text": text, "images": [1]} for text in findings],
        "impression": extra.pop("impression", "Model impression."),
        "limitations": "",
        "structured": extra.get("structured", True),
        "problems": extra.pop("problems", []),
        "prior_note": extra.pop("prior_note", ""),
    }
    draft = DraftRecord(
        model_id=model,
        model_revision="rev1",
        model_family="llava",
        prompt_version="mr/v1",
        structured=extra.pop("structured", True),
        findings=document,
        text="draft text",
        raw_output="{}",
        evidence=extra.pop("evidence"),
        timings={"total": 1.0},
        tokens_in=10,
        tokens_out=20,
    )
    with session_scope(world.settings.database_url) as session:
        return record_draft(session, job_id, draft, utcnow())


def primary_draft(world: Module, ds: pydicom.Dataset, findings: list[str], **extra: Any) -> int:
    return record(
        world, job_of(world.settings, str(ds.StudyInstanceUID)), findings, evidence=[evidence_of(ds, 1)], **extra
    )


def second_opinion(world: Module, ds: pydicom.Dataset, findings: list[str]) -> int:
    with session_scope(world.settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == str(ds.StudyInstanceUID))).one()
        job_id = request_second_opinion(
            session, study, model_name="second", prompt_name=None, stat=False, requested_by="north_rad", queue="q"
        )
    return record(world, job_id, findings, model="tiny/second-opinion", evidence=[evidence_of(ds, 1)])


def statuses(world: Module, ds: pydicom.Dataset) -> dict[int, str]:
    with session_scope(world.settings.database_url) as session:
        rows = session.execute(
            select(Report.id, Report.status)
            .join(Study, Report.study_id == Study.id)
            .where(Study.study_uid == str(ds.StudyInstanceUID))
        ).all()
    return {int(report_id): status.value for report_id, status in rows}


def api_post(page: Any, path: str, body: dict[str, Any]) -> tuple[int, str]:
    """What a script on the page could send: the JSON API with the page's CSRF token."""
    answer: dict[str, Any] = page.evaluate(
        """async ([path, body]) => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json",
                                          "X-CSRF-Token": token}, body: JSON.stringify(body)});
            return {status: r.status, text: await r.text()};
        }""",
        [path, body],
    )
    return int(answer["status"]), str(answer["text"])


def test_a_second_opinion_is_material_for_the_one_report_of_record(
    world: Module, chromium: Any, tmp_path: Path
) -> None:
    ds = mr_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    primary = primary_draft(world, ds, ["Small focus in the left frontal lobe."])
    opinion = second_opinion(world, ds, ["Second reader: no acute infarct."])
    page = signed_in(chromium, world, "north_rad")

    # Opening the study shows the report of record, not the newer second opinion.
    page.goto(f"{world.api.url}/studies/{uid}")
    assert page.locator("#review-form").get_attribute("action") == f"/studies/{uid}/reports/{primary}/review"

    # The second opinion offers no Sign button: it says what it is and copies its finding across.
    page.goto(f"{world.api.url}/studies/{uid}?report={opinion}")
    assert page.locator("#sign-button").count() == 0
    assert (
        "Second opinion: material for the study's report of record"
        in page.locator("#second-opinion-notice").inner_text()
    )
    with page.expect_navigation():
        page.get_by_role("button", name=f"Copy to report #{primary}").click()
    assert page.locator(".notice").inner_text() == "Finding added."
    assert page.locator("#finding-1 .finding-text").inner_text() == "Second reader: no acute infarct."

    # A script asking the server anyway is refused with the reason, by the API and by the page's route.
    code, text = api_post(page, f"/api/reports/{opinion}/sign", {"confirm_unreviewed": 1})
    assert code == 409 and "is a second opinion" in text and f"report {primary}" in text
    refused = page.evaluate(
        """async (path) => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const body = new URLSearchParams({csrf_token: token, expected_seq: "0", confirm_unreviewed: "1"});
            const r = await fetch(path, {method: "POST", body});
            return [r.status, await r.text()];
        }""",
        f"/studies/{uid}/reports/{opinion}/sign",
    )
    assert refused[0] == 409 and "is a second opinion" in refused[1]

    # The report of record is signed once; signing it again is an amendment, never a second final.
    page.goto(f"{world.api.url}/studies/{uid}?report={primary}")
    with page.expect_navigation():
        page.locator("#finding-0 button[data-action='accept']").click()
    with page.expect_navigation():
        page.locator("#sign-button").click()
    assert page.locator(".notice").inner_text() == "Report signed."
    assert statuses(world, ds) == {primary: "signed", opinion: "draft"}


def test_two_clicks_do_not_sign_unreviewed_ai_text(world: Module, chromium: Any, tmp_path: Path) -> None:
    ds = mr_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    report_id = primary_draft(world, ds, ["Finding one.", "Finding two.", "Finding three."])
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/studies/{uid}")

    # Open and press Sign: refused, and the page says how many findings nobody reviewed.
    with page.expect_navigation():
        page.locator("#sign-button").click()
    assert "3 findings were not reviewed" in page.locator(".error").inner_text()
    assert statuses(world, ds) == {report_id: "draft"}

    # Back on the page the confirmation names the count; ticking it is the one explicit attestation.
    page.goto(f"{world.api.url}/studies/{uid}")
    with page.expect_navigation():
        page.locator("#finding-0 button[data-action='reject']").click()
    label = page.locator("label[for='confirm-unreviewed']").inner_text()
    assert "the 2 findings I did not accept, edit or reject" in label
    page.locator("#confirm-unreviewed").check()
    with page.expect_navigation():
        page.locator("#sign-button").click()
    assert page.locator(".notice").inner_text() == "Report signed."
    assert statuses(world, ds) == {report_id: "signed"}


def test_an_unparsed_model_output_is_signed_only_after_an_edit(world: Module, chromium: Any, tmp_path: Path) -> None:
    ds = mr_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    report_id = primary_draft(
        world,
        ds,
        ["free text the model wrote"],
        structured=False,
        impression="",
        problems=["model output not structured"],
    )
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/studies/{uid}")
    assert "model output not structured" in page.locator("#report").inner_text()
    with page.expect_navigation():
        page.locator("#finding-0 button[data-action='accept']").click()
    with page.expect_navigation():
        page.locator("#sign-button").click()
    assert "could not be parsed" in page.locator(".error").inner_text()
    assert statuses(world, ds) == {report_id: "draft"}

    page.goto(f"{world.api.url}/studies/{uid}")
    page.fill("#impression-text", "Normal MR of the head.")
    with page.expect_navigation():
        page.locator("#sign-button").click()  # the typed impression is saved, then signed
    assert page.locator(".notice").inner_text() == "Report signed."
    assert "Normal MR of the head." in page.locator("#revision-2").inner_text()


def test_an_administrator_does_not_sign(world: Module, chromium: Any, tmp_path: Path) -> None:
    ds = mr_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    report_id = primary_draft(world, ds, ["Finding one."])
    page = signed_in(chromium, world, "boss")
    page.goto(f"{world.api.url}/studies/{uid}")
    assert page.locator("#sign-button").count() == 0
    assert "Only radiologists sign reports" in page.locator("#not-a-signer").inner_text()
    code, text = api_post(page, f"/api/reports/{report_id}/sign", {"confirm_unreviewed": 1})
    assert code == 403 and "only radiologists sign reports" in text
    assert statuses(world, ds) == {report_id: "draft"}


def test_typed_text_survives_other_buttons_and_leaving_warns(world: Module, chromium: Any, tmp_path: Path) -> None:
    ds = mr_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    note = "No prior study available."
    report_id = primary_draft(world, ds, ["Finding one.", "Finding two."], prior_note=note)
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/studies/{uid}")
    assert page.locator("#prior-note").inner_text() == note

    # Type the impression and the comparison, then accept finding 1 before saving them: both are kept.
    page.fill("#impression-text", "Typed impression, not yet saved.")
    page.fill("#comparison-text", "None available.")
    page.locator("#finding-1 summary").click()
    page.fill("#text-1", "Finding two, in my words.")
    with page.expect_navigation():
        page.locator("#finding-0 button[data-action='accept']").click()
    assert page.locator("#impression-text").input_value() == "Typed impression, not yet saved."
    assert page.locator("#comparison-text").input_value() == "None available."
    assert page.locator("#finding-1 .finding-text").inner_text() == "Finding two, in my words."
    with session_scope(world.settings.database_url) as session:
        copy = working_copy(session, report_id)
    assert copy.impression == "Typed impression, not yet saved." and copy.comparison == "None available."
    assert [f.decision for f in copy.findings] == ["accepted", "edited"]

    # Leaving with unsaved text asks first; staying keeps the text.
    page.fill("#limitations-text", "Motion artefact.")
    dialogs: list[str] = []

    def stay(dialog: Any) -> None:
        dialogs.append(dialog.type)
        dialog.dismiss()

    page.on("dialog", stay)
    page.get_by_role("link", name="Back to worklist").click()
    page.wait_for_timeout(500)
    assert dialogs == ["beforeunload"]
    assert f"/studies/{uid}" in page.url and page.locator("#limitations-text").input_value() == "Motion artefact."


def test_the_request_and_the_patient_are_on_the_pages(world: Module, chromium: Any, tmp_path: Path) -> None:
    with session_scope(world.settings.database_url) as session:
        north = session.scalar(select(Site.id).where(Site.code == "NORTH"))
    details = PhotoDetails("PH-7", "Photo^Patty", "19800101", "F", "HAND", QUESTION, "Hand photo", "L")
    photo = photo_to_dicom(np.full((32, 32, 3), 128, dtype=np.uint8), details)
    origin = Origin(calling_ae=UPLOAD_AE, source="upload", site_id=north, stable_seconds=0.0)
    assert intake_for(world.settings).store_part10(photo.part10, origin).succeeded
    assert StudyAssembler(world.settings).run_once().jobs_created == 1
    ds = pydicom.dcmread(io.BytesIO(photo.part10))
    primary = primary_draft(world, ds, ["Swelling of the left hand."])
    opinion = second_opinion(world, ds, ["Soft tissue swelling."])
    page = signed_in(chromium, world, "north_rad")

    page.goto(f"{world.api.url}/studies/{ds.StudyInstanceUID}")
    assert page.locator("#clinical-question").inner_text() == f"Clinical question: {QUESTION}"  # as text
    assert page.locator("#stated-side").inner_text() == "Side stated by the uploader: left"
    assert page.locator("#clinical-question b").count() == 0

    page.goto(f"{world.api.url}/studies/{ds.StudyInstanceUID}/compare?a={primary}&b={opinion}")
    patient = page.locator("#patient").inner_text()
    assert "Photo, Patty" in patient and "PH-7" in patient
    assert statuses(world, ds) == {primary: ReportStatus.DRAFT.value, opinion: "draft"}


def test_low_confidence_shows_and_a_check_is_dismissed_with_one_key_before_signing(
    world: Module, chromium: Any, tmp_path: Path
) -> None:
    ds = mr_study(world, tmp_path)
    uid = str(ds.StudyInstanceUID)
    report_id = primary_draft(world, ds, ["Opacity in the right lower lobe.", "No effusion."])
    with session_scope(world.settings.database_url) as session:  # the safety net's fields, as the worker stores them
        report = session.get(Report, report_id)
        assert report is not None
        scored = [{**f, "confidence": s} for f, s in zip(report.findings["findings"], (0.23, 0.91), strict=True)]
        check = {"finding": 1, "kind": "laterality", "message": "The finding says right; the image header says left."}
        report.findings = {**report.findings, "findings": scored, "checks": [check], "decoding": "grammar"}
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/studies/{uid}")

    # The low score is shown, in words and marked apart from a high one; what it means is said.
    low, high = page.locator("#finding-0 .confidence"), page.locator("#finding-1 .confidence")
    assert low.is_visible() and low.inner_text() == "low confidence · 0.23"
    assert "confidence-low" in (low.get_attribute("class") or "") and high.inner_text() == "high confidence · 0.91"
    background = "(element) => getComputedStyle(element).backgroundColor"
    assert low.evaluate(background) != high.evaluate(background)
    assert "not the probability that the finding is right" in (low.get_attribute("title") or "")
    assert "not the probability" in page.locator("#confidence-note").inner_text()

    # Signing (the findings confirmed as written) is refused while the check is open, and the page says which.
    page.locator("#confirm-unreviewed").check()
    with page.expect_navigation():
        page.locator("#sign-button").click()
    assert "1 consistency check is open (laterality)" in page.locator(".error").inner_text()
    assert statuses(world, ds) == {report_id: "draft"}

    # One keystroke (the number on its Dismiss button) dismisses it; then the report signs.
    page.goto(f"{world.api.url}/studies/{uid}")
    assert page.locator("#check-1-laterality button.dismiss kbd").inner_text() == "1"
    with page.expect_navigation():
        page.keyboard.press("1")
    assert page.locator(".notice").inner_text() == "Check dismissed."
    assert "check-dismissed" in (page.locator("#check-1-laterality").get_attribute("class") or "")
    page.locator("#confirm-unreviewed").check()
    with page.expect_navigation():
        page.locator("#sign-button").click()
    assert page.locator(".notice").inner_text() == "Report signed."
    assert statuses(world, ds) == {report_id: "signed"}
