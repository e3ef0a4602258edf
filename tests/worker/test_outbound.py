"""What leaves for a model server outside the trust boundary: pixels and de-identified minimum metadata only.

The worker's real pipeline drafts a study through a real OpenAI-compatible server (``transformers serve``
with the tiny LLaVA); a recording proxy in front of it keeps the exact request bodies the server received.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from integration.config import Settings
from integration.imaging.selection import NoImages
from integration.samples import write_ct_series
from integration.store.priors import PriorsView, PriorView
from integration.store.reports import ClaimedJob, DraftRecord, InstanceFile
from integration.store.tables import PriorSearchState, PriorState
from models.openai_backend import OpenAICompatibleBackend
from tests.models.test_openai_backend import png_chunks
from tests.support.model_server import RecordingProxy, TransformersServe
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


@pytest.fixture(scope="module")
def server(smoke_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersServe]:
    serve = TransformersServe(smoke_model_dir, tmp_path_factory.mktemp("serve")).start()
    yield serve
    serve.stop()


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
    "ACC55501234, read by Dr. Okonkwo on 1 March 2024."
)


def identified_prior(store: Path) -> PriorsView:
    """The same patient's prior chest CT, stored, with a report full of identifiers, as the store records it."""
    files = write_ct_series(store / "prior", 4, rows=32, columns=32)
    instances = []
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in {**PATIENT, "StudyDate": PRIOR_DATE, "AccessionNumber": "ACC55501234"}.items():
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
        "7730412", "Kowalczyk", "Agnieszka", "Okonkwo", "CT chest for",
    ]  # fmt: skip
    for value in forbidden:
        assert value not in text and value.encode() not in sent.body, f"{value!r} left the trust boundary"
    assert f"{(date(2026, 3, 17) - date(2024, 3, 1)).days} days earlier" in text
    assert "Small left pleural effusion." in text and "60-69 years" in text and "female" not in text
    # half the budget for the prior (2 positions x 2 windows), then the current study's 2 slices x 2 windows
    assert len(sent_images(sent.json())) == 8
    assert sorted({e["image"] for e in draft.evidence if e.get("prior")}) == [1, 2, 3, 4]
    assert draft.findings["priors"][0]["study_uid"] == prior_uids[0]  # our own document names it
