"""What leaves for a model server outside the trust boundary: pixels and de-identified minimum metadata only.

The worker's real pipeline drafts a study through a real OpenAI-compatible server (``transformers serve``
with the tiny LLaVA); a recording proxy in front of it keeps the exact request bodies the server received.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from integration.config import Settings
from integration.imaging.burned_in import find_burned_in_text
from integration.imaging.selection import NoImages, PreparedStudy, prepare_study
from integration.samples import write_ct_series
from integration.store.priors import PriorsView, PriorView
from integration.store.reports import ClaimedJob, DraftRecord, InstanceFile
from integration.store.tables import PriorSearchState, PriorState
from models.draft import parse_draft
from models.openai_backend import OpenAICompatibleBackend
from tests.models.test_openai_backend import png_chunks
from tests.support.model_server import RecordingProxy, TransformersServe
from worker.outbound import OutboundRelease, outbound_release
from worker.pipeline import draft_study

QUESTION = "Persistent cough since March in this smoker, rule out tumour?"
PATIENT = {
    "PatientName": "Kowalczyk^Agnieszka",
    "PatientID": "MRN-7730412",
    "PatientBirthDate": "19580923",
    "AccessionNumber": "ACC99887766",
    "InstitutionName": "St Elsewhere General Hospital",
    "ReferringPhysicianName": "Okonkwo^Chidi",
    "SeriesDescription": "Kowalczyk thorax follow-up",
    "StudyDescription": "CT chest for Agnieszka",
    "StudyDate": "20260317",
}


@pytest.fixture
def server(smoke_model_server: TransformersServe) -> TransformersServe:
    """The session's ``transformers serve`` (tests/conftest.py)."""
    return smoke_model_server


@pytest.fixture
def proxy(server: TransformersServe) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(server.url)
    yield recording
    recording.close()


def identified_study(store: Path, burned_in: set[int]) -> list[Path]:
    """A two-slice chest CT full of patient data; the slices in ``burned_in`` say their pixels carry text."""
    files = write_ct_series(store / "ct", 2, rows=32, columns=32)
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        item = Dataset()
        item.ReasonForTheRequestedProcedure = QUESTION
        ds.RequestAttributesSequence = DicomSequence([item])
        ds.BurnedInAnnotation = "YES" if index in burned_in else "NO"
        ds.PatientSex = "F"  # sent as "female" to a trusted model only
        ds.save_as(path)
    return files


def draft_through(
    proxy: RecordingProxy,
    model_dir: Path,
    tmp_path: Path,
    *,
    trusted: bool,
    burned_in: set[int],
    family: str = "llava",
    priors: Callable[[Path], PriorsView] | None = None,
) -> tuple[DraftRecord, list[str]]:
    store = tmp_path / ("trusted" if trusted else "untrusted")
    files = identified_study(store, burned_in)
    settings = Settings(data_dir=tmp_path, storage_dir=store, max_new_tokens=4, image_size=64)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    job = ClaimedJob(7, 3, study_uid, 1, 1, "CT1")
    instances = [
        InstanceFile(str(p.relative_to(store)), str(pydicom.dcmread(p).SOPInstanceUID), "", "CT", "CHEST")
        for p in files
    ]
    backend = OpenAICompatibleBackend(
        proxy.url, model=str(model_dir), family=family, max_new_tokens=4, outside_trust_boundary=not trusted
    )
    draft = draft_study(settings, job, instances, backend, priors=priors(store) if priors else None)
    uids = []
    for path in files:
        ds = pydicom.dcmread(path)
        uids += [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID]
    return draft, [str(uid) for uid in uids]


def sent_images(body: dict[str, object]) -> list[bytes]:
    [user] = [m for m in body["messages"] if m["role"] == "user"]  # type: ignore[union-attr, index]
    urls = [part["image_url"]["url"] for part in user["content"] if part["type"] == "image_url"]
    return [base64.b64decode(url.removeprefix("data:image/png;base64,")) for url in urls]


def test_an_untrusted_server_gets_pixels_and_deidentified_minimum_metadata(
    proxy: RecordingProxy, smoke_model_dir: Path, tmp_path: Path
) -> None:
    draft, uids = draft_through(proxy, smoke_model_dir, tmp_path, trusted=False, burned_in={1})
    [sent] = proxy.chat_requests()
    body = sent.json()
    text = json.dumps(body["messages"], ensure_ascii=False)
    forbidden = [*PATIENT.values(), *uids, QUESTION, "Kowalczyk", "Agnieszka", "7730412", "1958", "Persistent cough"]
    for value in forbidden:
        assert value not in text and value.encode() not in sent.body, f"{value!r} left the trust boundary"
    images = sent_images(body)
    for png in images:
        assert set(png_chunks(png)) <= {b"IHDR", b"PLTE", b"IDAT", b"IEND"}  # no text, EXIF or profile chunks
        for value in forbidden:
            assert value.encode() not in png
    # the burned-in slice stayed home: one montage (LLaVA takes one image) of the two windows of the one clean
    # slice was sent, and only its tiles are evidence
    burned_uid = uids[6]
    assert len(images) == 1 and len(draft.evidence) == 2
    assert all(e["sop_instance_uid"] == uids[2] for e in draft.evidence)
    assert {e["window"] for e in draft.evidence} == {"lung", "mediastinum"}
    assert burned_uid not in json.dumps(draft.evidence)
    prompt_lines = body["messages"][0]["content"][-1]["text"].splitlines()
    labels = [line for line in prompt_lines if re.match(r"Image \d+: ", line)]
    assert len(labels) == 1 and labels[0].startswith("Image 1: montage of 1 slice")
    assert "CT series 2" in labels[0] and "lung window" in labels[0] and "mediastinum window" in labels[0]
    assert draft.timings["deidentified"] == 1.0 and draft.timings["withheld_images"] == 1.0
    problems = draft.findings["problems"]
    assert any("de-identified" in p and "PS3.15" in p for p in problems)
    assert any("clinical question was not sent" in p for p in problems)
    assert "burned-in annotation" in draft.findings["limitations"] and "burned-in annotation" in draft.text
    assert draft.model_id == str(smoke_model_dir) and draft.model_revision.startswith("server:127.0.0.1:")


def test_a_trusted_server_gets_the_clinical_question_and_every_image(
    proxy: RecordingProxy, smoke_model_dir: Path, tmp_path: Path
) -> None:
    draft, uids = draft_through(proxy, smoke_model_dir, tmp_path, trusted=True, burned_in={1})
    [sent] = proxy.chat_requests()
    text = sent.json()["messages"][0]["content"][-1]["text"]
    assert f'The referring clinician asks: "{QUESTION}"' in text
    assert len(sent_images(sent.json())) == 1 and len(draft.evidence) == 4  # one montage: 2 slices x 2 windows
    assert uids[6] in json.dumps(draft.evidence)  # the burned-in slice was shown
    assert "deidentified" not in draft.timings
    assert not any("de-identified" in p for p in draft.findings["problems"])


def test_a_study_of_burned_in_images_only_is_not_sent(
    proxy: RecordingProxy, smoke_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(NoImages, match=r"2 instance\(s\) with burned-in annotation .* withheld.*PS3.15"):
        draft_through(proxy, smoke_model_dir, tmp_path, trusted=False, burned_in={0, 1})
    assert proxy.requests == []


PRIOR_DATE = "20240301"
PRIOR_REPORT = (
    "Compared with 12/01/2023. Small left pleural effusion. Kowalczyk Agnieszka, MRN-7730412, accession "
    "ACC55501234, read by Dr. Okonkwo on 1 March 2024. Discussed with Lindqvist."
)
#: The prior's own reading physician: in its header, not in the current study's, and untitled in its report.
PRIOR_READER = "Lindqvist^Maja"


def identified_prior(store: Path) -> PriorsView:
    """The same patient's prior chest CT, stored, with a report full of identifiers, as the store records it."""
    files = write_ct_series(store / "prior", 4, rows=32, columns=32)
    instances = []
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in {
            **PATIENT, "StudyDate": PRIOR_DATE, "AccessionNumber": "ACC55501234",
            "NameOfPhysiciansReadingStudy": PRIOR_READER,
        }.items():  # fmt: skip
            setattr(ds, keyword, value)
        ds.save_as(path)
        instances.append(InstanceFile(str(path.relative_to(store)), str(ds.SOPInstanceUID), "", "CT", "CHEST"))
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    prior = PriorView(
        id=1, prior_study_uid=study_uid, prior_study_id=2, rank=1, source="pacs", state=PriorState.READY,
        reason=None, study_date=PRIOR_DATE, modality="CT", description="CT chest for Agnieszka",
        accession="ACC55501234", report_text=PRIOR_REPORT, report_source="sr", series_uids=(), instances=4,
        bytes=0, seconds=0.1, files=tuple(instances),
    )  # fmt: skip
    return PriorsView(1, PriorSearchState.DONE, None, None, None, None, (prior,))


def test_an_untrusted_server_gets_the_prior_by_days_with_a_deidentified_report(
    proxy: RecordingProxy, smoke_model_dir: Path, tmp_path: Path
) -> None:
    seen: list[PriorsView] = []

    def priors(store: Path) -> PriorsView:
        seen.append(identified_prior(store))
        return seen[0]

    draft, uids = draft_through(
        proxy, smoke_model_dir, tmp_path, trusted=False, burned_in=set(), family="medgemma", priors=priors
    )
    [sent] = proxy.chat_requests()
    text = json.dumps(sent.json()["messages"], ensure_ascii=False)
    prior_uids = [seen[0].priors[0].prior_study_uid, *(f.sop_instance_uid for f in seen[0].priors[0].files)]
    forbidden = [
        *PATIENT.values(), *uids, *prior_uids, PRIOR_DATE, "2024-03-01", "12/01/2023", "1 March 2024", "ACC55501234",
        "7730412", "Kowalczyk", "Agnieszka", "Okonkwo", "CT chest for", "Lindqvist",
    ]  # fmt: skip
    for value in forbidden:
        assert value not in text and value.encode() not in sent.body, f"{value!r} left the trust boundary"
    assert f"{(date(2026, 3, 17) - date(2024, 3, 1)).days} days earlier" in text
    assert "Small left pleural effusion." in text and "60-69 years" in text and "female" not in text
    # half the budget for the prior (2 positions x 2 windows), then the current study's 2 slices x 2 windows
    assert len(sent_images(sent.json())) == 8
    assert sorted({e["image"] for e in draft.evidence if e.get("prior")}) == [1, 2, 3, 4]
    assert draft.findings["priors"][0]["study_uid"] == prior_uids[0]  # our own document names it


# ---- burned-in text: tesseract reads the images built for an untrusted server (issue 17) ----

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
#: What each slice of the burned-in study carries in its pixels (slice 2: a side marker only).
BURNED_IN = {
    0: {(8, 8): "Kowalczyk", (8, 40): "7730412"},  # the surname alone: known from the header only
    1: {(8, 220): "23 Sep 1958"},
    2: {(230, 120): "L"},
}


def burn_text(path: Path, lines: dict[tuple[int, int], str]) -> None:
    """Draw white text into a stored CT slice's pixels (the header says nothing about it)."""
    from PIL import ImageDraw, ImageFont

    ds = pydicom.dcmread(path)
    mask = Image.new("L", (int(ds.Columns), int(ds.Rows)), 0)
    draw = ImageDraw.Draw(mask)
    font = ImageFont.truetype(str(FONT), 22) if FONT.exists() else ImageFont.load_default(size=22)
    for position, text in lines.items():
        draw.text(position, text, fill=255, font=font)
    pixels = ds.pixel_array.copy()
    pixels[np.asarray(mask) > 0] = 3000  # about +2000 HU: white in every window
    ds.PixelData = pixels.tobytes()
    ds.save_as(path)


def burned_in_study(store: Path, slices: dict[int, dict[tuple[int, int], str]] = BURNED_IN) -> list[Path]:
    """A chest CT of the identified patient whose slices carry ``slices``' text in their pixels only."""
    files = write_ct_series(store / "ct", len(slices), rows=256, columns=256)
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
        burn_text(path, slices[index])
    return files


def screened(
    tmp_path: Path, mode: str, *, trusted: bool = False, slices: dict[int, dict[tuple[int, int], str]] = BURNED_IN
) -> tuple[OutboundRelease, PreparedStudy, PreparedStudy, list[str]]:
    """Release a burned-in study for a server and screen its prepared images.

    Returns the release, the prepared study before and after the check, and the slices' SOP Instance UIDs.
    """
    store = tmp_path / "store"
    files = burned_in_study(store, slices)
    settings = Settings(data_dir=tmp_path, storage_dir=store, burned_in_text=mode)
    instances = [
        InstanceFile(str(p.relative_to(store)), str(pydicom.dcmread(p).SOPInstanceUID), "", "CT", "CHEST")
        for p in files
    ]
    backend = OpenAICompatibleBackend("http://127.0.0.1:9", outside_trust_boundary=not trusted)
    release = outbound_release(settings, instances, backend)
    prepared = prepare_study([store / f.storage_path for f in release.files], image_size=256, max_images=6)
    return release, prepared, release.screen_study(prepared), [f.sop_instance_uid for f in instances]


def uids_shown(prepared: PreparedStudy) -> list[str]:
    return [e.sop_instance_uid for image in prepared.images for e in image.evidence]


def test_images_with_burned_in_names_ids_or_dates_are_withheld_and_the_draft_says_why(tmp_path: Path) -> None:
    release, before, after, uids = screened(tmp_path, "withhold")
    clean_uid = uids[2]  # only an "L" marker
    assert len(before.images) == 6  # 3 slices x lung and mediastinum windows
    assert set(uids_shown(after)) == {clean_uid} and len(after.images) == 2
    assert release.burned_in is not None and release.burned_in.withheld == 4 and release.burned_in.redacted == 0
    assert release.burned_in.kinds == {"name", "id", "date"}
    timings = release.timings()
    assert timings["burned_in_withheld"] == 4.0 and timings["burned_in_redacted"] == 0.0 and timings["ocr_s"] > 0
    draft = release.annotate(parse_draft('{"findings": [], "impression": "Normal."}', 2), question_dropped=False)
    [note] = [p for p in draft.problems if "burned-in text" in p]
    assert note.startswith("4 image(s) showed burned-in text that looks like a name, id or date and were not shown")
    assert note in draft.limitations
    recorded = json.dumps([*draft.problems, draft.limitations, repr(release)])
    for secret in ("Kowalczyk", "7730412", "1958", "Agnieszka"):
        assert secret not in recorded


def test_redact_blacks_out_the_words_and_sends_every_image(tmp_path: Path) -> None:
    release, before, after, uids = screened(tmp_path, "redact")
    assert uids_shown(after) == uids_shown(before) and len(after.images) == 6
    assert release.burned_in is not None and release.burned_in.redacted == 4 and release.burned_in.withheld == 0
    assert release.timings()["burned_in_redacted"] == 4.0
    for original, sent in zip(before.images, after.images, strict=True):
        changed = not np.array_equal(original.pixels, sent.pixels)
        assert changed == (sent.evidence[0].sop_instance_uid != uids[2]) and not sent.pixels.flags.writeable
        if changed:
            assert find_burned_in_text(sent.pixels, names=[PATIENT["PatientName"]]).identifying == ()
    draft = release.annotate(parse_draft("{}", 6), question_dropped=False)
    assert any(p.startswith("4 image(s) showed burned-in text") and "blacked out" in p for p in draft.problems)


def test_off_sends_every_image_unread_and_says_so(tmp_path: Path) -> None:
    release, before, after, _ = screened(tmp_path, "off")
    assert after is before
    assert "ocr_s" not in release.timings() and release.timings()["deidentified"] == 1.0
    draft = release.annotate(parse_draft("{}", 6), question_dropped=False)
    assert "burned-in text in the images was not checked before they went to the model server" in draft.problems


def test_a_trusted_server_gets_the_images_unread(tmp_path: Path) -> None:
    release, before, after, _ = screened(tmp_path, "withhold", trusted=True)
    assert after is before and release.burned_in is None and release.timings() == {}


def test_when_every_image_shows_identifying_text_there_is_nothing_to_send(tmp_path: Path) -> None:
    slices = {0: {(8, 8): "Name: DOE^JANE"}, 1: {(8, 220): "12/03/2024"}}
    with pytest.raises(NoImages) as caught:
        screened(tmp_path, "withhold", slices=slices)
    message = str(caught.value)
    assert message.startswith("every image prepared for the model (4) was withheld for burned-in text that looks like")
    assert "looks like a name" in message and "burned_in_text=withhold" in message and "trust boundary" in message
    assert "DOE" not in message and "2024" not in message


def test_an_image_tesseract_cannot_read_is_withheld(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytesseract  # type: ignore[import-untyped]

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(NoImages, match=r"no burned-in text check possible \(tesseract is not installed"):
        screened(tmp_path, "redact")


def test_a_draft_through_an_untrusted_server_never_sends_burned_in_identifiers(
    proxy: RecordingProxy, smoke_model_dir: Path, tmp_path: Path
) -> None:
    slices = {0: {(8, 8): "Kowalczyk", (8, 40): "MRN 7730412"}, 1: {(230, 120): "L"}}
    store = tmp_path / "store"
    files = burned_in_study(store, slices)
    settings = Settings(data_dir=tmp_path, storage_dir=store, max_new_tokens=4, image_size=256)
    instances = [
        InstanceFile(str(p.relative_to(store)), str(pydicom.dcmread(p).SOPInstanceUID), "", "CT", "CHEST")
        for p in files
    ]
    job = ClaimedJob(8, 3, str(pydicom.dcmread(files[0]).StudyInstanceUID), 1, 1, "CT1")
    backend = OpenAICompatibleBackend(proxy.url, model=str(smoke_model_dir), family="medgemma", max_new_tokens=4)
    draft = draft_study(settings, job, instances, backend)
    [sent] = proxy.chat_requests()
    images = sent_images(sent.json())
    assert images and {e["sop_instance_uid"] for e in draft.evidence} == {instances[1].sop_instance_uid}
    for png in images:
        shown = np.asarray(Image.open(io.BytesIO(png)))
        assert (
            find_burned_in_text(shown, names=[PATIENT["PatientName"]], identifiers=[PATIENT["PatientID"]]).kinds == ()
        )
    assert draft.timings["burned_in_withheld"] == 2.0 and draft.timings["ocr_s"] > 0  # slice 1 in two windows
    assert any("burned-in text that looks like a name or id" in p for p in draft.findings["problems"])
    assert "burned-in text" in draft.findings["limitations"]
