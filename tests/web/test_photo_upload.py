"""Photo upload on real sockets: ``pacs-vlm api`` on PostgreSQL, httpx and headless Debian Chromium as clients.

Photos are made with Pillow; the stored DICOM is read back with pydicom and checked with dciodvfy (Debian
dicom3tools); the assembly step that queues the study is the real one (``complete_stable_studies``).
"""

from __future__ import annotations

import io
import re
import socket
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from integration.store.jobs import complete_stable_studies
from integration.store.session import session_scope
from integration.store.tables import UserRole, utcnow
from integration.store.users import create_site, create_user
from integration.web.security.csrf import csrf_token_for_session
from tests.support.records import db_rows
from tests.web.conftest import ApiProcess

PASSWORD = "correct horse battery staple"
COOKIE = "pacsvlm_session"
CHROMIUM = "/usr/bin/chromium"
DCIODVFY = "/usr/bin/dciodvfy"
FORM = {
    "patient_id": "TELE-77",
    "patient_name": "Rossi^Maria",
    "birth_date": "1975-06-30",
    "sex": "F",
    "body_part": "SKIN",
    "clinical_question": "New pigmented lesion on the back: melanoma?",
    "study_description": "Teledermatology",
}


def image_bytes(pixels: np.ndarray, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def photo_pixels(rows: int = 60, columns: int = 80) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (rows, columns, 3), dtype=np.uint8)


def huge_png() -> bytes:
    raw = bytearray(image_bytes(np.zeros((1, 1, 3), np.uint8), "PNG"))
    raw[16:24] = struct.pack(">II", 60_000, 60_000)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def read_response(sock: socket.socket) -> bytes:
    """Read one HTTP response with a Content-Length body from a raw socket."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < body_length(answer):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def body_length(answer: bytes) -> int:
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer.partition(b"\r\n\r\n")[0])
    return int(found[1]) if found else 0


@pytest.fixture
def api(start_api: Callable[..., ApiProcess], migrated_postgres_url: str) -> ApiProcess:
    with session_scope(migrated_postgres_url) as session:
        create_site(session, "NORTH", "North")
        create_user(session, "up_north", PASSWORD, UserRole.UPLOADER, "NORTH")
        create_user(session, "rad_north", PASSWORD, UserRole.RADIOLOGIST, "NORTH")
    return start_api(PACSVLM_DATABASE_URL=migrated_postgres_url)


def sign_in(api: ApiProcess, username: str = "up_north") -> tuple[dict[str, str], dict[str, str]]:
    response = httpx.post(api.url + "/api/login", json={"username": username, "password": PASSWORD}, timeout=10)
    assert response.status_code == 200, response.text
    token = response.cookies[COOKIE]
    return {COOKIE: token}, {"X-CSRF-Token": csrf_token_for_session(token)}


def upload(
    api: ApiProcess,
    cookies: dict[str, str] | None,
    headers: dict[str, str] | None,
    data: bytes,
    form: dict[str, str] | None = None,
    filename: str = "photo.png",
) -> httpx.Response:
    files = {"file": (filename, data, "application/octet-stream")}
    return httpx.post(
        api.url + "/api/uploads/photo", data=form or FORM, files=files, cookies=cookies, headers=headers, timeout=60
    )


def stored_files(api: ApiProcess) -> list[Path]:
    root = api.data_dir / "instances"
    return sorted(p for p in root.rglob("*.dcm") if ".incoming" not in p.parts) if root.exists() else []


def test_png_and_jpeg_become_valid_dicom_studies_that_are_queued_at_once(
    api: ApiProcess, migrated_postgres_url: str
) -> None:
    url = migrated_postgres_url
    cookies, csrf = sign_in(api)
    pixels = photo_pixels()
    png = upload(api, cookies, csrf, image_bytes(pixels, "PNG"))
    assert png.status_code == 201, png.text
    study_uid = png.json()["study_uid"]
    jpeg_data = image_bytes(pixels, "JPEG", quality=92)
    jpeg_form = {**FORM, "birth_date": "19750630", "recognizable_features": "no"}  # the uploader says no face
    jpeg = upload(api, cookies, csrf, jpeg_data, jpeg_form, "photo.jpg")
    assert jpeg.status_code == 201, jpeg.text
    assert jpeg.json()["study_uid"] != study_uid

    files = stored_files(api)
    assert len(files) == 2
    by_study = {pydicom.dcmread(path).StudyInstanceUID: path for path in files}
    ds = pydicom.dcmread(by_study[study_uid])
    assert ds.SOPInstanceUID == png.json()["sop_instance_uid"] and ds.Modality == "XC"
    assert np.array_equal(ds.pixel_array, pixels)
    assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == (
        "Rossi^Maria",
        "TELE-77",
        "19750630",
        "F",
    )
    assert ds.BodyPartExamined == "SKIN" and ds.StudyDescription == "Teledermatology"
    assert ds.RequestAttributesSequence[0].ReasonForTheRequestedProcedure == FORM["clinical_question"]
    assert ds.file_meta.SourceApplicationEntityTitle == "WEBUPLOAD"
    assert ds.RecognizableVisualFeatures == "YES"  # not answered: a photo may show the patient
    decoded_jpeg = np.asarray(Image.open(io.BytesIO(jpeg_data)).convert("RGB"))
    jpeg_ds = pydicom.dcmread(by_study[jpeg.json()["study_uid"]])
    assert np.array_equal(jpeg_ds.pixel_array, decoded_jpeg) and jpeg_ds.RecognizableVisualFeatures == "NO"
    for path in files:
        checked = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], checked.stdout + checked.stderr

    site = db_rows(url, "SELECT id FROM sites WHERE code = 'NORTH'")[0][0]
    rows = db_rows(url, "SELECT source, site_id, calling_ae, stable_after <= now() FROM studies")
    assert rows == [("upload", site, "WEBUPLOAD", True)] * 2
    with session_scope(url) as session:
        jobs = complete_stable_studies(session, utcnow(), "analysis")
    assert len(jobs) == 2
    assert db_rows(url, "SELECT DISTINCT state FROM studies") == [("stable",)]

    audit = db_rows(url, "SELECT actor, object_id, detail FROM audit_events WHERE action = 'upload.photo'")
    assert {row[1] for row in audit} == set(by_study) and all(row[0] == "up_north" for row in audit)
    assert audit[0][2]["rows"] == 60 and audit[0][2]["columns"] == 80
    answers = {row[1]: row[2]["recognizable_features"] for row in audit}
    assert answers == {study_uid: "YES", jpeg.json()["study_uid"]: "NO"}
    log = api.log_path.read_text(errors="replace")
    for secret in ("Rossi", "TELE-77", "melanoma", "1975"):
        assert secret not in log and all(secret not in str(row[2]) for row in audit)


@pytest.mark.parametrize(
    ("data", "changes", "field", "message"),
    [
        (b"plain text, not a picture", {}, "file", "not a JPEG or PNG"),
        (image_bytes(photo_pixels(8, 8), "GIF"), {}, "file", "not a JPEG or PNG"),
        (huge_png(), {}, "file", "pixels"),
        (b"", {}, "file", "required"),
        (image_bytes(photo_pixels(8, 8), "PNG"), {"birth_date": "1975-13-45"}, "birth_date", "date"),
        (image_bytes(photo_pixels(8, 8), "PNG"), {"patient_id": ""}, "patient_id", "required"),
        (image_bytes(photo_pixels(8, 8), "PNG"), {"sex": "female"}, "sex", "M, F or O"),
        (image_bytes(photo_pixels(8, 8), "PNG"), {"clinical_question": "x" * 2001}, "clinical_question", "2000"),
        (image_bytes(photo_pixels(8, 8), "PNG"), {"recognizable_features": "maybe"}, "recognizable_features", "YES"),
    ],
)
def test_bad_input_gets_422_naming_the_field_and_stores_nothing(
    api: ApiProcess, migrated_postgres_url: str, data: bytes, changes: dict[str, str], field: str, message: str
) -> None:
    cookies, csrf = sign_in(api)
    response = upload(api, cookies, csrf, data, {**FORM, **changes}, filename="" if not data else "x.png")
    assert response.status_code == 422, response.text
    problems = {problem["loc"][-1]: problem["msg"] for problem in response.json()["detail"]}
    assert field in problems and message in problems[field], problems
    for value in changes.values():
        assert len(value) < 4 or value not in response.text
    assert stored_files(api) == []
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM studies") == [(0,)]


def test_only_signed_in_uploaders_with_the_csrf_token_and_a_bounded_body(api: ApiProcess) -> None:
    data = image_bytes(photo_pixels(8, 8), "PNG")
    assert upload(api, None, None, data).status_code == 401
    cookies, csrf = sign_in(api)
    assert upload(api, cookies, None, data).status_code == 403  # no CSRF token
    rad_cookies, rad_csrf = sign_in(api, "rad_north")
    assert upload(api, rad_cookies, rad_csrf, data).status_code == 403
    head = (
        "POST /api/uploads/photo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Cookie: {COOKIE}={cookies[COOKIE]}\r\nX-CSRF-Token: {csrf['X-CSRF-Token']}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 40000000\r\n\r\n--x\r\n"
    )
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"MiB" in answer, answer[:300]
    not_a_form = httpx.post(
        api.url + "/api/uploads/photo",
        content=data,
        headers={**csrf, "Content-Type": "image/png"},
        cookies=cookies,
        timeout=10,
    )
    assert not_a_form.status_code == 415
    assert stored_files(api) == []


def test_upload_page_in_a_browser(api: ApiProcess, migrated_postgres_url: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    anonymous = httpx.get(api.url + "/upload", timeout=10)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    rad_cookies, _ = sign_in(api, "rad_north")
    assert httpx.get(api.url + "/upload", cookies=rad_cookies, timeout=10).status_code == 403

    photo = tmp_path / "lesion.jpg"
    photo.write_bytes(image_bytes(photo_pixels(), "JPEG", quality=90))
    not_image = tmp_path / "notes.png"
    not_image.write_bytes(b"<script>window.__pwned = true</script>")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(api.url + "/upload")
            assert "/login" in page.url
            page.fill("#username", "up_north")
            page.fill("#password", PASSWORD)
            page.press("#password", "Enter")
            page.wait_for_url("**/upload")
            page.set_input_files("#file", str(not_image))
            for name, value in FORM.items():
                if name not in ("sex", "patient_name"):  # the page asks the name as ordinary fields
                    page.fill(f"#{name}", value)
            page.fill("#family_name", "Rossi")
            page.fill("#given_name", "Maria")
            page.select_option("#sex", "F")
            question = page.locator("#recognizable_features legend").inner_text()
            assert "face or other recognisable features" in question
            assert page.is_checked("#recognizable_yes") and not page.is_checked("#recognizable_no")  # yes by default
            page.check("#recognizable_no")  # a lesion on the back: no face, nothing recognisable
            page.click("#upload-form button[type=submit]")
            alert = page.locator("[role=alert]")
            assert "Nothing was stored" in alert.inner_text() and "not a JPEG or PNG" in alert.inner_text()
            assert page.input_value("#patient_id") == "TELE-77"  # what was typed is kept
            assert page.is_checked("#recognizable_no")  # and what was answered
            assert page.evaluate("window.__pwned === undefined")
            page.set_input_files("#file", str(photo))
            page.click("#upload-form button[type=submit]")
            notice = page.locator("[role=status]").inner_text()
        finally:
            browser.close()
    study_uid = db_rows(migrated_postgres_url, "SELECT study_uid FROM studies")[0][0]
    assert "1 photo received for Rossi, Maria" in notice and study_uid not in notice  # a confirmation, not a UID
    [stored] = stored_files(api)
    assert pydicom.dcmread(stored).RecognizableVisualFeatures == "NO"
