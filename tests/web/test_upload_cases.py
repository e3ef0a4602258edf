"""Telemedicine cases as an uploader lives them, in headless Chromium against a real api and PostgreSQL.

One ``pacs-vlm api`` process, one database and one Chromium serve the module.  An uploader opens a case of two
photos with ordinary name fields and a 500-character question, sees the confirmation, finds the case in My
uploads, adds a photo later (one study, three instances), starts a new case for the same patient from a
prefilled form, and follows the case through ``drafted`` (no draft text shown) to ``signed`` (the signed text
shown) after a radiologist signs through the review actions.  The written DICOM is read back with pydicom and
checked with dciodvfy.  Authorization is tried like the sites: another uploader's case (same site) and another
site's case answer 404 like a missing one, administrators see all, radiologists and anonymous users are
refused, every form post needs the CSRF token.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.web.security.csrf import csrf_token_for_session
from tests.support.records import db_rows
from tests.support.review_app import draft, evidence_of, review_world, signed_in_page
from tests.support.services import Postgres, RedisServer
from tests.web.conftest import ApiProcess
from tests.web.test_auth import COOKIE, PASSWORD, add_user

#: A Redis database of its own (the module's api and assembler share it).
REDIS_DB = 4
DCIODVFY = "/usr/bin/dciodvfy"
MAX_PHOTOS = 4
QUESTION = (
    "Spreading redness around a cat bite on the left forearm for three days <img src=x onerror=window.__pwned=1>, "
    + "fever 38.4, on amoxicillin since yesterday; please assess for abscess or lymphangitis. " * 5
)[:500]


@dataclass
class Module:
    settings: Settings
    api: ApiProcess


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    review = review_world(postgres, redis_server, tmp_path_factory.mktemp("cases"), REDIS_DB)
    url = review.settings.database_url  # north_rad, boss (admin), upload (uploader, NORTH)
    add_user(url, "upload2", "uploader", "NORTH")
    add_user(url, "south_up", "uploader", "SOUTH")
    yield Module(review.settings, review.start_api(PACSVLM_UPLOAD_CASE_MAX_PHOTOS=str(MAX_PHOTOS)))
    review.close()


def photo(tmp: Path, name: str, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path = tmp / name
    Image.fromarray(pixels).save(path, "PNG")
    return path


def client(world: Module, username: str) -> httpx.Client:
    """A signed-in API client with the CSRF header."""
    answer = httpx.post(world.api.url + "/api/login", json={"username": username, "password": PASSWORD}, timeout=10)
    assert answer.status_code == 200, answer.text
    token = answer.cookies[COOKIE]
    return httpx.Client(
        base_url=world.api.url,
        cookies={COOKIE: token},
        headers={"X-CSRF-Token": csrf_token_for_session(token)},
        timeout=60,
    )


def browser_as(chromium: Any, world: Module, username: str) -> Any:
    return signed_in_page(chromium, world.api, username, width=1300)


def instances_of(world: Module, study_uid: str) -> list[pydicom.Dataset]:
    files = sorted(world.settings.instance_root.rglob("*.dcm"))
    found = [pydicom.dcmread(path) for path in files if ".incoming" not in path.parts]
    return sorted((ds for ds in found if ds.StudyInstanceUID == study_uid), key=lambda ds: int(ds.InstanceNumber))


def test_an_uploader_follows_a_case_from_upload_to_signed_report(chromium: Any, world: Module, tmp_path: Path) -> None:
    url = world.settings.database_url
    first, second, third = (photo(tmp_path, f"p{i}.png", i) for i in (1, 2, 3))
    page = browser_as(chromium, world, "upload")
    assert page.url.endswith("/upload"), page.url
    assert page.locator("nav a[href='/uploads']").inner_text() == "My uploads"
    page.set_input_files("#file", [str(first), str(second)])
    page.fill("#patient_id", "TELE-77")
    page.fill("#family_name", "Rossi")
    page.fill("#given_name", "Maria")
    page.fill("#middle_name", "Anna")
    page.fill("#birth_date", "1975-06-30")
    page.select_option("#sex", "F")
    page.fill("#body_part", "ARM")
    page.select_option("#laterality", "L")
    page.fill("#clinical_question", QUESTION)
    page.check("#recognizable_no")
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#done-name")
    assert page.inner_text("#done-name") == "Rossi, Maria Anna"
    assert (page.inner_text("#done-id"), page.inner_text("#done-birth"), page.inner_text("#done-sex")) == (
        "TELE-77",
        "1975-06-30",
        "female",
    )
    assert page.inner_text("#done-photos") == "2" and page.text_content("#done-status") == "received"
    [(study_uid, case_id)] = db_rows(
        url, "SELECT s.study_uid, c.id FROM studies s JOIN upload_cases c ON c.study_id = s.id"
    )
    assert study_uid not in page.inner_text("main")  # never a raw UID as the message

    page.click("nav a[href='/uploads']")
    row = page.locator(f"tr[data-case='{case_id}']")
    assert "Rossi, Maria" in row.inner_text() and row.locator(".case-status").text_content() == "received"
    row.locator("a.open-case").click()
    page.wait_for_url(f"**/uploads/{case_id}")
    assert page.inner_text("#case-question") == QUESTION.strip()  # whole, and shown as text
    assert page.evaluate("window.__pwned === undefined")

    page.set_input_files("#add-file", str(third))
    page.click("#add-photos button[type=submit]")
    page.wait_for_url(f"**/uploads/{case_id}?added=1")
    assert page.locator("#case-photos img").count() == 3
    page.wait_for_load_state("networkidle")
    source = page.locator("#case-photos img").first.get_attribute("src")
    assert page.request.get(world.api.url + str(source)).status == 200
    widths = page.locator("#case-photos img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    assert widths == [60, 60, 60]  # the thumbnails, served through the owner's route
    datasets = instances_of(world, study_uid)
    assert [int(ds.InstanceNumber) for ds in datasets] == [1, 2, 3]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 2  # a series per upload batch
    assert [int(ds.SeriesNumber) for ds in datasets] == [1, 1, 2]
    assert {(str(ds.PatientName), ds.PatientID, ds.StudyDate, ds.StudyTime) for ds in datasets} == {
        (str(datasets[0].PatientName), "TELE-77", datasets[0].StudyDate, datasets[0].StudyTime)
    }
    for ds in datasets:
        assert str(ds.PatientName) == "Rossi^Maria^Anna" and ds.ReasonForVisit == QUESTION.strip()
        assert ds.RequestAttributesSequence[0].ReasonForTheRequestedProcedure == QUESTION[:64].strip()
    for path in world.settings.instance_root.rglob("*.dcm"):
        checked = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], checked.stdout + checked.stderr

    page.click("#new-case-for-patient")
    page.wait_for_url(f"**/upload?from={case_id}")
    prefilled = {name: page.input_value(f"#{name}") for name in ("family_name", "given_name", "middle_name")}
    assert prefilled == {"family_name": "Rossi", "given_name": "Maria", "middle_name": "Anna"}
    assert (page.input_value("#patient_id"), page.input_value("#birth_date"), page.input_value("#sex")) == (
        "TELE-77",
        "1975-06-30",
        "F",
    )

    assert StudyAssembler(world.settings).run_once().jobs_created == 1
    draft(
        world.settings,
        study_uid,
        [{"text": "Cellulitis without abscess.", "images": [1]}],
        [evidence_of(datasets[0], 1)],
    )
    page.goto(world.api.url + f"/uploads/{case_id}")
    assert page.text_content("#case-status") == "drafted"
    assert "Cellulitis" not in page.content() and "Impression" not in page.inner_text("main")

    radiologist = client(world, "north_rad")
    study_page = radiologist.get(f"/studies/{study_uid}")
    assert study_page.status_code == 200 and QUESTION.strip().replace("<", "&lt;").replace(">", "&gt;")[:200] in (
        study_page.text
    )
    [(report_id,)] = db_rows(url, "SELECT r.id FROM reports r JOIN studies s ON r.study_id = s.id")
    accepted = radiologist.post(f"/api/reports/{report_id}/changes", json={"action": "accept", "finding": 0})
    assert accepted.status_code == 200, accepted.text
    signed = radiologist.post(f"/api/reports/{report_id}/sign", json={"expected_seq": accepted.json()["seq"]})
    assert signed.status_code == 200, signed.text
    page.reload()
    assert page.text_content("#case-status") == "signed"
    report = page.inner_text(".case-report")
    assert "Cellulitis without abscess." in report and "Impression" in report
    listed = client(world, "upload").get("/api/uploads").json()["cases"]
    assert [(c["case_id"], c["status"], c["photos"]) for c in listed] == [(case_id, "signed", 3)]
    detail = client(world, "upload").get(f"/api/uploads/{case_id}").json()
    assert detail["clinical_question"] == QUESTION.strip() and detail["signed"][0]["findings"] == [
        "Cellulitis without abscess."
    ]
    page.context.close()


def test_only_the_owner_and_administrators_reach_a_case(world: Module, tmp_path: Path) -> None:
    owner, other, south = client(world, "upload"), client(world, "upload2"), client(world, "south_up")
    data = photo(tmp_path, "a.png", 9).read_bytes()
    form = {
        "patient_id": "AUTH-1",
        "patient_name": "Bianchi^Luca",  # the JSON API's older field still works
        "birth_date": "19800101",
        "sex": "M",
        "body_part": "HAND",
        "clinical_question": "Wart or something else?",
    }
    created = owner.post("/api/uploads/photo", data=form, files=[("file", ("a.png", data, "image/png"))] * 3)
    assert created.status_code == 201, created.text
    case_id, sop = created.json()["case_id"], created.json()["sop_instance_uid"]
    assert len(created.json()["sop_instance_uids"]) == 3
    too_many = owner.post(f"/api/uploads/{case_id}/photos", files=[("file", ("b.png", data, "image/png"))] * 2)
    assert too_many.status_code == 422 and f"at most {MAX_PHOTOS}" in too_many.text
    assert db_rows(world.settings.database_url, f"SELECT count(*) FROM upload_cases WHERE id = {case_id}") == [(1,)]

    gets = (
        f"/uploads/{case_id}",
        f"/api/uploads/{case_id}",
        f"/uploads/{case_id}/photos/{sop}",
        f"/upload?from={case_id}",
    )
    for stranger in (other, south):
        for path in gets:
            assert stranger.get(path).status_code == 404, path
        for path in (f"/uploads/{case_id}/photos", f"/api/uploads/{case_id}/photos"):
            assert stranger.post(path, files={"file": ("c.png", data, "image/png")}).status_code == 404
        assert case_id not in [c["case_id"] for c in stranger.get("/api/uploads").json()["cases"]]
    missing = owner.get("/api/uploads/999999")
    assert missing.status_code == 404 and missing.json() == other.get(f"/api/uploads/{case_id}").json()
    for path in gets:
        assert owner.get(path).status_code == 200, path
    admin = client(world, "boss")
    for path in (*gets, "/uploads"):
        assert admin.get(path).status_code == 200, path
    assert case_id in [c["case_id"] for c in admin.get("/api/uploads").json()["cases"]]

    radiologist = client(world, "north_rad")
    for path in (*gets, "/uploads", "/api/uploads"):
        assert radiologist.get(path).status_code == 403, path
    anonymous = httpx.Client(base_url=world.api.url, timeout=10)
    assert anonymous.get("/api/uploads").status_code == 401
    page = anonymous.get(f"/uploads/{case_id}")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    for path in ("/worklist", "/api/studies"):
        assert owner.get(path).status_code == 403, path

    no_token = httpx.Client(base_url=world.api.url, cookies=owner.cookies, timeout=10)
    for path in (f"/uploads/{case_id}/photos", f"/api/uploads/{case_id}/photos", "/upload"):
        assert no_token.post(path, files={"file": ("d.png", data, "image/png")}).status_code == 403, path
    assert len(client(world, "upload").get(f"/api/uploads/{case_id}").json()["images"]) == 3  # nothing added


def test_my_uploads_pages_through_the_cases_newest_first(world: Module, tmp_path: Path) -> None:
    uploader = client(world, "upload2")  # an uploader of its own: its list holds only these cases
    data = photo(tmp_path, "p.png", 5).read_bytes()
    made = []
    for n in range(3):
        form = {"patient_id": f"PAGE-{n}", "family_name": "Rossi", "given_name": "Anna", "birth_date": "19700101",
                "sex": "F", "body_part": "ARM", "clinical_question": "Rash?"}  # fmt: skip
        created = uploader.post("/api/uploads/photo", data=form, files=[("file", ("p.png", data, "image/png"))])
        assert created.status_code == 201, created.text
        made.append(created.json()["case_id"])
    newest_first = made[::-1]
    first = uploader.get("/api/uploads", params={"limit": 2}).json()
    assert [c["case_id"] for c in first["cases"]] == newest_first[:2] and first["next_offset"] == 2
    last = uploader.get("/api/uploads", params={"limit": 2, "offset": 2}).json()
    assert [c["case_id"] for c in last["cases"]] == newest_first[2:] and last["next_offset"] is None
    assert uploader.get("/api/uploads", params={"limit": 0}).status_code == 422
    page = uploader.get("/uploads")
    assert page.status_code == 200 and 'id="older-cases"' not in page.text  # three fit on the page
    assert 'id="newer-cases"' in uploader.get("/uploads", params={"offset": 1}).text
