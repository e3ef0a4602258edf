"""The study page's viewer in headless Chromium: every slice reachable, window/level, zoom to full resolution,
the model's slices marked, the viewer kept across a review action, and links to the hospital's viewers.

One ``pacs-vlm api`` process (with two viewers configured), one PostgreSQL database and one Chromium serve the
module.  The studies are stored as the listener stores them: a 100-slice CT series made from pydicom's CT
sample (new UIDs, Instance Numbers and positions) and a second series of one three-frame instance, with a draft
citing slices 37 and 52, and a 2048x2500 radiograph (synthetic pixels) to zoom to full resolution.
"""

from __future__ import annotations

import html
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.samples import pydicom_test_file
from integration.store.migrate import upgrade
from integration.store.tables import utcnow
from tests.conftest import TEST_REDIS_DB
from tests.support.instances import ingest
from tests.support.review_app import draft, evidence_of, ingest_settings, sign_in, sites_and_users
from tests.support.services import Postgres, RedisServer
from tests.web.conftest import ApiProcess
from tests.web.test_auth import PASSWORD

SLICES = 100
SEEN = (37, 52)  # 1-based slices the model saw, as prompt images 1 and 2
RADIOGRAPH = (2500, 2048)  # rows, columns
VIEWERS = [
    {"name": "OHIF", "url": "https://ohif.example.org/viewer?StudyInstanceUIDs={study_uid}"},
    {"name": "PACS", "url": "https://pacs.example.org/view?accession={accession_number}"},
]


@dataclass
class World:
    settings: Settings
    api: ApiProcess
    ct: list[pydicom.Dataset]  # by slice
    frames: pydicom.Dataset  # the CT study's second series: one instance of three frames
    radiograph: pydicom.Dataset
    report_id: int

    @property
    def ct_uid(self) -> str:
        return str(self.ct[0].StudyInstanceUID)


def ct_series(directory: Path) -> list[Path]:
    """Write a 100-slice CT series: the sample's pixels, new UIDs, Instance Numbers and positions 2.5 mm apart."""
    study_uid, series_uid = generate_uid(), generate_uid()
    source = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, SLICES + 1):
        ds = source.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study_uid, series_uid, 3
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 2.5 * (number - 1)]
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "Stack^Ct", "CT-STACK-1", "ACC-CT-100"
        ds.StudyDescription = "CT chest (pydicom sample, 100 slices)"
        # a ramp over the slices, so that neighbouring slices render differently
        ds.PixelData = (source.pixel_array + (number * 2)).astype(source.pixel_array.dtype).tobytes()
        path = directory / f"ct{number:03d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def multiframe(ct: Path, path: Path, frames: int = 3) -> Path:
    """Write a second series of the CT study: one instance of ``frames`` frames (the slice's pixels, brightened)."""
    ds = pydicom.dcmread(ct)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 4, 1
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    pixels = ds.pixel_array
    ds.NumberOfFrames = frames
    ds.PixelData = np.stack([pixels + 100 * n for n in range(frames)]).astype(pixels.dtype).tobytes()
    ds.save_as(path)
    return path


def radiograph(path: Path) -> Path:
    """Write a 2048x2500 DX image (a smooth 12-bit pattern) without accession number."""
    rows, columns = RADIOGRAPH
    y, x = np.mgrid[0:rows, 0:columns]
    pixels = ((np.sin(x / 97.0) + np.cos(y / 131.0) + 2) * 1000).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.PatientName, ds.PatientID, ds.StudyDescription = "Film^Dx", "DX-1", "Chest radiograph"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = postgres.create_database()
    upgrade(url)
    tmp = tmp_path_factory.mktemp("study-viewer")
    settings = ingest_settings(url, redis_server.url(TEST_REDIS_DB), tmp)
    sites_and_users(url)
    earlier = utcnow() - timedelta(seconds=120)
    ct_paths = ct_series(tmp / "ct")
    ct = [ingest(settings, path, earlier, "CT1") for path in ct_paths]
    frames = ingest(settings, multiframe(ct_paths[0], tmp / "multiframe.dcm"), earlier, "CT1")
    dx = ingest(settings, radiograph(tmp / "dx.dcm"), earlier, "CT1")
    StudyAssembler(settings).run_once()
    report_id = draft(
        settings,
        str(ct[0].StudyInstanceUID),
        [{"text": "Nodule in the right upper lobe.", "images": [1]}, {"text": "No effusion.", "images": [2]}],
        [evidence_of(ct[SEEN[0] - 1], 1, window="lung"), evidence_of(ct[SEEN[1] - 1], 2)],
    )
    api = ApiProcess(
        tmp / "api",
        {
            "PACSVLM_MIN_FREE_BYTES": "0",
            "PACSVLM_DATABASE_URL": url,
            "PACSVLM_BROKER_URL": settings.broker_url,
            "PACSVLM_STORAGE_DIR": str(settings.instance_root),
            "PACSVLM_VIEWERS": json.dumps(VIEWERS),
        },
    ).start()
    yield World(settings, api, ct, frames, dx, report_id)
    api.stop()


def signed_in(chromium: Any, world: World) -> Any:
    page = chromium.new_context(viewport={"width": 1600, "height": 1000}).new_page()
    page.goto(world.api.url + "/login")
    page.fill("#username", "north_rad")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.press("#password", "Enter")
    return page


def wait_for(page: Any, script: str, expected: Any = True, timeout: float = 15.0) -> Any:
    """Poll ``script`` until it returns ``expected`` (with evaluate: the page's CSP forbids eval)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value == expected:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{script} is {value!r}, not {expected!r}")


def image_loaded(page: Any) -> None:
    wait_for(
        page, "(() => { const i = document.getElementById('viewer-image'); return i.complete && i.naturalWidth > 0 })()"
    )


def position(page: Any) -> str:
    return str(page.locator("#viewer-position").inner_text())


def shown_sop(page: Any) -> str:
    return str(page.locator("#viewer-image").get_attribute("data-sop"))


def test_every_slice_by_wheel_keys_and_slider_fetched_when_shown(chromium: Any, world: World) -> None:
    page = signed_in(chromium, world)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    frames: list[str] = []
    page.on("request", lambda request: frames.append(request.url) if "/frames/" in request.url else None)
    page.goto(f"{world.api.url}/studies/{world.ct_uid}")
    image_loaded(page)
    # The slices are data on the page, not images: a handful of <img> and frame requests, not a hundred.
    choices = page.locator("[data-series-choice]")
    assert choices.all_inner_texts() == [f"Series 3 · CT · {SLICES} slices", "Series 4 · CT · 3 slices"]
    assert (choices.first.get_attribute("data-slices") or "").split() == [str(ds.SOPInstanceUID) for ds in world.ct]
    multi = str(world.frames.SOPInstanceUID)
    assert (choices.nth(1).get_attribute("data-slices") or "").split() == [multi, f"{multi}/2", f"{multi}/3"]
    assert page.evaluate("document.images.length") <= 4
    assert position(page) == f"Slice {SEEN[0]} of {SLICES}"  # the model's first image comes first
    assert len([url for url in frames if ".png" in url]) <= 8

    # The mouse wheel over the image reaches the last slice.
    page.locator("#viewport").hover()
    for _ in range(SLICES):
        page.mouse.wheel(0, 100)
    assert position(page) == f"Slice {SLICES} of {SLICES}"
    assert shown_sop(page) == str(world.ct[-1].SOPInstanceUID)
    assert str(world.ct[-1].SOPInstanceUID) in (page.locator("#viewer-image").get_attribute("src") or "")
    image_loaded(page)

    # Keys when the viewer has focus: Home, arrows, PageDown, End; the slider says where.
    page.locator("#viewport").focus()
    page.keyboard.press("Home")
    assert position(page) == f"Slice 1 of {SLICES}" and shown_sop(page) == str(world.ct[0].SOPInstanceUID)
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("PageDown")
    assert position(page) == f"Slice 14 of {SLICES}"
    assert page.locator("#viewer-slider").get_attribute("aria-valuetext") == f"slice 14 of {SLICES}"
    page.keyboard.press("ArrowUp")
    assert shown_sop(page) == str(world.ct[12].SOPInstanceUID)
    for _ in range(SLICES):
        page.keyboard.press("ArrowDown")
    assert position(page) == f"Slice {SLICES} of {SLICES}"
    page.locator("#viewer-slider").fill("50")
    assert position(page) == f"Slice 50 of {SLICES}" and shown_sop(page) == str(world.ct[49].SOPInstanceUID)
    image_loaded(page)

    # The other series, chosen from the list: its frames are its slices.
    choices.nth(1).click()
    assert position(page) == "Slice 1 of 3" and shown_sop(page) == multi
    assert (
        choices.nth(1).get_attribute("aria-current") == "true" and choices.first.get_attribute("aria-current") is None
    )
    page.keyboard.press("End")
    assert position(page) == "Slice 3 of 3" and "/frames/3.png" in (
        page.locator("#viewer-image").get_attribute("src") or ""
    )
    image_loaded(page)
    # Each slice shown was fetched when shown (and a few neighbours), never the series up front.
    assert len({url for url in frames if ".png" in url}) < 3 * SLICES
    assert errors == []
    page.context.close()


def test_window_level_by_drag_and_by_preset(chromium: Any, world: World) -> None:
    page = signed_in(chromium, world)
    page.goto(f"{world.api.url}/studies/{world.ct_uid}?report={world.report_id}&image={world.ct[0].SOPInstanceUID}")
    image_loaded(page)
    label = page.locator("#viewer-window")
    wait_for(page, "document.getElementById('viewer-window').textContent", "Window: default · C -600 / W 1600")

    # The chest CT's own window is the lung preset.  Right-drag: rightwards widens the window, upwards raises the
    # level; the label and the image request follow.
    box = page.locator("#viewport").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x + 64, y - 32, steps=4)
    page.mouse.up(button="right")
    text = label.inner_text()
    assert text.startswith("Window: custom · C "), text
    center, width = (part.split()[-1] for part in text.split("·")[1].split("/"))
    assert float(width) > 1600 and float(center) > -600
    wait_for(
        page, "new URL(document.getElementById('viewer-image').src).searchParams.get('window')", f"{center},{width}"
    )
    image_loaded(page)

    # A preset button: lung, pressed, in the label and the request.
    page.locator("button[data-preset='lung']").click()
    assert label.inner_text() == "Window: lung · C -600 / W 1600"
    assert page.locator("button[data-preset='lung']").get_attribute("aria-pressed") == "true"
    assert "window=lung" in (page.locator("#viewer-image").get_attribute("src") or "")
    # W/L mode: a left drag levels instead of panning.
    page.locator("#wl-mode").click()
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 40, y, steps=3)
    page.mouse.up()
    assert label.inner_text().startswith("Window: custom")
    page.context.close()


def test_zoom_and_pan_to_full_resolution(chromium: Any, world: World) -> None:
    page = signed_in(chromium, world)
    page.goto(f"{world.api.url}/studies/{world.radiograph.StudyInstanceUID}")
    image_loaded(page)
    rows, columns = RADIOGRAPH
    natural = "document.getElementById('viewer-image').naturalWidth"
    wait_for(page, "document.getElementById('viewer-zoom').textContent.startsWith('Fit')")
    assert page.evaluate(natural) < columns  # fitted: a smaller rendering is enough
    page.locator("#zoom-full").click()
    assert page.locator("#viewer-zoom").inner_text() == "100%"
    wait_for(page, natural, columns)  # full resolution: the file's own Columns
    assert page.evaluate("document.getElementById('viewer-image').naturalHeight") == rows
    assert f"size={rows}&" in (page.locator("#viewer-image").get_attribute("src") or "")  # its longest side
    width = page.evaluate("document.getElementById('viewer-image').getBoundingClientRect().width")
    assert abs(width - columns) < 1  # one image pixel per screen pixel

    # Pan by dragging moves the image; Fit puts it back whole (the drag stays inside the browser's window).
    page.locator("#viewport").evaluate("element => element.scrollIntoView({block: 'start'})")
    before = page.locator("#viewer-image").bounding_box()
    box = page.locator("#viewport").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 300, box["y"] + 250, steps=4)
    page.mouse.up()
    after = page.locator("#viewer-image").bounding_box()
    assert (round(after["x"] - before["x"]), round(after["y"] - before["y"])) == (200, 150)
    page.locator("#zoom-fit").click()
    fitted = page.locator("#viewer-image").bounding_box()
    assert fitted["height"] <= box["height"] + 1 and fitted["width"] <= box["width"] + 1
    # Ctrl+wheel and the buttons zoom.
    page.locator("#viewport").hover()
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    assert "Fit" not in page.locator("#viewer-zoom").inner_text()
    page.locator("#zoom-in").click()
    assert page.locator("#viewer-image").bounding_box()["width"] > fitted["width"] * 1.5
    page.context.close()


def test_the_model_slices_are_marked_and_the_coverage_is_said(chromium: Any, world: World) -> None:
    page = signed_in(chromium, world)
    page.goto(f"{world.api.url}/studies/{world.ct_uid}")
    image_loaded(page)
    coverage = page.locator("#model-coverage").inner_text()  # the second series' three frames count too
    assert coverage == f"The model saw 2 of {SLICES + 3} slices (CT series 3: 2 of {SLICES})."
    marks = page.locator("#slider-marks .slider-mark")
    assert [marks.nth(i).get_attribute("data-slice") for i in range(marks.count())] == [str(n - 1) for n in SEEN]
    assert page.locator("#viewer-seen").inner_text() == "Seen by the model · image 1"
    # The model saw slice 37 in the lung window: the viewer shows it so.
    assert "window=lung" in (page.locator("#viewer-image").get_attribute("src") or "")
    page.locator("#viewport").focus()
    page.keyboard.press("ArrowDown")
    assert page.locator("#viewer-seen").is_hidden()
    marks.nth(1).click()
    assert position(page) == f"Slice {SEEN[1]} of {SLICES}"
    assert page.locator("#viewer-seen").inner_text() == "Seen by the model · image 2"
    # The series list names the model's slices; a citation goes to its slice.
    listed = page.locator(".model-slice")
    assert [listed.nth(i).inner_text() for i in range(listed.count())] == ["slice 37 (image 1)", "slice 52 (image 2)"]
    listed.nth(0).click()
    assert position(page) == f"Slice {SEEN[0]} of {SLICES}"
    page.locator("#viewport").focus()
    page.keyboard.press("End")
    page.locator("#finding-1 a.cite[data-image='2']").click()
    assert position(page) == f"Slice {SEEN[1]} of {SLICES}"
    page.context.close()


def test_a_review_action_keeps_the_slice_window_and_zoom(chromium: Any, world: World) -> None:
    page = signed_in(chromium, world)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{world.api.url}/studies/{world.ct_uid}")
    image_loaded(page)
    page.locator("#viewer-slider").fill("60")
    page.locator("button[data-preset='bone']").click()
    page.locator("#zoom-in").click()
    zoom = page.locator("#viewer-zoom").inner_text()
    with page.expect_navigation():
        page.locator("#finding-0 button[data-action='accept']").click()
    assert "done=accept" in page.url and page.locator("#finding-0 .badge.decision").inner_text().lower() == "accepted"
    assert position(page) == f"Slice 60 of {SLICES}" and shown_sop(page) == str(world.ct[59].SOPInstanceUID)
    assert page.locator("#viewer-window").inner_text() == "Window: bone · C 500 / W 2000"
    assert "window=bone" in (page.locator("#viewer-image").get_attribute("src") or "")
    assert page.locator("#viewer-zoom").inner_text() == zoom
    image_loaded(page)
    assert errors == []
    page.context.close()


def test_viewer_links_on_the_worklist_and_the_study_page(chromium: Any, world: World) -> None:
    page = signed_in(chromium, world)
    page.goto(f"{world.api.url}/worklist")
    ct_row = page.locator("tr", has=page.locator(f"a.open-study[href='/studies/{world.ct_uid}']"))
    ohif = ct_row.locator("a", has_text="Open in OHIF")
    assert ohif.get_attribute("href") == f"https://ohif.example.org/viewer?StudyInstanceUIDs={world.ct_uid}"
    assert (ohif.get_attribute("target"), ohif.get_attribute("rel")) == ("_blank", "noopener")
    pacs = ct_row.locator("a", has_text="Open in PACS")
    assert pacs.get_attribute("href") == "https://pacs.example.org/view?accession=ACC-CT-100"
    # The radiograph has no accession number: no PACS link, only OHIF.
    dx_uid = str(world.radiograph.StudyInstanceUID)
    dx_row = page.locator("tr", has=page.locator(f"a.open-study[href='/studies/{dx_uid}']"))
    assert dx_row.locator(".viewer-links a").all_inner_texts() == ["Open in OHIF"]
    page.goto(f"{world.api.url}/studies/{world.ct_uid}")
    links = page.locator("#viewer-links a")
    assert links.all_inner_texts() == ["Open in OHIF", "Open in PACS"]
    assert all(links.nth(i).get_attribute("rel") == "noopener" for i in range(2))
    page.context.close()


def test_the_frame_route_windows_sizes_and_info(world: World) -> None:
    client = sign_in(world.api, "north_rad")
    ct = world.ct[0]
    base = f"/studies/{ct.StudyInstanceUID}/instances/{ct.SOPInstanceUID}/frames/1"
    for window in ("40,400", "-600,1600", "40.5,1", "default", "brain"):
        assert client.get(f"{base}.png?window={window}&size=64").status_code == 200, window
    for window in ("40,0", "abc", "40", "40,400,1", "1e9,5", "nan,400", "40,-400", "99999999999,1", ""):
        answer = client.get(f"{base}.png", params={"window": window})
        assert answer.status_code == 422 and "window" in answer.text, window
    explicit = client.get(f"{base}.png?window=40,400").content
    assert explicit != client.get(f"{base}.png?window=-600,1600").content
    # Never enlarged past the image's own size; shrunk when asked.
    for size, expected in ((4096, 128), (64, 64), (128, 128)):
        rendered = Image.open(io.BytesIO(client.get(f"{base}.png?size={size}").content))
        assert rendered.size == (expected, expected), size
    assert client.get(f"{base}.png?size=4097").status_code == 422
    info = client.get(f"{base}/info")
    assert info.status_code == 200 and info.headers["cache-control"].startswith("private")
    assert info.json() == {
        "columns": 128,
        "rows": 128,
        "colour": False,
        "window": {"center": -600.0, "width": 1600.0, "name": "lung"},  # a chest CT without a window of its own
    }
    dx = world.radiograph
    dx_info = client.get(f"/studies/{dx.StudyInstanceUID}/instances/{dx.SOPInstanceUID}/frames/1/info").json()
    assert (dx_info["columns"], dx_info["rows"], dx_info["window"]["name"]) == (2048, 2500, "header")
    assert client.get(f"/studies/{dx.StudyInstanceUID}/instances/{ct.SOPInstanceUID}/frames/1/info").status_code == 404
    assert client.get(f"{base[:-1]}2/info").status_code == 404

    # Without JavaScript the slice links step through the series too.
    page = client.get(f"/studies/{world.ct_uid}")
    assert page.status_code == 200 and page.text.count("<img") <= 4  # the slices are data, not a hundred images
    following = re.search(r'id="slice-next" href="([^"]+)"', page.text)
    assert following is not None
    link = html.unescape(following.group(1))
    assert f"image={world.ct[SEEN[0]].SOPInstanceUID}&frame=1" in link
    assert f"Slice {SEEN[0] + 1} of {SLICES}" in client.get(link.split("#")[0]).text
    client.close()
